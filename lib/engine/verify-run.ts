/**
 * One verify judgement, in the runbook's steps (what each proves: see
 * verify.ts): list new into a snapshot; walk the rows against it, each row
 * that fails against the snapshot (and with `checksum`, each present row's
 * content) checked again on its own, bounded by `concurrency`; cross-check
 * the walk against the table's own count; find keys held by two rows; the
 * orphan pass over the snapshot; the verdict from the counts.
 */
import PQueue from 'p-queue';
import { AbortedError, BlobNotFoundError } from '../contract/errors.js';
import { RESERVED_PREFIX } from '../contract/keys.js';
import type { BlobDB, BlobMeta } from '../contract/types.js';
import { type EngineLogger, silentLogger } from './backfill.js';
import { DEFAULT_RETRY, type RetryPolicy } from './copy.js';
import { shortError } from './errors.js';
import { hashBlob } from './hash.js';
import { compactUtc } from './missing-log.js';
import { PROBE_PREFIX } from './preflight.js';
import { PresentIndex } from './present-index.js';
import { withRetry } from './retry.js';
import { verdictFor } from './verdict.js';
import type { BackendsCheck, VerifyClass, VerifyOptions, VerifyProgress, VerifyReport } from './verify.js';
import { FILE_SUFFIX, SAMPLE, VerifyKeyFiles } from './verify-files.js';

const ORPHAN_BATCH = 1000;

type Digest = { hash: string; bytes: number };

export class VerifyRun {
  readonly #opts: VerifyOptions;
  readonly #types: string[];
  readonly #typeFilter: { types?: string[] };
  readonly #estimatedRows: number;
  readonly #backends: BackendsCheck;
  readonly #started: number;
  readonly #checksum: boolean;
  readonly #concurrency: number;
  readonly #retry: RetryPolicy;
  readonly #logger: EngineLogger;
  readonly #signal: AbortSignal | undefined;
  readonly #files: VerifyKeyFiles;
  readonly #queue: PQueue;
  /** The first failure of a queued check (or the abort): the walk stops on it. */
  #stopped: { error: unknown } | undefined;
  #index: PresentIndex | undefined;
  #lastProgress = 0;

  readonly #counts: Record<VerifyClass, number> = {
    missing: 0,
    sizeMismatch: 0,
    checksumMismatch: 0,
    unverifiable: 0,
    unreadable: 0,
    invalidRow: 0,
    duplicateKey: 0,
  };
  #rows = 0;
  #expired = 0;
  #ok = 0;
  #okBytes = 0;
  #deletedDuringVerify = 0;
  #hashed = 0;
  #hashedAgainstOld = 0;
  /** Rows whose verdict is in (passed or failed). */
  #judged = 0;
  #walkedUpToMax = 0;
  #tableRows = 0;
  #unvisitedRows = 0;
  #duplicateKeys = 0;
  #orphanCount = 0;
  #orphanBytes = 0;

  constructor(
    opts: VerifyOptions,
    types: string[],
    estimatedRows: number,
    backends: BackendsCheck,
    started: number,
  ) {
    this.#opts = opts;
    this.#types = types;
    this.#typeFilter = types.length > 0 ? { types } : {};
    this.#estimatedRows = estimatedRows;
    this.#backends = backends;
    this.#started = started;
    this.#checksum = opts.checksum === true;
    this.#concurrency = Math.max(1, opts.concurrency ?? 16);
    this.#retry = { ...DEFAULT_RETRY, ...opts.retry };
    this.#logger = opts.logger ?? silentLogger;
    this.#signal = opts.signal;
    this.#files = new VerifyKeyFiles(opts.logDir, compactUtc(new Date()));
    this.#queue = new PQueue({ concurrency: this.#concurrency });
  }

  /** Walks the metadata against a listing of new and judges every row. */
  async run(): Promise<VerifyReport> {
    const signal = this.#signal;
    const onAbort = () => {
      this.#stopped ??= { error: this.#aborted() };
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    let index: PresentIndex;
    try {
      index = await this.#snapshot();
      const maxId = await this.#walkRows(index);
      await this.#crossCheckCount(maxId);
      await this.#findDuplicateKeys();
      await this.#orphanPass(index);
    } catch (err) {
      this.#stopped ??= { error: err };
      await this.#queue.onIdle();
      await this.#files.abandon();
      if (signal?.aborted && !(err instanceof AbortedError)) throw this.#aborted();
      throw err;
    } finally {
      signal?.removeEventListener('abort', onAbort);
      await this.#index?.close().catch(() => {});
    }
    const written = await this.#files.close();
    return this.#report(index, written.files, written.orphans);
  }

  /** Step 1: one listing of new, into a snapshot on disk. */
  async #snapshot(): Promise<PresentIndex> {
    const index = await PresentIndex.build(this.#opts.newDb, {
      ...(this.#opts.tempDir ? { tempDir: this.#opts.tempDir } : {}),
      ...(this.#signal ? { signal: this.#signal } : {}),
      onProgress: (n) => this.#progress('snapshot', n),
    });
    this.#index = index;
    this.#progress('snapshot', index.count, undefined, true);
    return index;
  }

  /**
   * Step 2: every row, walked by id in chunks, against the snapshot; the
   * re-checks and content checks queue up (the walk waits while the queue is
   * full). Resolves the highest id when the walk began.
   */
  async #walkRows(index: PresentIndex): Promise<number> {
    const { meta } = this.#opts;
    const nowMs = (this.#opts.now ?? new Date()).getTime();
    // What the walk must visit: every row up to the highest id when it begins.
    const maxId = await this.#retrying(() => meta.maxId(this.#typeFilter));
    const chunkSize = Math.max(1, this.#opts.chunkSize ?? 1000);
    for await (const chunk of meta.walk({ chunkSize, ...this.#typeFilter })) {
      if (this.#signal?.aborted) throw this.#aborted();
      if (this.#stopped) throw this.#stopped.error;
      await this.#judgeChunk(chunk, index, maxId, nowMs);
      // Bounded memory: the walk waits while the queue is full.
      await this.#queue.onSizeLessThan(this.#concurrency * 4);
      this.#progress('rows', this.#judged, this.#estimatedRows);
    }
    await this.#queue.onIdle();
    if (this.#stopped) throw this.#stopped.error;
    this.#progress('rows', this.#judged, this.#estimatedRows, true);
    return maxId;
  }

  /** One chunk of the walk: each row counted, and judged against the snapshot's size for its key. */
  async #judgeChunk(chunk: BlobMeta[], index: PresentIndex, maxId: number, nowMs: number): Promise<void> {
    const sizes = index.lookup(chunk.map((r) => r.key));
    for (const row of chunk) {
      this.#rows++;
      if (row.id <= maxId) this.#walkedUpToMax++;
      if (row.invalid !== undefined) {
        await this.#fail('invalidRow', row, { why: row.invalid }, `id ${row.id}: ${row.invalid}`);
        continue;
      }
      this.#judgeAgainstSnapshot(row, sizes.get(row.key), nowMs);
    }
  }

  /** A valid row against the snapshot's size for its key (undefined: not listed). */
  #judgeAgainstSnapshot(row: BlobMeta, size: number | undefined, nowMs: number): void {
    if (row.expiresOn && row.expiresOn.getTime() <= nowMs) {
      this.#expired++;
      return;
    }
    if (size !== undefined && size === row.contentLength) {
      if (this.#checksum) this.#task(() => this.#checkContent(row, 0));
      else this.#pass(row);
    } else {
      this.#task(() => this.#recheck(row, 0));
    }
  }

  /**
   * A row that failed against the snapshot, or whose content failed: read its
   * row again and ask the new backend directly before it counts.
   */
  async #recheck(walked: BlobMeta, attempt: number): Promise<void> {
    const { meta, newDb } = this.#opts;
    const row = await this.#retrying(() => meta.get(walked.key));
    if (!row) {
      this.#deletedDuringVerify++;
      return;
    }
    let size: number | undefined;
    try {
      size = await this.#retrying(async () => {
        try {
          return (await newDb.stat(row.key)).size;
        } catch (err) {
          if (err instanceof BlobNotFoundError) return undefined;
          throw err;
        }
      });
    } catch (err) {
      if (err instanceof AbortedError) throw err;
      await this.#fail('unreadable', row, { error: shortError(err) });
      return;
    }
    if (size === undefined) await this.#fail('missing', row, { size: row.contentLength });
    else if (size !== row.contentLength) {
      await this.#fail('sizeMismatch', row, { expected: row.contentLength, actual: size });
    } else if (this.#checksum) await this.#checkContent(row, attempt + 1);
    else this.#pass(row);
  }

  /** The checksum check: the bytes in new against the row's sha256, or the old copy's. */
  async #checkContent(row: BlobMeta, attempt: number): Promise<void> {
    let got: Digest | undefined;
    try {
      got = await this.#hashOf(this.#opts.newDb, row.key);
    } catch (err) {
      if (err instanceof AbortedError) throw err;
      await this.#fail('unreadable', row, { error: shortError(err) });
      return;
    }
    if (got) this.#hashed++;
    if (!got || got.bytes !== row.contentLength) {
      // Gone or changed since the listing.
      if (attempt < 2) return this.#recheck(row, attempt);
      await this.#failSize(row, got);
      return;
    }
    const expected = await this.#expectedHash(row);
    if (expected === undefined) return;
    if (got.hash === expected.hash) {
      this.#pass(row);
      return;
    }
    if (attempt < 2 && (await this.#rowChangedMeanwhile(row, attempt))) return;
    await this.#fail('checksumMismatch', row, {
      expected: expected.hash,
      actual: got.hash,
      against: expected.against,
    });
  }

  /** Content read from new that is not there or not of the row's size, on the last attempt. */
  async #failSize(row: BlobMeta, got: Digest | undefined): Promise<void> {
    if (!got) await this.#fail('missing', row, { size: row.contentLength });
    else await this.#fail('sizeMismatch', row, { expected: row.contentLength, actual: got.bytes });
  }

  /**
   * A content mismatch: the app may have rewritten the blob (and its row)
   * since the walk, and the row as it is now is the truth. True when the row
   * was deleted meanwhile (counted) or changed (checked again as it is now).
   */
  async #rowChangedMeanwhile(row: BlobMeta, attempt: number): Promise<boolean> {
    const fresh = await this.#retrying(() => this.#opts.meta.get(row.key));
    if (!fresh) {
      this.#deletedDuringVerify++;
      return true;
    }
    if (fresh.sha256 !== row.sha256 || fresh.contentLength !== row.contentLength) {
      await this.#recheck(fresh, attempt);
      return true;
    }
    return false;
  }

  /**
   * The hash the new copy must have: the row's sha256, or without one the old
   * copy's. Undefined when there is none to compare with (the row is then
   * counted unverifiable).
   */
  async #expectedHash(row: BlobMeta): Promise<{ hash: string; against: 'row' | 'old' } | undefined> {
    const inRow = row.sha256?.toLowerCase() ?? null;
    if (inRow !== null) return { hash: inRow, against: 'row' };
    const { oldDb } = this.#opts;
    if (!oldDb) {
      await this.#fail('unverifiable', row, { why: 'the row has no sha256 and no old backend was given' });
      return undefined;
    }
    let old: Digest | undefined;
    try {
      old = await this.#hashOf(oldDb, row.key);
    } catch (err) {
      if (err instanceof AbortedError) throw err;
      await this.#fail('unverifiable', row, {
        why: `the row has no sha256 and the old copy could not be read: ${shortError(err)}`,
      });
      return undefined;
    }
    if (!old) {
      await this.#fail('unverifiable', row, { why: 'the row has no sha256 and the old backend has no copy' });
      return undefined;
    }
    this.#hashedAgainstOld++;
    return { hash: old.hash, against: 'old' };
  }

  /**
   * Step 3: the table's own count, after the walk: rows it never visited are
   * unsafe, whatever the reason (a NULL id, an order the walk cannot follow).
   */
  async #crossCheckCount(maxId: number): Promise<void> {
    const { meta } = this.#opts;
    this.#tableRows = await this.#retrying(() => meta.count({ ...this.#typeFilter, upToId: maxId }));
    this.#unvisitedRows = Math.max(0, this.#tableRows - this.#walkedUpToMax);
    if (this.#unvisitedRows > 0) {
      this.#logger.error(
        `verify: the table holds ${this.#tableRows} rows up to id ${maxId}, the walk visited ${this.#walkedUpToMax}: ${this.#unvisitedRows} rows were never checked`,
      );
    }
  }

  /** Step 4: keys held by more than one row (one blob cannot match two rows). */
  async #findDuplicateKeys(): Promise<void> {
    const { meta } = this.#opts;
    const dups = await this.#retrying(() => meta.duplicateKeys({ ...this.#typeFilter, limit: SAMPLE }));
    this.#duplicateKeys = dups.count;
    for (const d of dups.samples) {
      await this.#files.record('duplicateKey', `${d.key} (ids ${d.ids.join(', ')})`, {
        key: d.key,
        ids: d.ids,
      });
    }
    if (dups.count > 0) this.#logger.error(`verify: ${dups.count} keys are held by more than one row`);
  }

  /** Step 5, orphans: the snapshot's keys in byte order, checked against the metadata in batches. */
  async #orphanPass(index: PresentIndex): Promise<void> {
    let batch: { key: string; size: number }[] = [];
    let seen = 0;
    const flush = async () => {
      if (batch.length === 0) return;
      await this.#judgeOrphans(batch);
      seen += batch.length;
      batch = [];
      this.#progress('orphans', seen, index.count);
    };
    for (const entry of index.keys()) {
      if (isReserved(entry.key)) continue;
      batch.push(entry);
      if (batch.length >= ORPHAN_BATCH) {
        if (this.#signal?.aborted) throw this.#aborted();
        await flush();
      }
    }
    await flush();
    this.#progress('orphans', seen, index.count, true);
  }

  /** One batch of snapshot keys: those no row references are orphans. */
  async #judgeOrphans(batch: { key: string; size: number }[]): Promise<void> {
    const keys = batch.map((e) => e.key);
    const referenced = await this.#retrying(() => this.#opts.meta.referenced(keys));
    for (const e of batch) {
      if (referenced.has(e.key)) continue;
      this.#orphanCount++;
      this.#orphanBytes += e.size;
      await this.#files.record('orphans', e.key, { key: e.key, size: e.size });
    }
  }

  /** Step 6: the verdict, from the counts. */
  #report(
    index: PresentIndex,
    files: Partial<Record<VerifyClass, string>>,
    orphanFile: string | null,
  ): VerifyReport {
    const counts = this.#counts;
    const { safe, verdict } = verdictFor({
      missing: counts.missing,
      sizeMismatches: counts.sizeMismatch,
      checksumMismatches: counts.checksumMismatch,
      unverifiable: counts.unverifiable,
      unreadable: counts.unreadable,
      invalidRows: counts.invalidRow,
      duplicateKeys: this.#duplicateKeys,
      unvisitedRows: this.#unvisitedRows,
    });
    return {
      safe,
      verdict,
      exitCode: safe ? 0 : 1,
      checksum: this.#checksum,
      types: this.#types.length > 0 ? this.#types : null,
      backends: this.#backends,
      rows: this.#rows,
      expired: this.#expired,
      checked: this.#rows - this.#expired - this.#deletedDuringVerify,
      ok: this.#ok,
      okBytes: this.#okBytes,
      missing: counts.missing,
      sizeMismatches: counts.sizeMismatch,
      checksumMismatches: counts.checksumMismatch,
      unverifiable: counts.unverifiable,
      unreadable: counts.unreadable,
      invalidRows: counts.invalidRow,
      duplicateKeys: this.#duplicateKeys,
      tableRows: this.#tableRows,
      unvisitedRows: this.#unvisitedRows,
      deletedDuringVerify: this.#deletedDuringVerify,
      hashed: this.#hashed,
      hashedAgainstOld: this.#hashedAgainstOld,
      orphans: { count: this.#orphanCount, bytes: this.#orphanBytes, file: orphanFile },
      snapshot: { keys: index.count, bytes: index.bytes },
      files,
      samples: this.#files.samples,
      seconds: Math.round((Date.now() - this.#started) / 10) / 100,
    };
  }

  async #fail(
    c: VerifyClass,
    row: BlobMeta,
    extra: Record<string, unknown>,
    sample = row.key,
  ): Promise<void> {
    this.#counts[c]++;
    this.#judged++;
    this.#logger.warn(`verify: ${FILE_SUFFIX[c]}`, { key: row.key, id: row.id, ...extra });
    await this.#files.record(c, sample, { id: row.id, key: row.key, type: row.type, ...extra });
  }

  #pass(row: BlobMeta): void {
    this.#ok++;
    this.#okBytes += row.contentLength;
    this.#judged++;
  }

  /** Queues a check; its failure stops the run (the walk throws it). */
  #task(fn: () => Promise<void>): void {
    this.#queue
      .add(async () => {
        if (this.#stopped) return;
        try {
          await fn();
        } catch (err) {
          this.#stopped ??= { error: err };
        }
      })
      .catch(() => {});
  }

  #retrying<T>(fn: () => Promise<T>): Promise<T> {
    const retry = this.#retry;
    return withRetry(fn, retry, {
      what: 'verify',
      ...(this.#signal ? { signal: this.#signal } : {}),
      onRetry: (err, n) =>
        this.#logger.warn(`verify: retrying (attempt ${n + 1} of ${retry.attempts})`, {
          error: shortError(err),
        }),
    });
  }

  /** Hashes the blob's bytes as they stream by; undefined when the blob is not there. */
  #hashOf(db: BlobDB, key: string): Promise<Digest | undefined> {
    return this.#retrying(async () => {
      const got = await hashBlob(db, key, this.#signal);
      return got && { hash: got.sha256, bytes: got.bytes };
    });
  }

  #progress(phase: VerifyProgress['phase'], done: number, total?: number, force = false): void {
    const onProgress = this.#opts.onProgress;
    if (!onProgress) return;
    const now = Date.now();
    if (!force && now - this.#lastProgress < 200) return;
    this.#lastProgress = now;
    onProgress({ phase, done, ...(total !== undefined ? { total } : {}) });
  }

  #aborted(): AbortedError {
    return new AbortedError('verify interrupted');
  }
}

/** blobshift's own keys: temporary names and write probes are never orphans. */
function isReserved(key: string): boolean {
  return (
    key.startsWith(PROBE_PREFIX) || key.split('/').some((segment) => segment.startsWith(RESERVED_PREFIX))
  );
}
