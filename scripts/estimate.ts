/**
 * `blobshift estimate`: blobs and bytes per type, from the metadata alone
 * (no backend is contacted).
 */
import type { EstimateOptions } from '../lib/cli/options.js';

export async function main(options: EstimateOptions, _args: string[]): Promise<number> {
  const [{ loadConfig }, out, { openQuietMeta }, { createLogger }] = await Promise.all([
    import('../lib/config/index.js'),
    import('../lib/cli/output.js'),
    import('../lib/cli/context.js'),
    import('../lib/cli/log.js'),
  ]);
  const loaded = await loadConfig(options.config, { sqliteMustExist: true });
  // knex's own printout of a failed connection goes: the error comes back as one line.
  const meta = await openQuietMeta(loaded, createLogger({ format: 'text' }));
  try {
    const types = options.types;
    const estimate = await meta.estimate(types ? { types } : {});
    if (options.json === true) {
      out.printJson(estimate);
      return 0;
    }
    const lines = [`${estimate.count} blobs, ${out.humanBytes(estimate.bytes)} (${estimate.bytes} bytes)`];
    for (const type of Object.keys(estimate.byType).sort()) {
      const t = estimate.byType[type];
      if (t) lines.push(`  ${type}: ${t.count} blobs, ${out.humanBytes(t.bytes)}`);
    }
    out.printLines(lines);
    return 0;
  } finally {
    await meta.close();
  }
}
