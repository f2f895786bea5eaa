/**
 * How a backfill's result is shown: the text summary on stdout, and the
 * `--json` object (the same fields).
 */
import { humanBytes, humanDuration } from '../contract/format.js';
import type { BackfillSummary } from './backfill.js';

/** The `--json` object of a backfill. */
export function backfillJson(s: BackfillSummary): Record<string, unknown> {
  return {
    mode: s.mode,
    run: s.run,
    shard: s.shard || null,
    status: s.status,
    exitCode: s.exitCode,
    total: s.total,
    copied: s.copied,
    replaced: s.replaced,
    present: s.present,
    notFound: s.notFound,
    failed: s.failed,
    deletedDuringMigration: s.deletedDuringMigration,
    expired: s.expired,
    bytes: s.bytes,
    retries: s.retries,
    seconds: s.seconds,
    rate: s.rate,
    attempts: s.attempts,
    lowWaterMark: s.lowWaterMark,
    logs: s.logs,
    reprinted: s.reprinted,
    ...(s.reason !== undefined ? { reason: s.reason } : {}),
    ...(s.toCopy !== undefined ? { toCopy: s.toCopy, toCopyBytes: s.toCopyBytes ?? 0 } : {}),
  };
}

/** The text summary of a backfill, one fact a line. */
export function formatBackfillSummary(s: BackfillSummary): string[] {
  const run = s.shard ? `${s.run} (shard ${s.shard})` : s.run;
  const rollback = s.mode === 'rollback';
  if (s.status === 'dry-run') {
    return [
      `${s.mode} ${run}: dry run, nothing written`,
      `  blobs in metadata: ${s.total}`,
      rollback
        ? `  already in old:    ${s.present} (judged by size only: a rollback also reads copies of the right size)`
        : `  already in new:    ${s.present}`,
      `  expired (skipped): ${s.expired}`,
      `  to copy:           ${s.toCopy ?? 0} (${humanBytes(s.toCopyBytes ?? 0)})`,
    ];
  }
  const head = {
    completed: s.reprinted
      ? 'completed earlier (summary of the finished run; --reset starts it over)'
      : 'completed',
    interrupted: 'interrupted; the checkpoint is saved, run the same command again to resume',
    infrastructure:
      'stopped: infrastructure lost; the checkpoint is saved, run the same command again to resume',
    'dry-run': 'dry run',
  }[s.status];
  const lines = [
    `${s.mode} ${run}: ${head}`,
    ...(s.reason ? [`  reason: ${s.reason}`] : []),
    `  total:                    ${s.total}`,
    `  copied:                   ${s.copied}`,
    ...(rollback ? [`  of which stale replaced:  ${s.replaced}`] : []),
    `  already present:          ${s.present}`,
    `  not found:                ${s.notFound}`,
    `  failed:                   ${s.failed}`,
    `  deleted during migration: ${s.deletedDuringMigration}`,
    `  expired (skipped):        ${s.expired}`,
    `  bytes copied:             ${humanBytes(s.bytes)} (${s.bytes} bytes)`,
    `  retries:                  ${s.retries}`,
    `  duration:                 ${humanDuration(s.seconds)} over ${s.attempts} attempt${s.attempts === 1 ? '' : 's'}`,
    `  rate:                     ${s.rate} blobs/s`,
  ];
  if (s.notFound + s.failed > 0) {
    const logs = s.logs.map((l) => quoteArg(l)).join(' ');
    lines.push(`  ${s.notFound + s.failed} blobs could not be copied; they are listed in: ${logs}`);
    if (rollback) {
      lines.push(
        '  next: read each record: "not found" is in neither backend, any other error says why it was not brought back',
      );
    } else lines.push(`  next: blobshift check-blob-logs ${logs}`);
  }
  return lines;
}

/** Quotes a path for a shell command line when it needs it. */
export function quoteArg(arg: string): string {
  return /^[A-Za-z0-9_./:@%+=,-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}
