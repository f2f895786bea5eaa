/**
 * `blobshift verify`: every referenced blob is in the new backend with the
 * metadata's size (and, with `--checksum`, its content). Prints `SAFE TO FLIP`
 * or `NOT SAFE: …`; exit 0 only when safe.
 */
export async function main(options: Record<string, unknown>, _args: string[]): Promise<number> {
  const processes = options.processes as number | undefined;
  const multi = await import('../lib/cli/processes.js');
  // One host's every core: N children, each judging the rows with id % N = k (lib/cli/processes.ts).
  if (processes !== undefined && processes > 1) return multi.runVerifyProcesses(options, processes);
  const shard = multi.processShard();
  if (shard) multi.childLink();
  const [{ openContext }, v, out, { trapSignals }] = await Promise.all([
    import('../lib/cli/context.js'),
    import('../lib/migrate/verify.js'),
    import('../lib/cli/output.js'),
    import('../lib/cli/signals.js'),
  ]);
  const ctx = await openContext({ config: options.config as string, requireNew: true });
  const signals = trapSignals(ctx.logger);
  try {
    const types = options.types as string[] | undefined;
    const report = await v.verify({
      meta: shard ? multi.shardedMeta(ctx.meta, shard) : ctx.meta,
      newDb: ctx.newDb!,
      ...(ctx.oldDb ? { oldDb: ctx.oldDb } : {}),
      checksum: options.checksum === true,
      ...(types ? { types } : {}),
      logDir: (options.logDir as string | undefined) ?? './blobshift-logs',
      signal: signals.soft,
      logger: ctx.logger,
    });
    if (options.json === true) out.printJson(report);
    else process.stdout.write(v.formatVerifyReport(report));
    return report.exitCode;
  } finally {
    signals.dispose();
    await ctx.close();
  }
}
