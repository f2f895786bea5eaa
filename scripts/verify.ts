/**
 * `blobshift verify`: every referenced blob is in the new backend with the
 * metadata's size (and, with `--checksum`, its content). Prints `SAFE TO FLIP`
 * or `NOT SAFE: …`; exit 0 only when safe.
 */
import type { VerifyOptions } from '../lib/cli/options.js';

export async function main(options: VerifyOptions, _args: string[]): Promise<number> {
  const processes = options.processes;
  const multi = await import('../lib/cli/processes.js');
  // One host's every core: N children, each judging the rows with id % N = k (lib/cli/processes.ts).
  if (processes !== undefined && processes > 1) return verifyInProcesses(options, processes);
  const shard = multi.processShard();
  if (shard) multi.childLink();
  const [{ openContext }, v, out, { trapSignals }, { sameLocation }] = await Promise.all([
    import('../lib/cli/context.js'),
    import('../lib/engine/verify.js'),
    import('../lib/cli/output.js'),
    import('../lib/cli/signals.js'),
    import('../lib/config/index.js'),
  ]);
  // Old and new being one place is verify's verdict to give (NOT SAFE), not a refusal.
  // --reverse (after a rollback): the old backend is judged, the new one is the comparison copy.
  const reverse = options.reverse === true;
  const ctx = await openContext({
    config: options.config,
    requireNew: true,
    ...(reverse ? { requireOld: true, reverse: true } : {}),
    refuseSameLocation: false,
  });
  const signals = trapSignals(ctx.logger);
  try {
    const types = options.types;
    const report = await v.verify({
      meta: shard ? multi.shardedMeta(ctx.meta, shard) : ctx.meta,
      newDb: ctx.newDb!,
      ...(ctx.oldDb ? { oldDb: ctx.oldDb } : {}),
      checksum: options.checksum === true,
      sameLocation: ctx.config.old && ctx.config.new ? sameLocation(ctx.config.old, ctx.config.new) : false,
      identity: { old: ctx.names.old ?? null, new: ctx.names.new ?? 'new' },
      // A child judges a share of the rows: the parent records the combined verdict.
      ...(shard ? { record: false } : {}),
      ...(types ? { types } : {}),
      logDir: options.logDir,
      signal: signals.soft,
      logger: ctx.logger,
    });
    if (options.json === true) out.printJson(report);
    else {
      if (reverse) process.stdout.write(`verify --reverse: judging the old backend ${ctx.names.new ?? ''}\n`);
      process.stdout.write(v.formatVerifyReport(report));
    }
    return report.exitCode;
  } finally {
    signals.dispose();
    await ctx.close();
  }
}

/**
 * `verify --processes N`: the children judge shares of the rows and record
 * nothing; this parent records the combined verdict in the run-state table
 * (`running` first, so an interrupted run leaves no clean verdict).
 */
async function verifyInProcesses(options: VerifyOptions, processes: number): Promise<number> {
  const [
    multi,
    { loadConfig, describeBackend },
    { openQuietMeta },
    { createLogger },
    ledger,
    { shortError },
  ] = await Promise.all([
    import('../lib/cli/processes.js'),
    import('../lib/config/index.js'),
    import('../lib/cli/context.js'),
    import('../lib/cli/log.js'),
    import('../lib/engine/ledger.js'),
    import('../lib/engine/errors.js'),
  ]);
  const loaded = await loadConfig(options.config, { requireNew: true, sqliteMustExist: true });
  const { config } = loaded;
  const reverse = options.reverse === true;
  const judged = reverse ? config.old : config.new;
  const other = reverse ? config.new : config.old;
  const identity = {
    old: other ? describeBackend(other) : null,
    new: judged ? describeBackend(judged) : 'new',
  };
  const meta = await openQuietMeta(loaded, createLogger({ format: 'text' }));
  try {
    const types = options.types;
    const state = await ledger.recordVerifyStart(
      meta,
      {
        identity,
        types: types && types.length > 0 ? [...new Set(types)].sort() : null,
        checksum: options.checksum === true,
      },
      new Date(),
    );
    try {
      return await multi.runVerifyProcesses(options, processes, async (report) => {
        await ledger.recordVerifyEnd(meta, state, report ?? { error: 'a process ended without its report' });
      });
    } catch (err) {
      await ledger.recordVerifyEnd(meta, state, { error: shortError(err) }).catch(() => {});
      throw err;
    }
  } finally {
    await meta.close();
  }
}
