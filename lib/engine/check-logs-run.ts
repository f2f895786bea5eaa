/**
 * One check-blob-logs run, in the runbook's steps (the classes and their
 * order: see check-logs.ts): record the run in the ledger; read the logs,
 * each new key into a chunk (one chunk is read while the one before is being
 * checked); classify each record, and with `migrate` copy the stragglers;
 * tally per type; the exit code, recorded in the ledger.
 */
import PQueue from 'p-queue';
import { AbortedError, BlobNotFoundError, InfrastructureError } from '../contract/errors.js';
import type { BlobDB, BlobInfo, BlobMeta } from '../contract/types.js';
import { type EngineLogger, silentLogger } from './backfill.js';
import type { CheckLogsOptions, CheckLogsReport, LogLineProblem } from './check-logs.js';
import { CheckTally, type Classification, type Pending, type TallyExtra } from './check-logs-tally.js';
import {
  type CopyOutcome,
  copyBlob,
  DEFAULT_RETRY,
  NewCopyDisagreement,
  ReferenceChecker,
  type RetryPolicy,
  SizeDisagreement,
} from './copy.js';
import { isInfrastructureError, shortError } from './errors.js';
import { type BackendIdentity, recordCheck } from './ledger.js';
import { type LogProblem, type MissingRecord, readMissingLog } from './missing-log.js';
import { withRetry } from './retry.js';
import { unresolvedRecords } from './verdict.js';

/** A check of one record failed: the record is "Could not check", unless the infrastructure is gone. */
class RecordFailed extends Error {
  constructor(
    readonly what: string,
    override readonly cause: unknown,
  ) {
    super(`${what} failed: ${shortError(cause)}`);
  }
}

export class CheckLogsRun {
  readonly #opts: CheckLogsOptions;
  readonly #migrate: boolean;
  readonly #chunkSize: number;
  readonly #logger: EngineLogger;
  readonly #retry: RetryPolicy;
  /** Consecutive infrastructure failures that stop the run. */
  readonly #threshold: number;
  readonly #signal: AbortSignal | undefined;
  readonly #identity: BackendIdentity;
  readonly #startedAt = new Date();
  readonly #details: { migrate: boolean; files: string[] };
  readonly #tally = new CheckTally();
  readonly #malformed: LogLineProblem[] = [];
  readonly #warnings: LogLineProblem[] = [];
  /** Every key read so far: a key is checked once. */
  readonly #seen = new Set<string>();
  readonly #queue: PQueue;
  readonly #references: ReferenceChecker;
  #records = 0;
  #duplicates = 0;
  #checked = 0;
  #seq = 0;
  #currentFile = '';
  #infraStreak = 0;
  #lastProgress = 0;
  /** The first failure (or the abort): queued checks then settle at once, rejecting. */
  #stopped: { error: unknown } | undefined;
  /** The chunk being read, and the checks of the one before. */
  #chunk: Pending[] = [];
  #inFlight: Promise<void> = Promise.resolve();

  constructor(opts: CheckLogsOptions) {
    this.#opts = opts;
    this.#migrate = opts.migrate === true;
    const concurrency = Math.max(1, opts.concurrency ?? 16);
    this.#chunkSize = Math.max(1, opts.chunkSize ?? 500);
    this.#logger = opts.logger ?? silentLogger;
    this.#retry = { ...DEFAULT_RETRY, ...opts.retry };
    this.#threshold = opts.infrastructureThreshold ?? Math.max(3, Math.min(concurrency, 16));
    this.#signal = opts.signal;
    this.#identity = opts.identity ?? { old: 'old', new: 'new' };
    this.#details = { migrate: this.#migrate, files: [...opts.files] };
    this.#queue = new PQueue({ concurrency });
    this.#references = new ReferenceChecker(opts.meta);
  }

  async run(): Promise<CheckLogsReport> {
    await this.#recordInLedger(null, null);
    const signal = this.#signal;
    const onAbort = () => this.#stop(new AbortedError('check-blob-logs interrupted'));
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await this.#readLogs();
    } catch (err) {
      this.#stop(err);
      await this.#inFlight;
      await this.#queue.onIdle();
      await this.#recordInLedger(new Date(), null).catch(() => {});
      if (signal?.aborted && !(err instanceof AbortedError)) {
        throw new AbortedError('check-blob-logs interrupted', { cause: err });
      }
      throw err;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    this.#progress(true);
    return this.#finish();
  }

  /** Reads every log, chunk by chunk, and waits for the last checks. */
  async #readLogs(): Promise<void> {
    for (const file of this.#opts.files) {
      this.#currentFile = file;
      await readMissingLog(
        file,
        (record) => this.#onRecord(record),
        (problem) => this.#onProblem(problem),
      );
    }
    if (this.#chunk.length > 0) await this.#dispatch();
    await this.#inFlight;
    if (this.#stopped) throw this.#stopped.error;
  }

  /** A record read: counted, and queued for its check unless its key came before. */
  async #onRecord(record: MissingRecord): Promise<void> {
    if (this.#stopped) throw this.#stopped.error;
    const shard = this.#opts.shard;
    if (shard && record.id % shard.count !== shard.index) return;
    this.#records++;
    if (this.#seen.has(record.key)) {
      this.#duplicates++;
      return;
    }
    this.#seen.add(record.key);
    this.#chunk.push({ seq: this.#seq++, record });
    if (this.#chunk.length >= this.#chunkSize) await this.#dispatch();
  }

  /** A line that is not a record: a torn last line warns, anything else is malformed. */
  #onProblem(problem: LogProblem): void {
    const entry = { file: problem.file, line: problem.line, why: problem.why };
    if (problem.torn) {
      this.#warnings.push(entry);
      this.#logger.warn(`${problem.file}:${problem.line}: ${problem.why}`);
    } else {
      this.#malformed.push(entry);
      this.#logger.error(`${problem.file}:${problem.line}: ${problem.why}`);
    }
  }

  /** Hands the chunk read to the checks once the chunk before it has settled. */
  async #dispatch(): Promise<void> {
    const next = this.#chunk;
    this.#chunk = [];
    await this.#inFlight;
    if (this.#stopped) throw this.#stopped.error;
    // Settles only when every task of the chunk has settled.
    this.#inFlight = Promise.allSettled([
      Promise.all(next.map((p) => this.#task(() => this.#check(p)))),
    ]).then(([r]) => {
      if (r?.status === 'rejected') this.#stop(r.reason);
    });
  }

  /** One record: classified, or "Could not check"; a run of infrastructure failures stops the run. */
  async #check(p: Pending): Promise<void> {
    try {
      await this.#classify(p);
    } catch (err) {
      if (!(err instanceof RecordFailed)) throw err;
      this.#logger.warn(`could not check a record: ${err.message}`, { key: p.record.key });
      this.#count(p, 'errors', { error: err.message });
      if (isInfrastructureError(err.cause) && ++this.#infraStreak >= this.#threshold) {
        throw new InfrastructureError(
          `check-blob-logs: ${this.#infraStreak} records in a row failed on the infrastructure (${shortError(err.cause)}); nothing was lost, rerun it when the backends answer`,
          { cause: err.cause },
        );
      }
    }
  }

  /** The classes in their order: in new, no row, (with `migrate`: copied), in old, not found. */
  async #classify(p: Pending): Promise<void> {
    const { meta, newDb, oldDb } = this.#opts;
    const key = p.record.key;
    const inNew = await this.#statOf(newDb, 'new', key);
    const row = await this.#attempt('reading the metadata row', key, () => meta.get(key));
    if (inNew) {
      this.#judgeNew(p, inNew, row);
      return;
    }
    if (!row) {
      this.#count(p, 'notReferenced');
      return;
    }
    if (this.#migrate) return this.#migrateStraggler(p, row);
    const inOld = await this.#statOf(oldDb, 'old', key);
    if (!inOld) this.#count(p, 'notFound');
    else if (inOld.size === row.contentLength) this.#count(p, 'foundInOld');
    else
      this.#count(p, 'wrongSizeInOld', {
        size: { where: 'old', expected: row.contentLength, actual: inOld.size },
      });
  }

  /** A copy in new: found when it has the row's size (or the row is gone), wrong size otherwise. */
  #judgeNew(p: Pending, info: BlobInfo, row: BlobMeta | undefined): void {
    if (!row || info.size === row.contentLength) this.#count(p, 'foundInNew');
    else {
      this.#logger.warn('the copy in the new backend does not have the size of its metadata row', {
        key: row.key,
        expected: row.contentLength,
        actual: info.size,
      });
      this.#count(p, 'wrongSizeInNew', {
        size: { where: 'new', expected: row.contentLength, actual: info.size },
      });
    }
  }

  /** With `migrate`: the record copied through the one copy path, and classified by its outcome. */
  async #migrateStraggler(p: Pending, row: BlobMeta): Promise<void> {
    const key = p.record.key;
    const outcome = await this.#copy(key, row);
    switch (outcome.kind) {
      case 'copied':
        this.#count(p, 'foundInOld', { migrated: true });
        return;
      case 'present': {
        // The app (or another run) put it in the new backend meanwhile.
        const info = await this.#statOf(this.#opts.newDb, 'new', key);
        if (info) {
          const fresh = await this.#attempt('reading the metadata row', key, () => this.#opts.meta.get(key));
          this.#judgeNew(p, info, fresh);
        } else this.#count(p, 'foundInNew');
        return;
      }
      case 'deleted':
        // The row went while copying; the copy was taken back.
        this.#count(p, 'notReferenced');
        return;
      case 'notFound':
        this.#count(p, 'notFound');
        return;
      case 'failed':
        return this.#copyFailed(p, outcome);
    }
  }

  #copy(key: string, row: BlobMeta): Promise<CopyOutcome> {
    const { oldDb, newDb, meta } = this.#opts;
    const retry = this.#retry;
    return copyBlob(
      {
        oldDb,
        newDb,
        references: this.#references,
        meta,
        retry,
        ...(this.#signal ? { signal: this.#signal } : {}),
        onRetry: (k, n, err) =>
          this.#logger.warn(`retrying copy (attempt ${n + 1} of ${retry.attempts})`, {
            key: k,
            error: shortError(err),
          }),
      },
      { key, contentLength: row.contentLength, contentType: row.contentType },
    );
  }

  /** A failed copy: a size that disagrees is a wrong size, never overwritten or copied. */
  #copyFailed(p: Pending, outcome: Extract<CopyOutcome, { kind: 'failed' }>): void {
    if (outcome.cause instanceof NewCopyDisagreement) {
      this.#count(p, 'wrongSizeInNew', {
        size: { where: 'new', expected: outcome.cause.expected, actual: outcome.cause.actual },
      });
      return;
    }
    if (outcome.cause instanceof SizeDisagreement) {
      this.#count(p, 'wrongSizeInOld', {
        size: { where: 'old', expected: outcome.cause.expected, actual: outcome.cause.actual },
      });
      return;
    }
    if (outcome.infrastructure) throw new RecordFailed('the copy', outcome.cause);
    this.#logger.warn('copy failed', { key: p.record.key, error: outcome.error });
    this.#count(p, 'foundInOld', { failed: outcome.error });
  }

  /** A record classified: tallied under its type; any class but "Could not check" ends a failure streak. */
  #count(p: Pending, kind: Classification, extra?: TallyExtra): void {
    this.#tally.add(p, kind, extra);
    if (kind !== 'errors') this.#infraStreak = 0;
    this.#checked++;
    this.#progress();
  }

  /** The tally per type, the exit code, recorded in the ledger. */
  async #finish(): Promise<CheckLogsReport> {
    const tally = this.#tally.result();
    const leftBehind = unresolvedRecords(tally.totals);
    const exitCode = leftBehind > 0 || this.#malformed.length > 0 ? 1 : 0;
    await this.#recordInLedger(new Date(), exitCode);
    return {
      files: [...this.#opts.files],
      migrate: this.#migrate,
      records: this.#records,
      duplicates: this.#duplicates,
      byType: tally.byType,
      totals: tally.totals,
      notFound: tally.notFound,
      wrongSize: tally.wrongSize,
      errors: tally.errors,
      migrateFailures: tally.migrateFailures,
      malformed: this.#malformed,
      warnings: this.#warnings,
      exitCode,
    };
  }

  /** This invocation in the run-state table (unless `record` is false): running, failed (no exit code) or done. */
  async #recordInLedger(finishedAt: Date | null, exitCode: 0 | 1 | null): Promise<void> {
    if (this.#opts.record === false) return;
    await recordCheck(
      this.#opts.meta,
      this.#identity,
      { startedAt: this.#startedAt, finishedAt },
      { ...this.#details, exitCode },
    );
  }

  /** One check with retries; its final failure is the record's (`RecordFailed`). */
  #attempt<T>(what: string, key: string, fn: () => Promise<T>): Promise<T> {
    const retry = this.#retry;
    return withRetry(fn, retry, {
      what: 'check-blob-logs',
      ...(this.#signal ? { signal: this.#signal } : {}),
      onRetry: (err, n) =>
        this.#logger.warn(`${what} failed, retrying (attempt ${n + 1} of ${retry.attempts})`, {
          key,
          error: shortError(err),
        }),
    }).catch((err: unknown) => {
      if (err instanceof AbortedError) throw err;
      throw new RecordFailed(what, err);
    });
  }

  #statOf(db: BlobDB, side: string, key: string): Promise<BlobInfo | undefined> {
    return this.#attempt(`the stat in the ${side} backend`, key, async (): Promise<BlobInfo | undefined> => {
      try {
        return await db.stat(key);
      } catch (err) {
        if (err instanceof BlobNotFoundError) return undefined;
        throw err;
      }
    });
  }

  #stop(error: unknown): void {
    this.#stopped ??= { error };
  }

  /** Queued: once the run has stopped, a task settles at once (rejecting) rather than being dropped. */
  #task<T>(fn: () => Promise<T>): Promise<T> {
    return this.#queue.add(
      async () => {
        if (this.#stopped) throw this.#stopped.error;
        return fn();
      },
      { throwOnTimeout: true },
    );
  }

  #progress(force = false): void {
    const onProgress = this.#opts.onProgress;
    if (!onProgress) return;
    const now = Date.now();
    if (!force && now - this.#lastProgress < 200) return;
    this.#lastProgress = now;
    onProgress({ read: this.#records, checked: this.#checked, file: this.#currentFile });
  }
}
