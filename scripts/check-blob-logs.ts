/**
 * `blobshift check-blob-logs LOG...`: classify what backfill could not find
 * (found in new, found in old, not referenced, not found), per type; with
 * `--migrate`, copy the "found in old" stragglers through the copy path.
 * Run directly (`tsx scripts/check-blob-logs.ts …`), this file runs the CLI
 * with `check-blob-logs` prepended.
 */
import type { CheckBlobLogsOptions } from '../lib/cli/options.js';
import { exitWith, isMainModule } from '../lib/cli/run.js';

export async function main(options: CheckBlobLogsOptions, args: string[]): Promise<number> {
  const processes = options.processes;
  const multi = await import('../lib/cli/processes.js');
  // One host's every core: N children, each taking the records with id % N = k (lib/cli/processes.ts).
  if (processes !== undefined && processes > 1) return multi.runCheckLogsProcesses(options, args, processes);
  const shard = multi.processShard();
  if (shard) multi.childLink();
  const [{ openContext }, check, out, { trapSignals }] = await Promise.all([
    import('../lib/cli/context.js'),
    import('../lib/engine/check-logs.js'),
    import('../lib/cli/output.js'),
    import('../lib/cli/signals.js'),
  ]);
  const migrate = options.migrate === true;
  const ctx = await openContext({
    config: options.config,
    requireOld: true,
    requireNew: true,
    write: migrate,
  });
  const signals = trapSignals(ctx.logger);
  try {
    const report = await check.checkBlobLogs({
      files: args,
      meta: ctx.meta,
      oldDb: ctx.oldDb!,
      newDb: ctx.newDb!,
      migrate,
      identity: { old: ctx.names.old ?? null, new: ctx.names.new ?? 'new' },
      concurrency: options.concurrency,
      signal: signals.soft,
      logger: ctx.logger,
      ...(shard ? { shard } : {}),
    });
    const logDir = options.logDir;
    // A process of --processes leaves the key file to its parent, which writes one for all.
    const notFoundFile =
      report.notFound.length > check.MAX_LISTED && !shard
        ? await check.writeNotFoundFile(report, logDir)
        : undefined;
    for (const p of report.malformed) ctx.logger.warn(`${p.file}:${p.line}: ${p.why}`);
    for (const p of report.warnings) ctx.logger.warn(`${p.file}:${p.line}: ${p.why}`);
    if (options.json === true) out.printJson({ ...report, ...(notFoundFile ? { notFoundFile } : {}) });
    else process.stdout.write(check.formatCheckReport(report, notFoundFile ? { notFoundFile } : {}));
    return report.exitCode;
  } finally {
    signals.dispose();
    await ctx.close();
  }
}

if (isMainModule(import.meta.url)) {
  void import('./cli.js')
    .then(({ runCli }) => runCli(['check-blob-logs', ...process.argv.slice(2)]))
    .then(exitWith);
}
