/**
 * cleanup-old: after a clean verify and the flip, delete the old copies.
 *
 * It starts only when three things hold, and otherwise deletes nothing:
 * - old and new are two places, proven by content, not by config text: a
 *   probe blob written to new must not show in old (`proveDistinct`);
 * - the latest verify of this pair of backends, recorded in the run-state
 *   table, said SAFE TO FLIP, covered the types cleaned up, and started after
 *   every backfill and check-blob-logs run (`requireCleanVerify`);
 * - the operator confirmed (`yes`), unless it is a dry run.
 *
 * A blob is then deleted from the old backend only when the new backend is
 * proven to hold the same content right before the delete: its row still
 * exists, and the new copy's bytes, streamed and hashed, have the row's size
 * and hash to the row's sha256; where the row has no sha256, the old copy is
 * hashed too and the two must match. Stored ETags and checksums are not taken
 * for the bytes (they were computed at write time and miss later damage).
 * Everything else stays and is counted as "kept" with its reason.
 *
 * How "right before" is made true: the new and old backends are each listed
 * once into a snapshot (a pre-filter: rows the snapshots already rule out
 * cost nothing more); the metadata is walked by id in batches; right before a
 * batch is deleted, its rows are checked again (one `referenced` query for
 * the batch) and every candidate's copies are hashed (concurrently, bounded).
 * A read that fails keeps the blob. Then one `bulkDelete` per batch.
 *
 * The audit log (`cleanup-old-<UTC>.jsonl`, JSON lines
 * `{"key","size","at"}`, 0600 in `logDir`, 0700 when created) lists exactly
 * the keys whose delete was issued and not reported failed: lines are written
 * after `bulkDelete` returns and synced to disk before the next batch. (A
 * crash between a bulk delete and its sync loses at most that batch's lines;
 * a key the app itself deleted from old between the listing and the delete is
 * listed too: it is gone either way.) `size` is the old copy's size.
 *
 * Resumable by being idempotent: a rerun lists the old backend again, and
 * what is already deleted is no longer there ("not in old"). A dry run makes
 * the same checks (the probe included: it writes and removes one probe blob
 * in new), deletes nothing, and writes the would-be deletions to
 * `cleanup-old-dry-run-<UTC>.jsonl` instead. Kept keys go to
 * `cleanup-old-<UTC>-kept.jsonl` (`{"id","key","type","reason"}`).
 */
import { PreflightError, SameLocationError } from '../contract/errors.js';
import { humanBytes } from '../contract/format.js';
import type { MetaStore } from '../contract/meta.js';
import type { BlobDB } from '../contract/types.js';
import type { EngineLogger } from './backfill.js';
import { CleanupRun } from './cleanup-run.js';
import type { RetryPolicy } from './copy.js';
import type { BackendIdentity } from './ledger.js';
import { requireCleanVerify } from './ledger.js';
import { proveDistinct } from './preflight.js';

export interface CleanupOptions {
  meta: MetaStore;
  oldDb: BlobDB;
  newDb: BlobDB;
  /** The operator's confirmation; without it (and without `dryRun`) nothing runs. */
  yes: boolean;
  /** Check everything and report what would be deleted; delete nothing. */
  dryRun?: boolean;
  /** Where the audit log (or the dry run's list) and the kept list go. */
  logDir: string;
  /** Only rows of these types. */
  types?: string[];
  /** Rows per walk query and keys per bulk delete. Default 1000. */
  batchSize?: number;
  /** Blobs hashed at once. Default 16. */
  concurrency?: number;
  /** Old and new are the same place (the CLI computes it from the config): refused. */
  sameLocation?: boolean;
  /**
   * The two backends as configured (secret-free descriptions), to find the
   * verify of this pair in the run-state table; the same value `verify` was
   * given. Default `{ old: 'old', new: 'new' }`, as verify's default.
   */
  identity?: BackendIdentity;
  retry?: Partial<RetryPolicy>;
  /** Directory for the snapshots' temporary files. */
  tempDir?: string;
  /** Stops after the current batch (or the listing); the report says `interrupted`. */
  signal?: AbortSignal;
  onProgress?: (p: CleanupProgress) => void;
  logger?: EngineLogger;
}

export interface CleanupProgress {
  phase: 'snapshot-new' | 'snapshot-old' | 'rows';
  done: number;
  total?: number;
  deleted: number;
}

export type KeptReason =
  | 'missing in new'
  | 'size differs in new'
  | 'content differs in new'
  | 'copies differ'
  | 'no longer referenced'
  | 'invalid metadata row'
  | 'read failed';

export interface CleanupReport {
  dryRun: boolean;
  /** Stopped through the signal; rerun to continue. */
  interrupted: boolean;
  types: string[] | null;
  /** Metadata rows walked. */
  rows: number;
  /** Deleted from old (0 in a dry run), and their bytes. */
  deleted: number;
  deletedBytes: number;
  /** Dry run: what would be deleted, and the bytes. */
  wouldDelete: number;
  wouldDeleteBytes: number;
  /** Rows whose blob is not in old: already cleaned up, or never there. */
  notInOld: number;
  /** Blobs left in old because the new backend does not hold them safely. */
  kept: number;
  keptByReason: Record<KeptReason, number>;
  /** New copies hashed against the row's sha256, and against the old copy (rows without one). */
  provedAgainstRow: number;
  provedAgainstOld: number;
  /** Keys `bulkDelete` reported as not deleted. */
  failed: number;
  /** The first failures. */
  failures: { key: string; error: string }[];
  /** The audit log (not in a dry run). */
  auditLog: string | null;
  /** Dry run: the list of what would be deleted. */
  planFile: string | null;
  /** Kept keys with their reasons, when any. */
  keptFile: string | null;
  /** Dry run: the first keys that would be deleted. */
  sample: string[];
  snapshot: { old: { keys: number; bytes: number }; new: { keys: number; bytes: number } };
  /** When the verify this cleanup relied on started (ISO 8601). */
  verifiedAt: string;
  /** 0: nothing kept or failed; 1: some blobs stay in old (or failed); 130: interrupted. */
  exitCode: 0 | 1 | 130;
  seconds: number;
}

/**
 * Runs cleanup-old. Rejects with `PreflightError` without `yes` (unless
 * `dryRun`), when old and new are the same place (config, or the write
 * probe: `SameLocationError`), when the probe cannot be made, when no clean
 * verify vouches for this cleanup, and when the metadata has no rows within
 * `types`. Backend and metadata errors that outlast the retries reject; the
 * audit log then holds everything deleted so far.
 */
export async function cleanupOld(opts: CleanupOptions): Promise<CleanupReport> {
  const started = Date.now();
  const types = [...new Set(opts.types ?? [])].sort();
  const { estimatedRows, verifiedAt } = await refuseUnlessSafe(opts, types);
  return new CleanupRun(opts, types, estimatedRows, verifiedAt, started).run();
}

/**
 * The preconditions, in this order, before anything is listed or deleted:
 * old and new not the same place by the config; the operator's yes (unless
 * a dry run); rows within the types; a clean verify of this pair that
 * vouches for the cleanup (a read); then the write probe that proves old and
 * new are two places. Resolves the metadata's row estimate and when the
 * verify relied on started.
 */
async function refuseUnlessSafe(
  opts: CleanupOptions,
  types: string[],
): Promise<{ estimatedRows: number; verifiedAt: Date }> {
  const { meta, oldDb, newDb } = opts;
  if (opts.sameLocation === true || oldDb === newDb) {
    throw new SameLocationError(
      'the old and the new backend are the same place; deleting from old would delete the only copy',
    );
  }
  if (!opts.yes && opts.dryRun !== true) {
    throw new PreflightError(
      'cleanup-old',
      "it deletes blobs from the old backend: confirm with yes (--yes), after a clean 'blobshift verify'",
    );
  }
  const estimate = await meta.estimate(types.length > 0 ? { types } : {});
  if (estimate.count === 0) {
    const scope = types.length > 0 ? ` for types ${types.join(',')}` : '';
    throw new PreflightError(
      `metadata table ${JSON.stringify(meta.table)}`,
      `it has no rows${scope}; a mistyped database or table cannot vouch for any blob`,
    );
  }
  const identity = opts.identity ?? { old: 'old', new: 'new' };
  // The recorded verify first (a read); then the probe (a write to new).
  const verified = await requireCleanVerify(meta, identity, types.length > 0 ? types : null);
  await proveDistinct(newDb, oldDb, {
    ...(identity.old !== null ? { old: identity.old } : {}),
    new: identity.new,
  });
  return { estimatedRows: estimate.count, verifiedAt: verified.startedAt };
}

/** The report for stdout. */
export function formatCleanupReport(report: CleanupReport): string {
  const out: string[] = [];
  const scope = report.types ? `types ${report.types.join(',')}` : 'all types';
  out.push(`cleanup-old (${scope})${report.dryRun ? ', dry run: nothing deleted' : ''}: ${report.rows} rows`);
  out.push(`  Old and new: distinct (a probe written to new did not show in old)`);
  out.push(`  Relying on the clean verify started ${report.verifiedAt}`);
  out.push(...(report.dryRun ? dryRunLines(report) : deletedLines(report)));
  out.push(
    `  Content proven before each delete: ${report.provedAgainstRow} against the row's sha256, ${report.provedAgainstOld} against the old copy`,
  );
  out.push(`  Not in old (already cleaned up, or never there): ${report.notInOld}`);
  out.push(`  Kept in old: ${report.kept}`);
  for (const [reason, n] of Object.entries(report.keptByReason)) if (n > 0) out.push(`    ${reason}: ${n}`);
  if (report.keptFile) out.push(`    listed in ${report.keptFile}`);
  if (report.failed > 0) {
    out.push(`  Delete failed: ${report.failed}`);
    for (const f of report.failures) out.push(`    ${f.key}: ${f.error}`);
  }
  if (report.interrupted) out.push('Interrupted: rerun cleanup-old to continue (it is idempotent).');
  return `${out.join('\n')}\n`;
}

/** A dry run: what would be deleted, its first keys, and the plan file. */
function dryRunLines(report: CleanupReport): string[] {
  const out = [
    `  Would delete from old: ${report.wouldDelete} (${humanBytes(report.wouldDeleteBytes)}, ${report.wouldDeleteBytes} bytes)`,
  ];
  for (const key of report.sample) out.push(`    ${key}`);
  if (report.wouldDelete > report.sample.length) out.push('    …');
  if (report.planFile) out.push(`  Listed in ${report.planFile}`);
  return out;
}

/** What was deleted, and the audit log. */
function deletedLines(report: CleanupReport): string[] {
  const out = [
    `  Deleted from old: ${report.deleted} (${humanBytes(report.deletedBytes)}, ${report.deletedBytes} bytes)`,
  ];
  if (report.auditLog) out.push(`  Audit log: ${report.auditLog}`);
  return out;
}
