/**
 * `blobshift status [--run NAME]`: a run's saved state (every shard of it),
 * from the metadata database.
 */
import { UsageError } from '../lib/cli/args.js';
import type { StatusOptions } from '../lib/cli/options.js';

export async function main(options: StatusOptions, _args: string[]): Promise<number> {
  const [
    { loadConfig },
    out,
    { summaryFromState },
    { backfillJson, formatBackfillSummary },
    { openQuietMeta },
    { createLogger },
  ] = await Promise.all([
    import('../lib/config/index.js'),
    import('../lib/cli/output.js'),
    import('../lib/engine/backfill.js'),
    import('../lib/engine/report.js'),
    import('../lib/cli/context.js'),
    import('../lib/cli/log.js'),
  ]);
  const loaded = await loadConfig(options.config, { sqliteMustExist: true });
  // knex's own printout of a failed connection goes: the error comes back as one line.
  const meta = await openQuietMeta(loaded, createLogger({ format: 'text' }));
  try {
    const name = options.run;
    const runs = (await meta.listRuns()).filter((r) => r.name === name);
    if (runs.length === 0) {
      throw new UsageError(
        `no run named "${name}" in this metadata database (blobshift backfill --run ${name} starts it)`,
        {
          flag: '--run',
        },
      );
    }
    const shown = runs.map((state) => {
      const status =
        state.status === 'completed'
          ? 'completed'
          : state.status === 'failed'
            ? 'infrastructure'
            : 'interrupted';
      const summary = summaryFromState(state, status, false);
      return { state, summary };
    });
    if (options.json === true) {
      out.printJson(
        shown.map(({ state, summary }) => ({
          ...backfillJson(summary),
          state: state.status,
          startedAt: state.startedAt,
          updatedAt: state.updatedAt,
          finishedAt: state.finishedAt,
          options: state.options,
        })),
      );
      return 0;
    }
    for (const { state, summary } of shown) {
      const lines = formatBackfillSummary(summary);
      lines[0] = `run ${state.name}${state.shard ? ` shard ${state.shard}` : ''}: ${state.status}${
        state.status === 'running' ? ' (or killed: a rerun resumes it)' : ''
      }, checkpoint after id ${state.lowWaterMark}, last saved ${state.updatedAt.toISOString()}`;
      out.printLines(lines);
    }
    return 0;
  } finally {
    await meta.close();
  }
}
