/**
 * `blobshift cleanup-old --yes`: after a clean verify, delete from the old
 * backend exactly the blobs the new one holds with the right size, writing an
 * audit log of every key deleted. Refused without `--yes` (the CLI checks)
 * and when old and new overlap.
 */
import type { CleanupOptions } from '../lib/cli/options.js';

export async function main(options: CleanupOptions, _args: string[]): Promise<number> {
  const [{ openContext }, c, { trapSignals }, { sameLocation }] = await Promise.all([
    import('../lib/cli/context.js'),
    import('../lib/engine/cleanup.js'),
    import('../lib/cli/signals.js'),
    import('../lib/config/index.js'),
  ]);
  const ctx = await openContext({ config: options.config, requireOld: true, requireNew: true });
  const signals = trapSignals(ctx.logger, {
    stopping: 'the current batch finishes (again to stop at once)',
    abandoning: 'stopping at once',
  });
  try {
    const report = await c.cleanupOld({
      meta: ctx.meta,
      oldDb: ctx.oldDb!,
      newDb: ctx.newDb!,
      yes: options.yes === true,
      dryRun: options.dryRun === true,
      logDir: options.logDir,
      sameLocation: ctx.config.old && ctx.config.new ? sameLocation(ctx.config.old, ctx.config.new) : false,
      identity: { old: ctx.names.old ?? null, new: ctx.names.new ?? 'new' },
      signal: signals.soft,
      logger: ctx.logger,
    });
    process.stdout.write(c.formatCleanupReport(report));
    return report.exitCode;
  } finally {
    signals.dispose();
    await ctx.close();
  }
}
