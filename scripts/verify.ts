/**
 * `blobshift verify`: every referenced blob is in the new backend with the
 * metadata's size (and, with `--checksum`, its content). Prints `SAFE TO FLIP`
 * or `NOT SAFE: …`; exit 0 only when safe.
 */
export async function main(options: Record<string, unknown>, _args: string[]): Promise<number> {
  const [{ openContext }, v, out, { trapSignals }, { sameLocation }] = await Promise.all([
    import('../lib/cli/context.js'),
    import('../lib/migrate/verify.js'),
    import('../lib/cli/output.js'),
    import('../lib/cli/signals.js'),
    import('../lib/config.js'),
  ]);
  // Old and new being one place is verify's verdict to give (NOT SAFE), not a refusal.
  // --reverse (after a rollback): the old backend is judged, the new one is the comparison copy.
  const reverse = options.reverse === true;
  const ctx = await openContext({
    config: options.config as string,
    requireNew: true,
    ...(reverse ? { requireOld: true, reverse: true } : {}),
    refuseSameLocation: false,
  });
  const signals = trapSignals(ctx.logger);
  try {
    const types = options.types as string[] | undefined;
    const report = await v.verify({
      meta: ctx.meta,
      newDb: ctx.newDb!,
      ...(ctx.oldDb ? { oldDb: ctx.oldDb } : {}),
      checksum: options.checksum === true,
      sameLocation: ctx.config.old && ctx.config.new ? sameLocation(ctx.config.old, ctx.config.new) : false,
      identity: { old: ctx.names.old ?? null, new: ctx.names.new ?? 'new' },
      ...(types ? { types } : {}),
      logDir: (options.logDir as string | undefined) ?? './blobshift-logs',
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
