/**
 * One cleanup-old run, in the runbook's steps, once the preconditions hold
 * (a clean verify, two distinct places, the operator's yes: see cleanup.ts):
 * open the audit log (or the dry run's plan); list new and old into
 * snapshots; walk the rows in batches, each batch triaged against the
 * snapshots, its candidates proven by content right before the delete, then
 * deleted in one `bulkDelete` (or, in a dry run, listed); the report.
 */
import PQueue from 'p-queue';
import { AbortedError } from '../contract/errors.js';
import type { BlobDB, BlobMeta } from '../contract/types.js';
import { type EngineLogger, silentLogger } from './backfill.js';
import type { CleanupOptions, CleanupProgress, CleanupReport, KeptReason } from './cleanup.js';
import { DEFAULT_RETRY, type RetryPolicy } from './copy.js';
import { shortError } from './errors.js';
import { type BlobDigest, hashBlob } from './hash.js';
import { compactUtc } from './missing-log.js';
import { PresentIndex } from './present-index.js';
import { JsonLinesFile, LazyJsonLinesFile } from './report-file.js';
import { withRetry } from './retry.js';

const MAX_FAILURES = 100;
const SAMPLE = 100;

/** A candidate's proof: `ok`, or why its old copy stays. */
type Proof = KeptReason | 'ok' | 'gone from old' | 'stopped';

export class CleanupRun {
  readonly #opts: CleanupOptions;
  readonly #dryRun: boolean;
  readonly #typeFilter: { types?: string[] };
  readonly #estimatedRows: number;
  readonly #started: number;
  readonly #retry: RetryPolicy;
  readonly #logger: EngineLogger;
  readonly #signal: AbortSignal | undefined;
  readonly #queue: PQueue;
  readonly #report: CleanupReport;
  readonly #keptFile: LazyJsonLinesFile;
  readonly #stamp: string;
  #newIndex: PresentIndex | undefined;
  #oldIndex: PresentIndex | undefined;
  #lastProgress = 0;

  constructor(
    opts: CleanupOptions,
    types: string[],
    estimatedRows: number,
    verifiedAt: Date,
    started: number,
  ) {
    this.#opts = opts;
    this.#dryRun = opts.dryRun === true;
    this.#typeFilter = types.length > 0 ? { types } : {};
    this.#estimatedRows = estimatedRows;
    this.#started = started;
    this.#retry = { ...DEFAULT_RETRY, ...opts.retry };
    this.#logger = opts.logger ?? silentLogger;
    this.#signal = opts.signal;
    this.#queue = new PQueue({ concurrency: Math.max(1, opts.concurrency ?? 16) });
    this.#stamp = compactUtc(new Date());
    this.#report = emptyReport(this.#dryRun, types, verifiedAt);
    this.#keptFile = new LazyJsonLinesFile(opts.logDir, `cleanup-old-${this.#stamp}-kept.jsonl`);
  }

  async run(): Promise<CleanupReport> {
    const report = this.#report;
    const out = await this.#openOutput();
    try {
      const snapshots = await this.#snapshots();
      await this.#walkRows(out, snapshots);
    } catch (err) {
      // Stopped while listing or hashing: nothing half-done to undo (deletes
      // happen a batch at a time, after its proofs), so it is an interruption.
      if (!this.#signal?.aborted) throw err;
      report.interrupted = true;
    } finally {
      await this.#queue.onIdle();
      await out
        .close()
        .catch((err: unknown) => this.#logger.error(`closing ${out.path} failed: ${shortError(err)}`));
      report.keptFile = (await this.#keptFile.close().catch(() => undefined)) ?? null;
      await this.#newIndex?.close().catch(() => {});
      await this.#oldIndex?.close().catch(() => {});
    }
    report.seconds = Math.round((Date.now() - this.#started) / 10) / 100;
    report.exitCode = report.interrupted ? 130 : report.kept > 0 || report.failed > 0 ? 1 : 0;
    return report;
  }

  /**
   * The audit log (or the dry run's plan) exists from the start, so an
   * operator always finds one per invocation.
   */
  async #openOutput(): Promise<JsonLinesFile> {
    const out = await JsonLinesFile.create(
      this.#opts.logDir,
      this.#dryRun ? `cleanup-old-dry-run-${this.#stamp}.jsonl` : `cleanup-old-${this.#stamp}.jsonl`,
    );
    if (this.#dryRun) this.#report.planFile = out.path;
    else this.#report.auditLog = out.path;
    return out;
  }

  /** One listing of new, then one of old, each into a snapshot on disk. */
  async #snapshots(): Promise<{ newIndex: PresentIndex; oldIndex: PresentIndex }> {
    const common = {
      ...(this.#opts.tempDir ? { tempDir: this.#opts.tempDir } : {}),
      ...(this.#signal ? { signal: this.#signal } : {}),
    };
    const newIndex = await PresentIndex.build(this.#opts.newDb, {
      ...common,
      onProgress: (n) => this.#progress('snapshot-new', n),
    });
    this.#newIndex = newIndex;
    const oldIndex = await PresentIndex.build(this.#opts.oldDb, {
      ...common,
      onProgress: (n) => this.#progress('snapshot-old', n),
    });
    this.#oldIndex = oldIndex;
    this.#report.snapshot = {
      new: { keys: newIndex.count, bytes: newIndex.bytes },
      old: { keys: oldIndex.count, bytes: oldIndex.bytes },
    };
    return { newIndex, oldIndex };
  }

  /** The rows by id in batches: each batch triaged, proven, then deleted whole; the signal stops between batches. */
  async #walkRows(
    out: JsonLinesFile,
    snapshots: { newIndex: PresentIndex; oldIndex: PresentIndex },
  ): Promise<void> {
    const report = this.#report;
    const batchSize = Math.max(1, this.#opts.batchSize ?? 1000);
    for await (const chunk of this.#opts.meta.walk({ chunkSize: batchSize, ...this.#typeFilter })) {
      if (this.#signal?.aborted) {
        report.interrupted = true;
        break;
      }
      report.rows += chunk.length;
      const candidates = await this.#triage(chunk, snapshots);
      if (candidates.length > 0) {
        const confirmed = await this.#prove(candidates);
        if (this.#signal?.aborted) {
          report.interrupted = true;
          break;
        }
        if (confirmed.length > 0) await this.#remove(out, confirmed);
      }
      this.#progress('rows', report.rows, this.#estimatedRows);
    }
    this.#progress('rows', report.rows, this.#estimatedRows, true);
  }

  /**
   * The snapshots as a pre-filter: rows whose blob is not in old are counted,
   * rows that new does not hold with their size are kept; the rest are the
   * batch's candidates.
   */
  async #triage(
    chunk: BlobMeta[],
    snapshots: { newIndex: PresentIndex; oldIndex: PresentIndex },
  ): Promise<BlobMeta[]> {
    const report = this.#report;
    const keys = chunk.map((r) => r.key);
    const inOld = snapshots.oldIndex.lookup(keys);
    const inNew = snapshots.newIndex.lookup(keys);
    const candidates: BlobMeta[] = [];
    for (const row of chunk) {
      if (row.invalid !== undefined) {
        // Nothing about such a row proves anything: whatever old holds under it stays.
        if (row.key !== '' && inOld.has(row.key)) await this.#keep(row, 'invalid metadata row');
        else report.notInOld++;
        continue;
      }
      if (!inOld.has(row.key)) {
        report.notInOld++;
        continue;
      }
      const size = inNew.get(row.key);
      if (size === undefined) await this.#keep(row, 'missing in new');
      else if (size !== row.contentLength) await this.#keep(row, 'size differs in new');
      else candidates.push(row);
    }
    return candidates;
  }

  /**
   * The proofs right before a delete: still referenced, and the new copy's
   * bytes hash to the row's sha256 (or, without one, to the old copy's).
   */
  async #prove(candidates: BlobMeta[]): Promise<BlobMeta[]> {
    const { meta } = this.#opts;
    const referenced = await this.#retrying(() => meta.referenced(candidates.map((r) => r.key)));
    const stillReferenced: BlobMeta[] = [];
    for (const row of candidates) {
      if (referenced.has(row.key)) stillReferenced.push(row);
      else await this.#keep(row, 'no longer referenced');
    }
    const proofs = await Promise.all(
      stillReferenced.map((row) => this.#queue.add(() => this.#sameContent(row), { throwOnTimeout: true })),
    );
    const confirmed: BlobMeta[] = [];
    for (const [i, row] of stillReferenced.entries()) {
      const v = proofs[i] ?? 'read failed';
      if (v === 'ok') confirmed.push(row);
      else if (v === 'gone from old') this.#report.notInOld++;
      else if (v !== 'stopped') await this.#keep(row, v);
    }
    // Stopped midway: a batch is deleted whole or not at all.
    return this.#signal?.aborted ? [] : confirmed;
  }

  /** One candidate's content proof: the new copy's bytes, hashed, against the row's sha256 or the old copy. */
  async #sameContent(row: BlobMeta): Promise<Proof> {
    const signal = this.#signal;
    if (signal?.aborted) return 'stopped';
    const inNew = await this.#read(this.#opts.newDb, 'new', row);
    if (signal?.aborted) return 'stopped';
    if (inNew === 'failed') return 'read failed';
    if (inNew === undefined) return 'missing in new';
    if (inNew.bytes !== row.contentLength) return 'size differs in new';
    const expected = row.sha256?.toLowerCase() ?? null;
    if (expected !== null) {
      if (inNew.sha256 !== expected) {
        this.#logger.warn('cleanup-old: the new copy does not hash to the row sha256; the old copy is kept', {
          key: row.key,
          expected,
          actual: inNew.sha256,
        });
        return 'content differs in new';
      }
      this.#report.provedAgainstRow++;
      return 'ok';
    }
    const inOld = await this.#read(this.#opts.oldDb, 'old', row);
    if (signal?.aborted) return 'stopped';
    if (inOld === 'failed') return 'read failed';
    // Gone from old meanwhile: nothing left to delete.
    if (inOld === undefined) return 'gone from old';
    if (inOld.sha256 !== inNew.sha256 || inOld.bytes !== inNew.bytes) {
      this.#logger.warn(
        'cleanup-old: the row has no sha256 and the two copies differ; the old copy is kept',
        {
          key: row.key,
        },
      );
      return 'copies differ';
    }
    this.#report.provedAgainstOld++;
    return 'ok';
  }

  /** A copy's bytes, streamed and hashed; `failed` when the read failed (the old copy is then kept). */
  async #read(db: BlobDB, side: string, row: BlobMeta): Promise<BlobDigest | undefined | 'failed'> {
    const signal = this.#signal;
    try {
      return await this.#retrying(() => hashBlob(db, row.key, signal));
    } catch (err) {
      if (!(err instanceof AbortedError) && !signal?.aborted) {
        this.#logger.warn(`cleanup-old: reading the ${side} copy failed; the old copy is kept`, {
          key: row.key,
          error: shortError(err),
        });
      }
      return 'failed';
    }
  }

  /** The proven batch: deleted from old in one `bulkDelete` (a dry run lists it instead). */
  async #remove(out: JsonLinesFile, rows: BlobMeta[]): Promise<void> {
    const report = this.#report;
    const oldSizes = this.#oldIndex?.lookup(rows.map((r) => r.key)) ?? new Map<string, number>();
    if (this.#dryRun) {
      for (const row of rows) {
        const size = oldSizes.get(row.key) ?? row.contentLength;
        report.wouldDelete++;
        report.wouldDeleteBytes += size;
        if (report.sample.length < SAMPLE) report.sample.push(row.key);
        await out.write({ key: row.key, size });
      }
      return;
    }
    const result = await this.#retrying(() => this.#opts.oldDb.bulkDelete(rows.map((r) => r.key)));
    const at = new Date().toISOString();
    const failed = new Map(result.errors.map((e) => [e.key, e.error]));
    for (const row of rows) {
      const error = failed.get(row.key);
      if (error !== undefined) {
        report.failed++;
        if (report.failures.length < MAX_FAILURES)
          report.failures.push({ key: row.key, error: shortError(error) });
        this.#logger.warn('cleanup-old: delete failed', { key: row.key, error: shortError(error) });
        continue;
      }
      const size = oldSizes.get(row.key) ?? row.contentLength;
      report.deleted++;
      report.deletedBytes += size;
      await out.write({ key: row.key, size, at });
    }
    // The audit log holds the batch before the next one is touched.
    await out.sync();
  }

  async #keep(row: BlobMeta, reason: KeptReason): Promise<void> {
    this.#report.kept++;
    this.#report.keptByReason[reason]++;
    await this.#keptFile.write({ id: row.id, key: row.key, type: row.type, reason });
  }

  #retrying<T>(fn: () => Promise<T>): Promise<T> {
    const retry = this.#retry;
    return withRetry(fn, retry, {
      what: 'cleanup-old',
      ...(this.#signal ? { signal: this.#signal } : {}),
      onRetry: (err, n) =>
        this.#logger.warn(`cleanup-old: retrying (attempt ${n + 1} of ${retry.attempts})`, {
          error: shortError(err),
        }),
    });
  }

  #progress(phase: CleanupProgress['phase'], done: number, total?: number, force = false): void {
    const onProgress = this.#opts.onProgress;
    if (!onProgress) return;
    const now = Date.now();
    if (!force && now - this.#lastProgress < 200) return;
    this.#lastProgress = now;
    onProgress({ phase, done, ...(total !== undefined ? { total } : {}), deleted: this.#report.deleted });
  }
}

function emptyReport(dryRun: boolean, types: string[], verifiedAt: Date): CleanupReport {
  return {
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
    verifiedAt: verifiedAt.toISOString(),
    exitCode: 0,
    seconds: 0,
  };
}
