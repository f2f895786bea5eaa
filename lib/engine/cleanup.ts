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
import PQueue from 'p-queue';
import { AbortedError, PreflightError, SameLocationError } from '../contract/errors.js';
import { humanBytes } from '../contract/format.js';
import type { MetaStore } from '../contract/meta.js';
import type { BlobDB, BlobMeta } from '../contract/types.js';
import { type EngineLogger, silentLogger } from './backfill.js';
import { DEFAULT_RETRY, type RetryPolicy } from './copy.js';
import { shortError } from './errors.js';
import { type BlobDigest, hashBlob } from './hash.js';
import { type BackendIdentity, requireCleanVerify } from './ledger.js';
import { compactUtc } from './missing-log.js';
import { proveDistinct } from './preflight.js';
import { PresentIndex } from './present-index.js';
import { JsonLinesFile, LazyJsonLinesFile } from './report-file.js';
import { withRetry } from './retry.js';

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

const MAX_FAILURES = 100;
const SAMPLE = 100;

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
  const { meta, oldDb, newDb } = opts;
  const dryRun = opts.dryRun === true;
  if (opts.sameLocation === true || oldDb === newDb) {
    throw new SameLocationError(
      'the old and the new backend are the same place; deleting from old would delete the only copy',
    );
  }
  if (!opts.yes && !dryRun) {
    throw new PreflightError(
      'cleanup-old',
      "it deletes blobs from the old backend: confirm with yes (--yes), after a clean 'blobshift verify'",
    );
  }
  const types = [...new Set(opts.types ?? [])].sort();
  const typeFilter = types.length > 0 ? { types } : {};
  const batchSize = Math.max(1, opts.batchSize ?? 1000);
  const concurrency = Math.max(1, opts.concurrency ?? 16);
  const retry: RetryPolicy = { ...DEFAULT_RETRY, ...opts.retry };
  const logger = opts.logger ?? silentLogger;
  const signal = opts.signal;
  const retrying = <T>(fn: () => Promise<T>) =>
    withRetry(fn, retry, {
      what: 'cleanup-old',
      ...(signal ? { signal } : {}),
      onRetry: (err, n) =>
        logger.warn(`cleanup-old: retrying (attempt ${n + 1} of ${retry.attempts})`, {
          error: shortError(err),
        }),
    });

  const estimate = await meta.estimate(typeFilter);
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

  const stamp = compactUtc(new Date());
  const report: CleanupReport = {
    dryRun,
    interrupted: false,
    types: types.length > 0 ? types : null,
    rows: 0,
    deleted: 0,
    deletedBytes: 0,
    wouldDelete: 0,
    wouldDeleteBytes: 0,
    notInOld: 0,
    kept: 0,
    keptByReason: {
      'missing in new': 0,
      'size differs in new': 0,
      'content differs in new': 0,
      'copies differ': 0,
      'no longer referenced': 0,
      'invalid metadata row': 0,
      'read failed': 0,
    },
    provedAgainstRow: 0,
    provedAgainstOld: 0,
    failed: 0,
    failures: [],
    auditLog: null,
    planFile: null,
    keptFile: null,
    sample: [],
    snapshot: { old: { keys: 0, bytes: 0 }, new: { keys: 0, bytes: 0 } },
    verifiedAt: verified.startedAt.toISOString(),
    exitCode: 0,
    seconds: 0,
  };

  let lastProgress = 0;
  const progress = (phase: CleanupProgress['phase'], done: number, total?: number, force = false) => {
    if (!opts.onProgress) return;
    const now = Date.now();
    if (!force && now - lastProgress < 200) return;
    lastProgress = now;
    opts.onProgress({ phase, done, ...(total !== undefined ? { total } : {}), deleted: report.deleted });
  };

  const keptFile = new LazyJsonLinesFile(opts.logDir, `cleanup-old-${stamp}-kept.jsonl`);
  const keep = async (row: BlobMeta, reason: KeptReason) => {
    report.kept++;
    report.keptByReason[reason]++;
    await keptFile.write({ id: row.id, key: row.key, type: row.type, reason });
  };

  // The audit log (or the dry run's plan) exists from the start, so an
  // operator always finds one per invocation.
  const out = await JsonLinesFile.create(
    opts.logDir,
    dryRun ? `cleanup-old-dry-run-${stamp}.jsonl` : `cleanup-old-${stamp}.jsonl`,
  );
  if (dryRun) report.planFile = out.path;
  else report.auditLog = out.path;

  let newIndex: PresentIndex | undefined;
  let oldIndex: PresentIndex | undefined;
  const queue = new PQueue({ concurrency });
  try {
    const tempDir = opts.tempDir ? { tempDir: opts.tempDir } : {};
    newIndex = await PresentIndex.build(newDb, {
      ...tempDir,
      ...(signal ? { signal } : {}),
      onProgress: (n) => progress('snapshot-new', n),
    });
    oldIndex = await PresentIndex.build(oldDb, {
      ...tempDir,
      ...(signal ? { signal } : {}),
      onProgress: (n) => progress('snapshot-old', n),
    });
    report.snapshot = {
      new: { keys: newIndex.count, bytes: newIndex.bytes },
      old: { keys: oldIndex.count, bytes: oldIndex.bytes },
    };

    for await (const chunk of meta.walk({ chunkSize: batchSize, ...typeFilter })) {
      if (signal?.aborted) {
        report.interrupted = true;
        break;
      }
      report.rows += chunk.length;
      const keys = chunk.map((r) => r.key);
      const inOld = oldIndex.lookup(keys);
      const inNew = newIndex.lookup(keys);
      const candidates: BlobMeta[] = [];
      for (const row of chunk) {
        if (row.invalid !== undefined) {
          // Nothing about such a row proves anything: whatever old holds under it stays.
          if (row.key !== '' && inOld.has(row.key)) await keep(row, 'invalid metadata row');
          else report.notInOld++;
          continue;
        }
        if (!inOld.has(row.key)) {
          report.notInOld++;
          continue;
        }
        const size = inNew.get(row.key);
        if (size === undefined) await keep(row, 'missing in new');
        else if (size !== row.contentLength) await keep(row, 'size differs in new');
        else candidates.push(row);
      }
      if (candidates.length > 0) {
        const confirmed = await prove(candidates);
        if (signal?.aborted) {
          report.interrupted = true;
          break;
        }
        if (confirmed.length > 0) await remove(confirmed);
      }
      progress('rows', report.rows, estimate.count);
    }
    progress('rows', report.rows, estimate.count, true);
  } catch (err) {
    // Stopped while listing or hashing: nothing half-done to undo (deletes
    // happen a batch at a time, after its proofs), so it is an interruption.
    if (!signal?.aborted) throw err;
    report.interrupted = true;
  } finally {
    await queue.onIdle();
    await out.close().catch((err: unknown) => logger.error(`closing ${out.path} failed: ${shortError(err)}`));
    report.keptFile = (await keptFile.close().catch(() => undefined)) ?? null;
    await newIndex?.close().catch(() => {});
    await oldIndex?.close().catch(() => {});
  }

  /**
   * The proofs right before a delete: still referenced, and the new copy's
   * bytes hash to the row's sha256 (or, without one, to the old copy's).
   */
  async function prove(candidates: BlobMeta[]): Promise<BlobMeta[]> {
    const referenced = await retrying(() => meta.referenced(candidates.map((r) => r.key)));
    const stillReferenced: BlobMeta[] = [];
    for (const row of candidates) {
      if (referenced.has(row.key)) stillReferenced.push(row);
      else await keep(row, 'no longer referenced');
    }
    const verdicts = await Promise.all(
      stillReferenced.map((row) => queue.add(() => sameContent(row), { throwOnTimeout: true })),
    );
    const confirmed: BlobMeta[] = [];
    for (const [i, row] of stillReferenced.entries()) {
      const v = verdicts[i] ?? 'read failed';
      if (v === 'ok') confirmed.push(row);
      else if (v === 'gone from old') report.notInOld++;
      else if (v !== 'stopped') await keep(row, v);
    }
    // Stopped midway: a batch is deleted whole or not at all.
    return signal?.aborted ? [] : confirmed;
  }

  async function sameContent(row: BlobMeta): Promise<KeptReason | 'ok' | 'gone from old' | 'stopped'> {
    if (signal?.aborted) return 'stopped';
    const read = async (db: BlobDB, side: string): Promise<BlobDigest | undefined | 'failed'> => {
      try {
        return await retrying(() => hashBlob(db, row.key, signal));
      } catch (err) {
        if (!(err instanceof AbortedError) && !signal?.aborted) {
          logger.warn(`cleanup-old: reading the ${side} copy failed; the old copy is kept`, {
            key: row.key,
            error: shortError(err),
          });
        }
        return 'failed';
      }
    };
    const inNew = await read(newDb, 'new');
    if (signal?.aborted) return 'stopped';
    if (inNew === 'failed') return 'read failed';
    if (inNew === undefined) return 'missing in new';
    if (inNew.bytes !== row.contentLength) return 'size differs in new';
    const expected = row.sha256?.toLowerCase() ?? null;
    if (expected !== null) {
      if (inNew.sha256 !== expected) {
        logger.warn('cleanup-old: the new copy does not hash to the row sha256; the old copy is kept', {
          key: row.key,
          expected,
          actual: inNew.sha256,
        });
        return 'content differs in new';
      }
      report.provedAgainstRow++;
      return 'ok';
    }
    const inOld = await read(oldDb, 'old');
    if (signal?.aborted) return 'stopped';
    if (inOld === 'failed') return 'read failed';
    // Gone from old meanwhile: nothing left to delete.
    if (inOld === undefined) return 'gone from old';
    if (inOld.sha256 !== inNew.sha256 || inOld.bytes !== inNew.bytes) {
      logger.warn('cleanup-old: the row has no sha256 and the two copies differ; the old copy is kept', {
        key: row.key,
      });
      return 'copies differ';
    }
    report.provedAgainstOld++;
    return 'ok';
  }

  async function remove(rows: BlobMeta[]): Promise<void> {
    const oldSizes = oldIndex?.lookup(rows.map((r) => r.key)) ?? new Map<string, number>();
    if (dryRun) {
      for (const row of rows) {
        const size = oldSizes.get(row.key) ?? row.contentLength;
        report.wouldDelete++;
        report.wouldDeleteBytes += size;
        if (report.sample.length < SAMPLE) report.sample.push(row.key);
        await out.write({ key: row.key, size });
      }
      return;
    }
    const result = await retrying(() => oldDb.bulkDelete(rows.map((r) => r.key)));
    const at = new Date().toISOString();
    const failed = new Map(result.errors.map((e) => [e.key, e.error]));
    for (const row of rows) {
      const error = failed.get(row.key);
      if (error !== undefined) {
        report.failed++;
        if (report.failures.length < MAX_FAILURES)
          report.failures.push({ key: row.key, error: shortError(error) });
        logger.warn('cleanup-old: delete failed', { key: row.key, error: shortError(error) });
        continue;
      }
      const size = oldSizes.get(row.key) ?? row.contentLength;
      report.deleted++;
      report.deletedBytes += size;
      await out.write({ key: row.key, size, at });
    }
    await out.sync();
  }

  report.seconds = Math.round((Date.now() - started) / 10) / 100;
  report.exitCode = report.interrupted ? 130 : report.kept > 0 || report.failed > 0 ? 1 : 0;
  return report;
}

/** The report for stdout. */
export function formatCleanupReport(report: CleanupReport): string {
  const out: string[] = [];
  const scope = report.types ? `types ${report.types.join(',')}` : 'all types';
  out.push(`cleanup-old (${scope})${report.dryRun ? ', dry run: nothing deleted' : ''}: ${report.rows} rows`);
  out.push(`  Old and new: distinct (a probe written to new did not show in old)`);
  out.push(`  Relying on the clean verify started ${report.verifiedAt}`);
  if (report.dryRun) {
    out.push(
      `  Would delete from old: ${report.wouldDelete} (${humanBytes(report.wouldDeleteBytes)}, ${report.wouldDeleteBytes} bytes)`,
    );
    for (const key of report.sample) out.push(`    ${key}`);
    if (report.wouldDelete > report.sample.length) out.push('    …');
    if (report.planFile) out.push(`  Listed in ${report.planFile}`);
  } else {
    out.push(
      `  Deleted from old: ${report.deleted} (${humanBytes(report.deletedBytes)}, ${report.deletedBytes} bytes)`,
    );
    if (report.auditLog) out.push(`  Audit log: ${report.auditLog}`);
  }
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
