/**
 * `blobshift backfill`: copy every referenced blob the new backend lacks.
 * The CLI (scripts/cli.ts) parses and validates the flags, then calls
 * `main(options, args)` and exits with its result. Run directly
 * (`tsx scripts/backfill.ts …`), this file runs the CLI with `backfill`
 * prepended, so the flags are parsed and checked in one place.
 */
import type { Shard } from '../lib/cli/args.js';
import { exitWith, isMainModule } from '../lib/cli/run.js';

export async function main(options: Record<string, unknown>, _args: string[]): Promise<number> {
  return runBackfillCommand(options, 'backfill');
}

/**
 * A local backfill, or with `rollback` the same run in the other direction:
 * from the config's `new` back to its `old`, replacing the copies in old
 * that the metadata proves stale (`replaceStale`).
 */
export async function runBackfillCommand(
  options: Record<string, unknown>,
  mode: 'backfill' | 'rollback',
): Promise<number> {
  const rollback = mode === 'rollback';
  const [{ openContext }, { backfill }, { backfillReporter }, { trapSignals }] = await Promise.all([
    import('../lib/cli/context.js'),
    import('../lib/engine/backfill.js'),
    import('../lib/cli/backfill-reporter.js'),
    import('../lib/cli/signals.js'),
  ]);
  const processes = options.processes as number | undefined;
  if (processes !== undefined && processes > 1) {
    // One host's every core: N children of this command on disjoint shards (lib/cli/processes.ts).
    if (options.queue !== undefined) {
      const { UsageError } = await import('../lib/cli/args.js');
      throw new UsageError('--processes and --queue do not go together: queue workers are the processes', {
        flag: '--processes',
      });
    }
    const { runBackfillProcesses } = await import('../lib/cli/processes.js');
    return runBackfillProcesses(options, processes);
  }
  const { childLink } = await import('../lib/cli/processes.js');
  const link = childLink();
  const dryRun = options.dryRun === true;
  const json = options.json === true;
  const concurrency = (options.concurrency as number | undefined) ?? 16;
  const shard = options.shard as Shard | undefined;
  const types = (options.types as string[] | undefined) ?? [];
  if (options.queue !== undefined && !rollback) {
    // Scale-out over queue workers: BullMQ loads only on this path.
    const { producerCommand } = await import('../lib/cli/queue-command.js');
    return producerCommand(options);
  }

  const existence = (options.existence as 'list' | 'head' | undefined) ?? 'list';
  const ctx = await openContext({
    config: options.config as string,
    requireOld: true,
    requireNew: true,
    write: !dryRun,
    logFormat: options.logFormat as 'text' | 'json',
    // The listing snapshot starts before the preflight, so the two overlap.
    snapshot: existence === 'list' || dryRun,
    reverse: rollback,
  });
  const { logger } = ctx;
  const signals = trapSignals(logger, {
    stopping: 'in-flight copies finish, then the checkpoint is saved (again to abandon them)',
    abandoning: 'abandoning in-flight copies; the checkpoint is saved',
  });
  const report = backfillReporter(logger, { json, progress: options.progress !== false });
  try {
    logger.info('config', { file: ctx.loaded.file, config: ctx.printable });
    const summary = await backfill({
      meta: ctx.meta,
      oldDb: ctx.oldDb!,
      newDb: ctx.newDb!,
      run: (options.run as string | undefined) ?? (rollback ? 'rollback' : 'default'),
      ...(rollback ? { replaceStale: true } : {}),
      ...(shard ? { shard } : {}),
      types,
      chunkSize: (options.chunkSize as number | undefined) ?? 1000,
      concurrency,
      existence,
      ...(ctx.snapshot ? { snapshot: ctx.snapshot } : {}),
      ...(options.maxRate !== undefined ? { maxRate: options.maxRate as number } : {}),
      reset: options.reset === true,
      dryRun,
      logDir: (options.logDir as string | undefined) ?? './blobshift-logs',
      identity: { old: ctx.names.old ?? 'old', new: ctx.names.new ?? 'new' },
      signal: signals.soft,
      hardSignal: signals.hard,
      logger,
      onStart: (info) => {
        report.onStart(info);
        link?.start(info.estimate);
        if (!dryRun && !ctx.newDb!.capabilities.conditionalWrites) {
          logger.warn(
            `the ${rollback ? 'old' : 'new'} backend does not honour conditional writes: a copy checks, then writes, so an app write landing in between could be overwritten`,
          );
        }
      },
      onProgress: (p) => {
        report.onProgress(p);
        link?.progress(p);
      },
    });
    return report.finish(summary);
  } finally {
    report.stop();
    signals.dispose();
    await ctx.close();
  }
}

if (isMainModule(import.meta.url)) {
  // No top-level await: cli.js imports this module back, and must not wait on it.
  void import('./cli.js').then(({ runCli }) => runCli(['backfill', ...process.argv.slice(2)])).then(exitWith);
}
