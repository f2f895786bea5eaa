/**
 * `blobshift backfill`: copy every referenced blob the new backend lacks.
 * The CLI (scripts/cli.ts) parses and validates the flags, then calls
 * `main(options, args)` and exits with its result. Run directly
 * (`tsx scripts/backfill.ts …`), this file runs the CLI with `backfill`
 * prepended, so the flags are parsed and checked in one place.
 */
import { UsageError } from '../lib/cli/args.js';
import type { BackfillOptions, CopyRunOptions } from '../lib/cli/options.js';
import { exitWith, isMainModule } from '../lib/cli/run.js';

/** A backfill on this host, over `--processes N` children, or over queue workers (`--queue`). */
export async function main(options: BackfillOptions, _args: string[]): Promise<number> {
  const processes = options.processes;
  if (processes !== undefined && processes > 1) {
    // One host's every core: N children of this command on disjoint shards (lib/cli/processes.ts).
    if (options.queue !== undefined) {
      throw new UsageError('--processes and --queue do not go together: queue workers are the processes', {
        flag: '--processes',
      });
    }
    const { runBackfillProcesses } = await import('../lib/cli/processes.js');
    return runBackfillProcesses(options, processes);
  }
  if (options.queue !== undefined) {
    // Scale-out over queue workers: BullMQ loads only on this path. (A child of
    // --processes never gets here: the parent refuses --queue with --processes.)
    const { producerCommand } = await import('../lib/cli/queue-command.js');
    return producerCommand(options);
  }
  return runBackfillCommand(options, 'backfill');
}

/**
 * A local backfill, or with `rollback` the same run in the other direction:
 * from the config's `new` back to its `old`, replacing the copies in old
 * that the metadata proves stale (`replaceStale`).
 */
export async function runBackfillCommand(
  options: CopyRunOptions,
  mode: 'backfill' | 'rollback',
): Promise<number> {
  const rollback = mode === 'rollback';
  const [{ openContext }, { backfill }, { backfillReporter }, { trapSignals }] = await Promise.all([
    import('../lib/cli/context.js'),
    import('../lib/engine/backfill.js'),
    import('../lib/cli/backfill-reporter.js'),
    import('../lib/cli/signals.js'),
  ]);
  const { childLink } = await import('../lib/cli/processes.js');
  const link = childLink();
  const dryRun = options.dryRun === true;
  const json = options.json === true;
  const concurrency = options.concurrency;
  const shard = options.shard;
  const types = options.types ?? [];
  const existence = options.existence;
  const ctx = await openContext({
    config: options.config,
    requireOld: true,
    requireNew: true,
    write: !dryRun,
    logFormat: options.logFormat,
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
      run: options.run,
      ...(rollback ? { replaceStale: true } : {}),
      ...(shard ? { shard } : {}),
      types,
      chunkSize: options.chunkSize,
      concurrency,
      existence,
      ...(ctx.snapshot ? { snapshot: ctx.snapshot } : {}),
      ...(options.maxRate !== undefined ? { maxRate: options.maxRate } : {}),
      reset: options.reset === true,
      dryRun,
      logDir: options.logDir,
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
