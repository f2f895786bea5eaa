/**
 * The worker side of a scale-out backfill: takes chunk jobs from a BullMQ
 * queue and runs every row through the same copy path as a local run
 * (`copyBlob`: no overwrite, the metadata's size, content type and HTTP
 * metadata carried, no resurrection). The job's result holds the chunk's
 * counts and its missing records; the producer writes the log.
 *
 * A worker killed mid-chunk stops renewing the job's lock: BullMQ's stall
 * check (every `stalledIntervalMs`, on any live worker) moves the job back to
 * the waiting list, and another worker redoes the chunk (the copy path finds
 * what was already copied). A job that stalls more than `maxStalledCount`
 * times ends in the failed set.
 */
import { hostname } from 'node:os';
import type { Job, UnrecoverableError } from 'bullmq';
import PQueue from 'p-queue';
import { BlobShiftError } from '../contract/errors.js';
import { emptyCounts, type MetaStore, type RunCounts } from '../contract/meta.js';
import type { BlobDB } from '../contract/types.js';
import { DEFAULT_RETRY, ReferenceChecker, type RetryPolicy } from '../engine/copy.js';
import { isInfrastructureError, shortError } from '../engine/errors.js';
import type { MissingRecord } from '../engine/missing-log.js';
import { type EngineLogger, silentLogger } from '../engine/session.js';
import { missingRecord, runTask, tallyOutcome } from '../engine/task.js';
import {
  type ChunkJobData,
  type ChunkJobResult,
  isChunkJobData,
  JOB_VERSION,
  type JobRow,
  type MigrationNames,
  migrationId,
  redisConnection,
} from './jobs.js';

export interface ChunkContext {
  oldDb: BlobDB;
  newDb: BlobDB;
  references: ReferenceChecker;
  /** To read a row again when a backend disagrees with its size (see `CopyContext.meta`). */
  meta?: Pick<MetaStore, 'get'>;
  /** Shared by every job of the worker: the worker's `--concurrency`. */
  copies: PQueue;
  retry?: RetryPolicy;
  /** Abandons copies in flight. */
  signal?: AbortSignal;
  logger?: EngineLogger;
}

export interface ChunkRun {
  counts: RunCounts;
  missing: MissingRecord[];
  /** Set when blobs failed on the infrastructure: the job should be retried. */
  infrastructure: string | undefined;
}

/**
 * Copies the rows of one chunk (at most the shared queue's concurrency at
 * once) and tallies them. Never throws for a per-blob problem.
 */
export async function processChunk(
  ctx: ChunkContext,
  rows: readonly JobRow[],
  onProgress?: (done: number, bytes: number) => void,
): Promise<ChunkRun> {
  const counts = emptyCounts();
  const missing: MissingRecord[] = [];
  let infrastructure: string | undefined;
  const retry = ctx.retry ?? DEFAULT_RETRY;
  const logger = ctx.logger ?? silentLogger;
  const task = {
    oldDb: ctx.oldDb,
    newDb: ctx.newDb,
    references: ctx.references,
    ...(ctx.meta ? { meta: ctx.meta } : {}),
    retry,
    ...(ctx.signal ? { signal: ctx.signal } : {}),
    logger,
  };
  const one = async (row: JobRow) => {
    // Rejects only when the signal aborted: the job is abandoned.
    const outcome = await runTask(task, row, row.check === true);
    if (outcome.kind === 'failed' && (outcome.infrastructure || isInfrastructureError(outcome.cause))) {
      infrastructure ??= outcome.error;
    }
    tallyOutcome(counts, outcome);
    if (outcome.kind === 'failed') {
      logger.warn(`blob failed: ${outcome.error}`, { key: row.key, id: row.id });
    }
    const record = missingRecord(row, outcome);
    if (record) missing.push(record);
    onProgress?.(counts.total, counts.bytes);
  };
  await Promise.all(rows.map((row) => ctx.copies.add(() => one(row), { throwOnTimeout: true })));
  missing.sort((a, b) => a.id - b.id);
  return { counts, missing, infrastructure };
}

/** The worker refused a job of another migration (its config differs from the producer's). */
export class MigrationMismatchError extends BlobShiftError {
  constructor(message: string) {
    super(message, { code: 'E_CONFIG' });
  }
}

/** Blobs of a chunk failed on the infrastructure: thrown so BullMQ retries the job. */
export class ChunkInfrastructureError extends BlobShiftError {
  constructor(message: string) {
    super(message, { code: 'E_BACKEND' });
  }
}

export interface WorkerOptions {
  /** `redis://HOST:PORT[/DB]` */
  queueUrl: string;
  queueName: string;
  meta: Pick<MetaStore, 'referenced' | 'get'>;
  oldDb: BlobDB;
  newDb: BlobDB;
  /** This worker's config, described: its migration id must match each job's. */
  migration: MigrationNames;
  /** Blobs copied at once (default 16). */
  concurrency?: number;
  /** Chunk jobs held at once (default 2: the next chunk starts while one finishes). */
  jobsAtOnce?: number;
  /** How long a job's lock lasts without renewal (default 30000 ms; renewed every half). */
  lockDurationMs?: number;
  /** How often stalled jobs (a dead worker's) are looked for (default 15000 ms). */
  stalledIntervalMs?: number;
  /** Stalls before a job is failed (default 2). */
  maxStalledCount?: number;
  retry?: Partial<RetryPolicy>;
  /** Stop taking jobs; the ones running finish. */
  signal?: AbortSignal;
  /** Abandon the running jobs too (they stall and go to another worker). */
  hardSignal?: AbortSignal;
  logger?: EngineLogger;
  /** Called after each chunk (progress output). */
  onChunk?: (info: { jobId: string; rows: number; counts: RunCounts }) => void;
  /** Called once the worker listens for jobs. */
  onReady?: () => void;
}

export interface WorkerSummary {
  status: 'stopped' | 'refused';
  chunks: number;
  counts: RunCounts;
  /** Why the worker refused a job (status `refused`). */
  reason?: string;
}

/** What a worker did so far, and how its job handler tells it to stop. */
interface WorkerTally {
  /** The migration id of this worker's config. */
  own: string;
  /** `host:pid`, in results and refusals. */
  me: string;
  chunk: Omit<ChunkContext, 'logger'> & { logger: EngineLogger };
  totals: RunCounts;
  chunks: number;
  /** Why the worker refused a job of another migration. */
  refusal: string | undefined;
  stop: () => void;
}

/**
 * The handler of one chunk job: refuses a job of another format or
 * migration (unrecoverable: no worker of this config can do it), copies the
 * rows (`processChunk`), reports progress, and throws so BullMQ retries the
 * job when blobs failed on the infrastructure.
 */
function chunkHandler(
  opts: WorkerOptions,
  w: WorkerTally,
  Unrecoverable: typeof UnrecoverableError,
): (job: Job<ChunkJobData, ChunkJobResult>) => Promise<ChunkJobResult> {
  return async (job) => {
    const data: unknown = job.data;
    if (!isChunkJobData(data)) {
      throw new Unrecoverable(
        `job ${job.id} is not a blobshift chunk job of format ${JOB_VERSION} (a producer of another version?)`,
      );
    }
    if (data.migrationId !== w.own) {
      const reason =
        `refused by worker ${w.me}: the job belongs to migration ${data.migrationId} ` +
        `(${data.migration.meta}; ${data.migration.old} → ${data.migration.new}), ` +
        `this worker's config is migration ${w.own} ` +
        `(${opts.migration.meta}; ${opts.migration.old} → ${opts.migration.new}); ` +
        'start workers with the same config as the producer';
      w.refusal ??= reason;
      w.chunk.logger.error(reason, { job: job.id });
      w.stop();
      throw new Unrecoverable(reason);
    }
    let lastReport = 0;
    const result = await processChunk(w.chunk, data.rows, (done, bytes) => {
      const now = Date.now();
      if (now - lastReport < 1000) return;
      lastReport = now;
      job.updateProgress({ done, bytes }).catch(() => {});
    });
    if (result.infrastructure !== undefined) {
      throw new ChunkInfrastructureError(
        `blobs of chunk ${data.after}-${data.upTo} failed on the infrastructure (${result.infrastructure}); the chunk is retried`,
      );
    }
    w.chunks++;
    for (const k of Object.keys(w.totals) as (keyof RunCounts)[]) w.totals[k] += result.counts[k];
    opts.onChunk?.({ jobId: String(job.id), rows: data.rows.length, counts: result.counts });
    return {
      v: JOB_VERSION,
      migrationId: w.own,
      counts: result.counts,
      missing: result.missing,
      worker: w.me,
    };
  };
}

/**
 * Takes chunk jobs until `signal` aborts, or until it meets a job of another
 * migration: that job is failed with the reason (it cannot be done with this
 * config) and the worker stops taking jobs, so a misconfigured worker spoils
 * at most the jobs it holds. Resolves with what the worker did.
 */
export async function runWorker(opts: WorkerOptions): Promise<WorkerSummary> {
  const { Worker, UnrecoverableError } = await import('bullmq');
  const logger = opts.logger ?? silentLogger;
  const lockDuration = opts.lockDurationMs ?? 30_000;
  let stopRequested: (() => void) | undefined;
  const stopped = new Promise<void>((resolve) => {
    stopRequested = resolve;
  });
  const w: WorkerTally = {
    own: migrationId(opts.migration),
    me: `${hostname()}:${process.pid}`,
    chunk: {
      oldDb: opts.oldDb,
      newDb: opts.newDb,
      references: new ReferenceChecker(opts.meta),
      meta: opts.meta,
      copies: new PQueue({ concurrency: Math.max(1, opts.concurrency ?? 16) }),
      retry: { ...DEFAULT_RETRY, ...opts.retry },
      ...(opts.hardSignal ? { signal: opts.hardSignal } : {}),
      logger,
    },
    totals: emptyCounts(),
    chunks: 0,
    refusal: undefined,
    stop: () => stopRequested?.(),
  };

  const worker = new Worker<ChunkJobData, ChunkJobResult>(
    opts.queueName,
    chunkHandler(opts, w, UnrecoverableError),
    {
      connection: redisConnection(opts.queueUrl, { blocking: true }),
      concurrency: Math.max(1, opts.jobsAtOnce ?? 2),
      lockDuration,
      stalledInterval: opts.stalledIntervalMs ?? Math.min(15_000, lockDuration),
      maxStalledCount: opts.maxStalledCount ?? 2,
      autorun: false,
    },
  );
  worker.on('error', (err) => logger.warn(`queue: ${shortError(err)}`));
  worker.on('failed', (job, err) => {
    if (job && !(err instanceof UnrecoverableError)) {
      logger.warn(`chunk job ${job.id} failed (attempt ${job.attemptsMade}): ${shortError(err)}`);
    }
  });

  const onSoft = () => stopRequested?.();
  let forced = false;
  const onHard = () => {
    forced = true;
    stopRequested?.();
  };
  if (opts.signal?.aborted) onSoft();
  else opts.signal?.addEventListener('abort', onSoft, { once: true });
  if (opts.hardSignal?.aborted) onHard();
  else opts.hardSignal?.addEventListener('abort', onHard, { once: true });

  try {
    const running = worker.run().catch((err: unknown) => {
      logger.error(`queue worker stopped: ${shortError(err)}`);
      stopRequested?.();
    });
    await worker.waitUntilReady();
    opts.onReady?.();
    await stopped;
    // Graceful: the jobs held finish (and are reported); forced: they stall
    // and another worker redoes them.
    const closing = worker.close(forced);
    const onHardWhileClosing = () => {
      worker.close(true).catch(() => {});
    };
    opts.hardSignal?.addEventListener('abort', onHardWhileClosing, { once: true });
    await closing;
    opts.hardSignal?.removeEventListener('abort', onHardWhileClosing);
    await running;
  } finally {
    opts.signal?.removeEventListener('abort', onSoft);
    opts.hardSignal?.removeEventListener('abort', onHard);
    await worker.close(true).catch(() => {});
  }
  return {
    status: w.refusal !== undefined ? 'refused' : 'stopped',
    chunks: w.chunks,
    counts: w.totals,
    ...(w.refusal !== undefined ? { reason: w.refusal } : {}),
  };
}
