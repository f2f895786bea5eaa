/**
 * verify: is the new backend ready to be the only one?
 *
 * Every blob the metadata references (within `types`) must be in the new
 * backend with the metadata's size; with `checksum`, its bytes (streamed, never
 * buffered) must hash to the row's `sha256`, or, where the row has none, to
 * the old copy's hash. Expired rows are skipped and counted.
 *
 * Existence and sizes come from ONE listing snapshot of the new backend
 * (`PresentIndex`), joined against the metadata walked by id in chunks. The
 * app keeps running meanwhile, so a row that fails against the snapshot is
 * looked at once more before it counts: its row is read again and the new
 * backend is asked directly (a blob written, or a row changed, after the
 * listing is not a failure; a row deleted meanwhile is counted apart). These
 * re-checks cost a request per failing row only.
 *
 * Unverifiable blobs (with `checksum`: the row has no sha256 and the old
 * backend has no copy, or no old backend was given) make the verdict NOT
 * SAFE: `--checksum` asks for every blob's content to be proven, and these are
 * not. Run without `checksum` for the size-level verdict.
 *
 * Orphans (keys in the new backend that no row references, in any type) are
 * reported with a key file but do not make the verdict unsafe. blobshift's
 * reserved keys (a segment starting with `.blobshift-`) are never orphans.
 *
 * Key files: one per non-empty class, JSON lines (one object per line, fields
 * below), 0600 in `logDir` (0700 when created):
 *   verify-<UTC>-missing.jsonl            {"id","key","type","size"}
 *   verify-<UTC>-size-mismatch.jsonl      {"id","key","type","expected","actual"}
 *   verify-<UTC>-checksum-mismatch.jsonl  {"id","key","type","expected","actual","against":"row"|"old"}
 *   verify-<UTC>-unverifiable.jsonl       {"id","key","type","why"}
 *   verify-<UTC>-unreadable.jsonl         {"id","key","type","error"}
 *   verify-<UTC>-orphans.jsonl            {"key","size"}
 */
import { PreflightError, SameLocationError } from '../contract/errors.js';
import { humanBytes } from '../contract/format.js';
import type { MetaStore } from '../contract/meta.js';
import type { BlobDB } from '../contract/types.js';
import { type EngineLogger, silentLogger } from './backfill.js';
import type { RetryPolicy } from './copy.js';
import { shortError } from './errors.js';
import { type BackendIdentity, recordVerifyEnd, recordVerifyStart } from './ledger.js';
import { proveDistinct } from './preflight.js';
import { VerifyRun } from './verify-run.js';

export interface VerifyOptions {
  meta: MetaStore;
  newDb: BlobDB;
  /** Where `checksum` looks for the hash of rows that have no `sha256`. */
  oldDb?: BlobDB;
  /** Hash every present blob (streamed) and compare. */
  checksum?: boolean;
  /** Only rows of these types (orphans are still judged against every row). */
  types?: string[];
  /** Where the key files go. */
  logDir: string;
  /** Blobs hashed (and re-checks made) at once. Default 16. */
  concurrency?: number;
  /** Metadata rows per walk query. Default 1000. */
  chunkSize?: number;
  retry?: Partial<RetryPolicy>;
  /** Directory for the snapshot's temporary file. */
  tempDir?: string;
  /** Stops the run: rejects with `AbortedError`. */
  signal?: AbortSignal;
  onProgress?: (p: VerifyProgress) => void;
  logger?: EngineLogger;
  /** The moment rows count as expired against (default: when the walk starts). */
  now?: Date;
  /**
   * The config says old and new are the same place (same root, same bucket
   * with overlapping prefixes): the verdict is NOT SAFE at once.
   */
  sameLocation?: boolean;
  /**
   * The two backends as the operator configured them (secret-free
   * descriptions; the CLI passes the config's). The verdict is recorded in
   * the run-state table under them, and `cleanup-old` of the same pair looks
   * it up. Default `{ old: 'old' (or null without oldDb), new: 'new' }`.
   */
  identity?: BackendIdentity;
  /** Record the verdict in the run-state table (default true). */
  record?: boolean;
}

export interface VerifyProgress {
  phase: 'snapshot' | 'rows' | 'orphans';
  /** Keys listed (snapshot), rows judged (rows), snapshot keys judged (orphans). */
  done: number;
  /** The expected end of `done` where known (rows: the metadata's count). */
  total?: number;
}

export type VerifyClass =
  | 'missing'
  | 'sizeMismatch'
  | 'checksumMismatch'
  | 'unverifiable'
  | 'unreadable'
  | 'invalidRow'
  | 'duplicateKey';

export type { VerdictCounts, VerifyVerdict } from './verdict.js';
export { verdictFor } from './verdict.js';

import type { VerifyVerdict } from './verdict.js';

/**
 * What verify knows of old and new being two places: `distinct` (a probe
 * written to new did not show in old), `same place` (the config or the probe
 * says they are one: NOT SAFE), `no old backend` (nothing to compare).
 */
export type BackendsCheck = 'distinct' | 'same place' | 'no old backend';

export interface VerifyReport {
  safe: boolean;
  verdict: VerifyVerdict;
  /** 0 when safe, 1 when not. */
  exitCode: 0 | 1;
  checksum: boolean;
  /** The type filter, or null for every type. */
  types: string[] | null;
  /** Whether old and new were proven to be two places (see {@link BackendsCheck}). */
  backends: BackendsCheck;
  /** Metadata rows walked. */
  rows: number;
  /** Rows skipped because they expired. */
  expired: number;
  /** Rows judged (rows − expired − deletedDuringVerify). */
  checked: number;
  /** Rows that passed (present with the right size, and content with `checksum`). */
  ok: number;
  /** Bytes of the rows that passed. */
  okBytes: number;
  missing: number;
  sizeMismatches: number;
  checksumMismatches: number;
  /** With `checksum`: content not provable (no sha256 in the row, no old copy). Unsafe. */
  unverifiable: number;
  /** The new backend failed to stat or read the blob (after retries). Unsafe. */
  unreadable: number;
  /**
   * Rows that cannot be judged: a NULL or empty key, a size that is NULL,
   * blank or not a non-negative integer (`BlobMeta.invalid`). Unsafe.
   */
  invalidRows: number;
  /** Keys held by more than one row (within the types): one blob cannot match two rows. Unsafe. */
  duplicateKeys: number;
  /**
   * The table's own count of rows (within the types, up to the highest id
   * when the walk began), taken again after the walk, and how many of them
   * the walk never visited (rows with a NULL id, an id order the walk cannot
   * follow, rows written behind it). Any unvisited row is unsafe.
   */
  tableRows: number;
  unvisitedRows: number;
  /** Rows that failed against the snapshot but were gone when re-checked: the app deleted them. */
  deletedDuringVerify: number;
  /** With `checksum`: blobs whose bytes were hashed, and of those, compared to the old copy. */
  hashed: number;
  hashedAgainstOld: number;
  orphans: { count: number; bytes: number; file: string | null };
  snapshot: { keys: number; bytes: number };
  /** Key file per non-empty class. */
  files: Partial<Record<VerifyClass, string>>;
  /** The first keys of each non-empty class, for the text report. */
  samples: Partial<Record<VerifyClass | 'orphans', string[]>>;
  seconds: number;
}

/**
 * Runs verify. Rejects with `PreflightError` when the metadata has no rows
 * within `types` (a mistyped database is not "safe") or when the write probe
 * that tells old and new apart cannot be made, `AbortedError` when `signal`
 * fires; metadata errors reject too. Per-blob problems are counted.
 *
 * With an old backend, verify first proves that old and new are two places
 * (`proveDistinct`: a probe blob written to new must not show in old); the
 * same place under two names is NOT SAFE, whatever the blobs say. The verdict
 * is recorded in the run-state table (see `ledger.ts`): `running` from the
 * start, then the verdict, or `failed` when verify rejects.
 */
export async function verify(opts: VerifyOptions): Promise<VerifyReport> {
  const started = Date.now();
  const types = [...new Set(opts.types ?? [])].sort();
  const estimatedRows = await requireRows(opts.meta, types);
  const identity = opts.identity ?? { old: opts.oldDb ? 'old' : null, new: 'new' };
  const ledger =
    opts.record === false
      ? undefined
      : await recordVerifyStart(
          opts.meta,
          { identity, types: types.length > 0 ? types : null, checksum: opts.checksum === true },
          new Date(started),
        );
  let report: VerifyReport;
  try {
    const backends = await checkBackends(opts, identity);
    report =
      backends === 'same place'
        ? samePlaceReport(opts, types, started)
        : await new VerifyRun(opts, types, estimatedRows, backends, started).run();
  } catch (err) {
    if (ledger) await recordVerifyEnd(opts.meta, ledger, { error: shortError(err) }).catch(() => {});
    throw err;
  }
  if (ledger) await recordVerifyEnd(opts.meta, ledger, report);
  return report;
}

/** A table with no rows within the types is refused (a mistyped database is not "safe"); resolves its estimate. */
async function requireRows(meta: MetaStore, types: string[]): Promise<number> {
  const estimate = await meta.estimate(types.length > 0 ? { types } : {});
  if (estimate.count === 0) {
    const scope = types.length > 0 ? ` for types ${types.join(',')}` : '';
    throw new PreflightError(
      `metadata table ${JSON.stringify(meta.table)}`,
      `it has no rows${scope}; a mistyped database or table is not "safe" (check meta in the config${types.length > 0 ? ' and --types' : ''})`,
    );
  }
  return estimate.count;
}

/** Whether old and new are two places: by the config, then by a write probe. */
async function checkBackends(opts: VerifyOptions, identity: BackendIdentity): Promise<BackendsCheck> {
  const { newDb, oldDb } = opts;
  if (!oldDb) return 'no old backend';
  if (opts.sameLocation === true || oldDb === newDb) return 'same place';
  try {
    await proveDistinct(newDb, oldDb, {
      ...(identity.old !== null ? { old: identity.old } : {}),
      new: identity.new,
    });
  } catch (err) {
    if (!(err instanceof SameLocationError)) throw err;
    (opts.logger ?? silentLogger).error(`verify: ${shortError(err)}`);
    return 'same place';
  }
  return 'distinct';
}

/** The report when old and new are one place: nothing else is looked at. */
function samePlaceReport(opts: VerifyOptions, types: string[], started: number): VerifyReport {
  return {
    safe: false,
    verdict:
      'NOT SAFE: old and new are the same place (a probe written to new showed in old, or the config says so); deleting old copies would delete the only ones',
    exitCode: 1,
    checksum: opts.checksum === true,
    types: types.length > 0 ? types : null,
    backends: 'same place',
    rows: 0,
    expired: 0,
    checked: 0,
    ok: 0,
    okBytes: 0,
    missing: 0,
    sizeMismatches: 0,
    checksumMismatches: 0,
    unverifiable: 0,
    unreadable: 0,
    invalidRows: 0,
    duplicateKeys: 0,
    tableRows: 0,
    unvisitedRows: 0,
    deletedDuringVerify: 0,
    hashed: 0,
    hashedAgainstOld: 0,
    orphans: { count: 0, bytes: 0, file: null },
    snapshot: { keys: 0, bytes: 0 },
    files: {},
    samples: {},
    seconds: Math.round((Date.now() - started) / 10) / 100,
  };
}

/** The report for stdout; the verdict is the last line. */
export function formatVerifyReport(report: VerifyReport): string {
  const out: string[] = [];
  const scope = report.types ? `types ${report.types.join(',')}` : 'all types';
  out.push(
    `verify (${scope}${report.checksum ? ', with checksums' : ''}): ${report.rows} rows, ${report.checked} checked, ${report.expired} expired (skipped)`,
  );
  if (report.backends === 'same place') {
    out.push('  Old and new: THE SAME PLACE (a probe written to new showed in old, or the config says so)');
    out.push(report.verdict);
    return `${out.join('\n')}\n`;
  }
  if (report.backends === 'distinct')
    out.push('  Old and new: distinct (a probe written to new did not show in old)');
  out.push(`  OK: ${report.ok} (${humanBytes(report.okBytes)})`);
  const line = (label: string, n: number, c: VerifyClass) => {
    const file = report.files[c];
    out.push(`  ${label}: ${n}${file ? `, listed in ${file}` : ''}`);
    for (const key of report.samples[c] ?? []) out.push(`    ${key}`);
    if (n > (report.samples[c]?.length ?? 0)) out.push('    …');
  };
  line('Missing', report.missing, 'missing');
  line('Size mismatches', report.sizeMismatches, 'sizeMismatch');
  if (report.checksum) {
    line('Checksum mismatches', report.checksumMismatches, 'checksumMismatch');
    line('Unverifiable (no sha256 in the row, no old copy)', report.unverifiable, 'unverifiable');
  }
  if (report.unreadable > 0) line('Unreadable', report.unreadable, 'unreadable');
  if (report.invalidRows > 0)
    line('Invalid rows (NULL or empty key, unusable size)', report.invalidRows, 'invalidRow');
  if (report.duplicateKeys > 0) line('Keys held by more than one row', report.duplicateKeys, 'duplicateKey');
  if (report.unvisitedRows > 0) {
    out.push(
      `  Rows never visited by the walk: ${report.unvisitedRows} (the table counts ${report.tableRows}; a NULL id, or ids the walk cannot order)`,
    );
  }
  if (report.deletedDuringVerify > 0)
    out.push(`  Deleted by the app during verify: ${report.deletedDuringVerify}`);
  const o = report.orphans;
  out.push(
    `Orphans in new (no metadata row; not a reason for NOT SAFE): ${o.count} (${humanBytes(o.bytes)})${o.file ? `, listed in ${o.file}` : ''}`,
  );
  out.push(report.verdict);
  return `${out.join('\n')}\n`;
}
