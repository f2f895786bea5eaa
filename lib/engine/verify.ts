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
import PQueue from 'p-queue';
import { AbortedError, BlobNotFoundError, PreflightError, SameLocationError } from '../contract/errors.js';
import { humanBytes } from '../contract/format.js';
import { RESERVED_PREFIX } from '../contract/keys.js';
import type { MetaStore } from '../contract/meta.js';
import type { BlobDB, BlobMeta } from '../contract/types.js';
import { type EngineLogger, silentLogger } from './backfill.js';
import { DEFAULT_RETRY, type RetryPolicy } from './copy.js';
import { shortError } from './errors.js';
import { hashBlob } from './hash.js';
import { type BackendIdentity, recordVerifyEnd, recordVerifyStart } from './ledger.js';
import { compactUtc } from './missing-log.js';
import { PROBE_PREFIX, proveDistinct } from './preflight.js';
import { PresentIndex } from './present-index.js';
import { LazyJsonLinesFile } from './report-file.js';
import { withRetry } from './retry.js';
import { verdictFor } from './verdict.js';

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

const SAMPLE = 10;
const ORPHAN_BATCH = 1000;

const FILE_SUFFIX: Record<VerifyClass | 'orphans', string> = {
  missing: 'missing',
  sizeMismatch: 'size-mismatch',
  checksumMismatch: 'checksum-mismatch',
  unverifiable: 'unverifiable',
  unreadable: 'unreadable',
  invalidRow: 'invalid-rows',
  duplicateKey: 'duplicate-keys',
  orphans: 'orphans',
};

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
  const { meta, newDb, oldDb } = opts;
  const types = [...new Set(opts.types ?? [])].sort();
  const typeFilter = types.length > 0 ? { types } : {};

  const estimate = await meta.estimate(typeFilter);
  if (estimate.count === 0) {
    const scope = types.length > 0 ? ` for types ${types.join(',')}` : '';
    throw new PreflightError(
      `metadata table ${JSON.stringify(meta.table)}`,
      `it has no rows${scope}; a mistyped database or table is not "safe" (check meta in the config${types.length > 0 ? ' and --types' : ''})`,
    );
  }
  const identity = opts.identity ?? { old: oldDb ? 'old' : null, new: 'new' };
  const ledger =
    opts.record === false
      ? undefined
      : await recordVerifyStart(
          meta,
          { identity, types: types.length > 0 ? types : null, checksum: opts.checksum === true },
          new Date(started),
        );
  let report: VerifyReport;
  try {
    let backends: BackendsCheck = 'no old backend';
    if (oldDb) {
      backends = 'distinct';
      if (opts.sameLocation === true || oldDb === newDb) backends = 'same place';
      else {
        try {
          await proveDistinct(newDb, oldDb, {
            ...(identity.old !== null ? { old: identity.old } : {}),
            new: identity.new,
          });
        } catch (err) {
          if (!(err instanceof SameLocationError)) throw err;
          (opts.logger ?? silentLogger).error(`verify: ${shortError(err)}`);
          backends = 'same place';
        }
      }
    }
    report =
      backends === 'same place'
        ? samePlaceReport(opts, types, started)
        : await judge(opts, types, estimate.count, backends, started);
  } catch (err) {
    if (ledger) await recordVerifyEnd(meta, ledger, { error: shortError(err) }).catch(() => {});
    throw err;
  }
  if (ledger) await recordVerifyEnd(meta, ledger, report);
  return report;
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

/** Walks the metadata against a listing of new and judges every row. */
async function judge(
  opts: VerifyOptions,
  types: string[],
  estimatedRows: number,
  backends: BackendsCheck,
  started: number,
): Promise<VerifyReport> {
  const { meta, newDb, oldDb } = opts;
  const checksum = opts.checksum === true;
  const typeFilter = types.length > 0 ? { types } : {};
  const concurrency = Math.max(1, opts.concurrency ?? 16);
  const chunkSize = Math.max(1, opts.chunkSize ?? 1000);
  const retry: RetryPolicy = { ...DEFAULT_RETRY, ...opts.retry };
  const logger = opts.logger ?? silentLogger;
  const signal = opts.signal;
  const aborted = () => new AbortedError('verify interrupted');
  const estimate = { count: estimatedRows };

  const stamp = compactUtc(new Date());
  const files = {} as Record<VerifyClass | 'orphans', LazyJsonLinesFile>;
  for (const c of Object.keys(FILE_SUFFIX) as (VerifyClass | 'orphans')[]) {
    files[c] = new LazyJsonLinesFile(opts.logDir, `verify-${stamp}-${FILE_SUFFIX[c]}.jsonl`);
  }
  const samples: Partial<Record<VerifyClass | 'orphans', string[]>> = {};
  const counts: Record<VerifyClass, number> = {
    missing: 0,
    sizeMismatch: 0,
    checksumMismatch: 0,
    unverifiable: 0,
    unreadable: 0,
    invalidRow: 0,
    duplicateKey: 0,
  };
  let rows = 0;
  let expired = 0;
  let ok = 0;
  let okBytes = 0;
  let deletedDuringVerify = 0;
  let hashed = 0;
  let hashedAgainstOld = 0;
  let judged = 0;
  let tableRows = 0;
  let unvisitedRows = 0;
  let duplicateKeys = 0;

  const record = async (c: VerifyClass | 'orphans', key: string, line: Record<string, unknown>) => {
    const list = samples[c] ?? [];
    samples[c] = list;
    if (list.length < SAMPLE) list.push(key);
    await files[c].write(line);
  };
  const fail = async (c: VerifyClass, row: BlobMeta, extra: Record<string, unknown>, sample = row.key) => {
    counts[c]++;
    judged++;
    logger.warn(`verify: ${FILE_SUFFIX[c]}`, { key: row.key, id: row.id, ...extra });
    await record(c, sample, { id: row.id, key: row.key, type: row.type, ...extra });
  };
  const pass = (row: BlobMeta) => {
    ok++;
    okBytes += row.contentLength;
    judged++;
  };

  let lastProgress = 0;
  const progress = (phase: VerifyProgress['phase'], done: number, total?: number, force = false) => {
    if (!opts.onProgress) return;
    const now = Date.now();
    if (!force && now - lastProgress < 200) return;
    lastProgress = now;
    opts.onProgress({ phase, done, ...(total !== undefined ? { total } : {}) });
  };

  const retrying = <T>(fn: () => Promise<T>) =>
    withRetry(fn, retry, {
      what: 'verify',
      ...(signal ? { signal } : {}),
      onRetry: (err, n) =>
        logger.warn(`verify: retrying (attempt ${n + 1} of ${retry.attempts})`, { error: shortError(err) }),
    });

  /** Hashes the blob's bytes as they stream by; undefined when the blob is not there. */
  const hashOf = async (db: BlobDB, key: string) =>
    retrying(async () => {
      const got = await hashBlob(db, key, signal);
      return got && { hash: got.sha256, bytes: got.bytes };
    });

  /**
   * A row that failed against the snapshot, or whose content failed: read its
   * row again and ask the new backend directly before it counts.
   */
  const recheck = async (walked: BlobMeta, attempt: number): Promise<void> => {
    const row = await retrying(() => meta.get(walked.key));
    if (!row) {
      deletedDuringVerify++;
      return;
    }
    let size: number | undefined;
    try {
      size = await retrying(async () => {
        try {
          return (await newDb.stat(row.key)).size;
        } catch (err) {
          if (err instanceof BlobNotFoundError) return undefined;
          throw err;
        }
      });
    } catch (err) {
      if (err instanceof AbortedError) throw err;
      await fail('unreadable', row, { error: shortError(err) });
      return;
    }
    if (size === undefined) await fail('missing', row, { size: row.contentLength });
    else if (size !== row.contentLength) {
      await fail('sizeMismatch', row, { expected: row.contentLength, actual: size });
    } else if (checksum) await content(row, attempt + 1);
    else pass(row);
  };

  /** With `checksum`: the bytes in new against the row's sha256, or the old copy's. */
  const content = async (row: BlobMeta, attempt: number): Promise<void> => {
    let got: { hash: string; bytes: number } | undefined;
    try {
      got = await hashOf(newDb, row.key);
    } catch (err) {
      if (err instanceof AbortedError) throw err;
      await fail('unreadable', row, { error: shortError(err) });
      return;
    }
    if (got) hashed++;
    if (!got || got.bytes !== row.contentLength) {
      // Gone or changed since the listing.
      if (attempt < 2) return recheck(row, attempt);
      if (!got) await fail('missing', row, { size: row.contentLength });
      else await fail('sizeMismatch', row, { expected: row.contentLength, actual: got.bytes });
      return;
    }
    let expected = row.sha256?.toLowerCase() ?? null;
    let against: 'row' | 'old' = 'row';
    if (expected === null) {
      if (!oldDb) {
        await fail('unverifiable', row, { why: 'the row has no sha256 and no old backend was given' });
        return;
      }
      let old: { hash: string; bytes: number } | undefined;
      try {
        old = await hashOf(oldDb, row.key);
      } catch (err) {
        if (err instanceof AbortedError) throw err;
        await fail('unverifiable', row, {
          why: `the row has no sha256 and the old copy could not be read: ${shortError(err)}`,
        });
        return;
      }
      if (!old) {
        await fail('unverifiable', row, { why: 'the row has no sha256 and the old backend has no copy' });
        return;
      }
      hashedAgainstOld++;
      expected = old.hash;
      against = 'old';
    }
    if (got.hash === expected) {
      pass(row);
      return;
    }
    // The app may have rewritten the blob (and its row) since the walk: the
    // row as it is now is the truth.
    if (attempt < 2) {
      const fresh = await retrying(() => meta.get(row.key));
      if (!fresh) {
        deletedDuringVerify++;
        return;
      }
      if (fresh.sha256 !== row.sha256 || fresh.contentLength !== row.contentLength) {
        return recheck(fresh, attempt);
      }
    }
    await fail('checksumMismatch', row, { expected, actual: got.hash, against });
  };

  const queue = new PQueue({ concurrency });
  let stopped: { error: unknown } | undefined;
  const task = (fn: () => Promise<void>) => {
    queue
      .add(async () => {
        if (stopped) return;
        try {
          await fn();
        } catch (err) {
          stopped ??= { error: err };
        }
      })
      .catch(() => {});
  };
  const onAbort = () => {
    stopped ??= { error: aborted() };
  };
  signal?.addEventListener('abort', onAbort, { once: true });

  let index: PresentIndex | undefined;
  let orphanCount = 0;
  let orphanBytes = 0;
  try {
    index = await PresentIndex.build(newDb, {
      ...(opts.tempDir ? { tempDir: opts.tempDir } : {}),
      ...(signal ? { signal } : {}),
      onProgress: (n) => progress('snapshot', n),
    });
    progress('snapshot', index.count, undefined, true);

    const nowMs = (opts.now ?? new Date()).getTime();
    // What the walk must visit: every row up to the highest id when it begins.
    const maxId = await retrying(() => meta.maxId(typeFilter));
    let walkedUpToMax = 0;
    for await (const chunk of meta.walk({ chunkSize, ...typeFilter })) {
      if (signal?.aborted) throw aborted();
      if (stopped) throw stopped.error;
      const sizes = index.lookup(chunk.map((r) => r.key));
      for (const row of chunk) {
        rows++;
        if (row.id <= maxId) walkedUpToMax++;
        if (row.invalid !== undefined) {
          await fail('invalidRow', row, { why: row.invalid }, `id ${row.id}: ${row.invalid}`);
          continue;
        }
        if (row.expiresOn && row.expiresOn.getTime() <= nowMs) {
          expired++;
          continue;
        }
        const size = sizes.get(row.key);
        if (size !== undefined && size === row.contentLength) {
          if (checksum) task(() => content(row, 0));
          else pass(row);
        } else {
          task(() => recheck(row, 0));
        }
      }
      // Bounded memory: the walk waits while the queue is full.
      await queue.onSizeLessThan(concurrency * 4);
      progress('rows', judged, estimate.count);
    }
    await queue.onIdle();
    if (stopped) throw stopped.error;
    progress('rows', judged, estimate.count, true);

    // The table's own count, after the walk: rows it never visited are unsafe,
    // whatever the reason (a NULL id, an order the walk cannot follow).
    tableRows = await retrying(() => meta.count({ ...typeFilter, upToId: maxId }));
    unvisitedRows = Math.max(0, tableRows - walkedUpToMax);
    if (unvisitedRows > 0) {
      logger.error(
        `verify: the table holds ${tableRows} rows up to id ${maxId}, the walk visited ${walkedUpToMax}: ${unvisitedRows} rows were never checked`,
      );
    }
    const dups = await retrying(() => meta.duplicateKeys({ ...typeFilter, limit: SAMPLE }));
    duplicateKeys = dups.count;
    for (const d of dups.samples) {
      await record('duplicateKey', `${d.key} (ids ${d.ids.join(', ')})`, { key: d.key, ids: d.ids });
    }
    if (dups.count > 0) logger.error(`verify: ${dups.count} keys are held by more than one row`);

    // Orphans: the snapshot's keys in byte order, checked against the metadata in batches.
    let batch: { key: string; size: number }[] = [];
    let seen = 0;
    const flushOrphans = async () => {
      if (batch.length === 0) return;
      const keys = batch.map((e) => e.key);
      const referenced = await retrying(() => meta.referenced(keys));
      for (const e of batch) {
        if (referenced.has(e.key)) continue;
        orphanCount++;
        orphanBytes += e.size;
        await record('orphans', e.key, { key: e.key, size: e.size });
      }
      seen += batch.length;
      batch = [];
      progress('orphans', seen, index?.count);
    };
    for (const entry of index.keys()) {
      if (isReserved(entry.key)) continue;
      batch.push(entry);
      if (batch.length >= ORPHAN_BATCH) {
        if (signal?.aborted) throw aborted();
        await flushOrphans();
      }
    }
    await flushOrphans();
    progress('orphans', seen, index.count, true);
  } catch (err) {
    stopped ??= { error: err };
    await queue.onIdle();
    await Promise.all(Object.values(files).map((f) => f.close().catch(() => undefined)));
    if (signal?.aborted && !(err instanceof AbortedError)) throw aborted();
    throw err;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    await index?.close().catch(() => {});
  }

  const paths: Partial<Record<VerifyClass, string>> = {};
  let orphanFile: string | null = null;
  for (const [c, f] of Object.entries(files) as [VerifyClass | 'orphans', LazyJsonLinesFile][]) {
    const path = await f.close();
    if (path === undefined) continue;
    if (c === 'orphans') orphanFile = path;
    else paths[c] = path;
  }

  const { safe, verdict } = verdictFor({
    missing: counts.missing,
    sizeMismatches: counts.sizeMismatch,
    checksumMismatches: counts.checksumMismatch,
    unverifiable: counts.unverifiable,
    unreadable: counts.unreadable,
    invalidRows: counts.invalidRow,
    duplicateKeys,
    unvisitedRows,
  });
  return {
    safe,
    verdict,
    exitCode: safe ? 0 : 1,
    checksum,
    types: types.length > 0 ? types : null,
    backends,
    rows,
    expired,
    checked: rows - expired - deletedDuringVerify,
    ok,
    okBytes,
    missing: counts.missing,
    sizeMismatches: counts.sizeMismatch,
    checksumMismatches: counts.checksumMismatch,
    unverifiable: counts.unverifiable,
    unreadable: counts.unreadable,
    invalidRows: counts.invalidRow,
    duplicateKeys,
    tableRows,
    unvisitedRows,
    deletedDuringVerify,
    hashed,
    hashedAgainstOld,
    orphans: { count: orphanCount, bytes: orphanBytes, file: orphanFile },
    snapshot: { keys: index.count, bytes: index.bytes },
    files: paths,
    samples,
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

/** blobshift's own keys: temporary names and write probes are never orphans. */
function isReserved(key: string): boolean {
  return (
    key.startsWith(PROBE_PREFIX) || key.split('/').some((segment) => segment.startsWith(RESERVED_PREFIX))
  );
}
