/**
 * The producer of a scale-out backfill: walks the metadata by id in chunks,
 * joins each chunk against the listing snapshot, and enqueues one BullMQ job
 * per chunk holding only the rows that need copying (expired rows, rows the
 * snapshot shows present, and rows with an invalid size are settled here).
 * Workers (`worker.ts`) copy; the producer collects their results, writes the
 * single missing-blob log, shows the aggregated progress, and ends with the
 * same summary and exit codes as a local run (the same `RunSession`).
 *
 * Checkpoints stay in the metadata database, in the run's state row: the
 * finished chunk ranges beyond the low-water mark in `extra.queue.completed`,
 * and the mark itself (the end of the contiguous prefix of finished chunks).
 * A rerun walks from the mark and skips the rows of finished ranges; a chunk
 * enqueued again gets the same job id, so a job still in Redis (waiting,
 * running, or finished after the producer stopped) is taken over, not added
 * twice.
 */
import { randomBytes } from 'node:crypto';
import type { Job, Queue, QueueEvents } from 'bullmq';
import { ConfigError } from '../contract/errors.js';
import {
  type BackfillRunOptions,
  emptyCounts,
  type MetaStore,
  type RunCounts,
  type RunState,
  type ShardSpec,
} from '../contract/meta.js';
import type { BlobDB, BlobMeta } from '../contract/types.js';
import { shortError } from '../engine/errors.js';
import type { MissingRecord } from '../engine/missing-log.js';
import { type PlanRules, planRow } from '../engine/plan.js';
import { PresentIndex } from '../engine/present-index.js';
import {
  addCounts,
  type BackfillProgress,
  type BackfillStartInfo,
  type BackfillSummary,
  type EngineLogger,
  InfrastructureLost,
  loadRun,
  RunSession,
  shardLabel,
  silentLogger,
} from '../engine/session.js';
import {
  CHUNK_JOB,
  type ChunkJobData,
  type ChunkJobResult,
  checkRedis,
  chunkJobId,
  describeQueue,
  JOB_VERSION,
  type JobRow,
  type MigrationNames,
  migrationId,
  redisConnection,
  runJobPrefix,
} from './jobs.js';

export interface QueuedBackfillOptions {
  meta: MetaStore;
  /** The new backend: listed once for the snapshot. The producer copies nothing. */
  newDb: BlobDB;
  /** `redis://HOST:PORT[/DB]` */
  queueUrl: string;
  queueName: string;
  /** The config's descriptions; hashed into the migration id the workers check. */
  migration: MigrationNames;
  run?: string;
  shard?: ShardSpec;
  types?: string[];
  /** Metadata rows per chunk (one job). Default 1000. */
  chunkSize?: number;
  /** Chunks queued or running at once (default 16). */
  maxPendingChunks?: number;
  existence?: 'list' | 'head';
  reset?: boolean;
  logDir?: string;
  tempDir?: string;
  /** Attempts of a chunk job before it ends in the failed set (default 5). */
  attempts?: number;
  /** First retry delay of a chunk job (exponential; default 5000 ms). */
  backoffMs?: number;
  /** How often the checkpoint is saved (default 2000 ms). */
  checkpointIntervalMs?: number;
  /** Stop enqueueing; queued chunks are withdrawn, running ones finish; checkpoint. */
  signal?: AbortSignal;
  /** Stop waiting for running chunks too. */
  hardSignal?: AbortSignal;
  onProgress?: (p: BackfillProgress) => void;
  onStart?: (info: BackfillStartInfo & { queue: string; migrationId: string }) => void;
  logger?: EngineLogger;
}

interface QueueExtra {
  epoch: string;
  /** Finished chunk ranges `[after, upTo]` beyond the low-water mark, merged and sorted. */
  completed: [number, number][];
}

interface PendingChunk {
  jobId: string | undefined;
  after: number;
  upTo: number;
  rows: JobRow[];
  /** Counts and records of the rows settled by the producer itself. */
  local: RunCounts;
  localMissing: MissingRecord[];
  /** Rows done so far by a worker (progress events). */
  inFlight: number;
  done: boolean;
}

type ChunkJob = Job<ChunkJobData, ChunkJobResult>;

/** What names the run and its jobs. */
interface RunNames {
  run: string;
  shard: string;
  types: string[];
  /** The migration id the workers check. */
  mid: string;
}

/** Runs (or resumes, or reprints) a backfill spread over queue workers. */
export async function queuedBackfill(opts: QueuedBackfillOptions): Promise<BackfillSummary> {
  if (opts.meta.dialect === 'sqlite') {
    throw new ConfigError(
      'meta',
      'a --queue backfill needs a metadata database every worker host can reach (MySQL/MariaDB or PostgreSQL); a SQLite file cannot be shared with other hosts: run the backfill without --queue',
    );
  }
  const names: RunNames = {
    run: opts.run ?? 'default',
    shard: shardLabel(opts.shard),
    types: [...new Set(opts.types ?? [])].sort(),
    mid: migrationId(opts.migration),
  };
  const { run, shard, mid } = names;
  const runOptions: BackfillRunOptions = {
    types: names.types,
    shard,
    old: opts.migration.old,
    new: opts.migration.new,
  };

  await checkRedis(opts.queueUrl, opts.queueName);

  const loaded = await loadRun(opts.meta, run, shard, runOptions, {
    reset: opts.reset === true,
    onReset: async (forgotten) => {
      const old = queueExtraOf(forgotten);
      if (old) await withdrawRun(opts, runJobPrefix({ migrationId: mid, run, shard, epoch: old.epoch }));
    },
  });
  if (loaded.kind === 'reprint') return loaded.summary;
  const attempt = await ProducerAttempt.start(opts, names, runOptions, loaded.state);
  return attempt.run();
}

/** One attempt of the producer: the walk, the chunks queued in Redis, their results. */
class ProducerAttempt {
  readonly #o: QueuedBackfillOptions;
  readonly #names: RunNames;
  readonly #logger: EngineLogger;
  readonly #epoch: string;
  readonly #completed: [number, number][];
  #s!: RunSession;
  #mark: number;
  #lastChunkAt = Date.now();
  /** Chunks queued in Redis, by job id. */
  readonly #pending = new Map<string, PendingChunk>();
  #wake: (() => void) | undefined;
  /** Finished jobs to remove once a checkpoint covers them. */
  readonly #doneJobs: string[] = [];
  #removable: string[] = [];
  #queue: Queue<ChunkJobData, ChunkJobResult> | undefined;
  #events: QueueEvents | undefined;
  #index: PresentIndex | undefined;
  readonly #timers: NodeJS.Timeout[] = [];
  /** Redis errors come once per reconnect attempt: one warning in 20 s, naming Redis. */
  #redisError: { message: string; at: number; warnedAt: number; count: number } | undefined;
  #pollFailures = 0;
  #polling = false;

  private constructor(opts: QueuedBackfillOptions, names: RunNames, resumed: RunState | undefined) {
    this.#o = opts;
    this.#names = names;
    this.#logger = opts.logger ?? silentLogger;
    const extra: QueueExtra = (resumed && queueExtraOf(resumed)) ?? {
      epoch: randomBytes(4).toString('hex'),
      completed: [],
    };
    this.#epoch = extra.epoch;
    this.#completed = extra.completed.map(([a, b]) => [a, b]);
    this.#mark = resumed?.lowWaterMark ?? 0;
  }

  /** Starts the attempt: its state saved as running (with the queue's epoch), its missing-blob log open. */
  static async start(
    opts: QueuedBackfillOptions,
    names: RunNames,
    runOptions: BackfillRunOptions,
    resumed: RunState | undefined,
  ): Promise<ProducerAttempt> {
    const self = new ProducerAttempt(opts, names, resumed);
    const queueExtra = () => ({
      name: opts.queueName,
      epoch: self.#epoch,
      completed: self.#completed.map(([a, b]): [number, number] => [a, b]),
    });
    self.#s = await RunSession.begin({
      meta: opts.meta,
      run: names.run,
      ...(opts.shard ? { shard: opts.shard } : {}),
      runOptions,
      resumed,
      extra: () => ({ queue: queueExtra() }),
      ...(opts.logDir !== undefined ? { logDir: opts.logDir } : {}),
      logger: self.#logger,
      ...(opts.checkpointIntervalMs !== undefined ? { checkpointIntervalMs: opts.checkpointIntervalMs } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      mark: () => self.#mark,
      live: () => ({ counts: self.#s.finalized, inFlight: self.#inFlight() }),
      onStop: () => self.#poke(),
      beforeSave: (state) => {
        self.#removable = self.#doneJobs.splice(0);
        state.extra = { ...state.extra, queue: queueExtra() };
      },
      afterSave: async () => {
        // The checkpoint covers these chunks now: their jobs may leave Redis.
        const queue = self.#queue;
        if (queue) await Promise.all(self.#removable.map((id) => queue.remove(id).catch(() => 0)));
      },
    });
    return self;
  }

  /** Runs the attempt to its end and resolves with its summary. */
  async run(): Promise<BackfillSummary> {
    const s = this.#s;
    const types = this.#names.types;
    const estimate = await this.#o.meta.estimate(types.length > 0 ? { types } : {});
    const shardCount = this.#o.shard && this.#o.shard.count > 1 ? this.#o.shard.count : 1;
    s.estimatedTotal = Math.ceil(estimate.count / shardCount);
    s.watchSignals(this.#o.signal, this.#o.hardSignal, () => this.#poke());
    try {
      await this.#connect();
      this.#startTimers();
      await this.#buildSnapshot();
      this.#announce(Math.round(estimate.bytes / shardCount));
      await this.#walk();
      await this.#drain();
    } catch (err) {
      if (err instanceof InfrastructureLost) s.stop(err.message);
      else if (!s.interrupted) {
        await s.safeCheckpoint('failed', null);
        throw err;
      }
    } finally {
      for (const t of this.#timers) clearInterval(t);
      s.unwatchSignals();
      await this.#index?.close().catch(() => {});
    }
    const end = await s.settle();
    await this.#events?.close().catch(() => {});
    await this.#queue?.close().catch(() => {});
    return s.summary(end);
  }

  /** Wakes the walk or the drain waiting for a chunk to finish. */
  #poke(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  #nextEvent(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      this.#wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }

  /** Rows workers reported done within the chunks still queued. */
  #inFlight(): number {
    let inFlight = 0;
    for (const c of this.#pending.values()) inFlight += c.inFlight;
    return inFlight;
  }

  /** Connects to the queue and listens to its events (finished chunks, progress). */
  async #connect(): Promise<void> {
    const o = this.#o;
    const { Queue: QueueClass, QueueEvents: EventsClass } = await import('bullmq');
    const queue = new QueueClass<ChunkJobData, ChunkJobResult>(o.queueName, {
      connection: redisConnection(o.queueUrl, { blocking: false }),
    });
    this.#queue = queue;
    const onRedisError = (err: unknown) => this.#onRedisError(err);
    queue.on('error', onRedisError);
    const events = new EventsClass(o.queueName, {
      connection: redisConnection(o.queueUrl, { blocking: true }),
    });
    this.#events = events;
    events.on('error', onRedisError);
    await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);
    const reportLookupError = (err: unknown) => this.#logger.warn(`queue: ${shortError(err)}`);
    events.on('completed', ({ jobId }) => void this.#lookup(jobId).catch(reportLookupError));
    events.on('failed', ({ jobId }) => void this.#lookup(jobId).catch(reportLookupError));
    events.on('progress', ({ jobId, data }) => {
      const chunk = this.#pending.get(jobId);
      const done = (data as { done?: unknown } | undefined)?.done;
      if (chunk && typeof done === 'number') {
        chunk.inFlight = done;
        this.#s.progress();
      }
    });
  }

  #onRedisError(err: unknown): void {
    const now = Date.now();
    const previous = this.#redisError;
    const e = {
      message: shortError(err),
      at: now,
      warnedAt: previous?.warnedAt ?? 0,
      count: (previous?.count ?? 0) + 1,
    };
    this.#redisError = e;
    if (now - e.warnedAt >= 20_000) {
      e.warnedAt = now;
      this.#logger.warn(
        `Redis (${describeQueue(this.#o.queueUrl, this.#o.queueName)}) does not answer: ${e.message}; queued chunks wait for it (${e.count} errors so far)`,
      );
    }
  }

  /** The poll for missed events, the checkpoint, the watchdog. */
  #startTimers(): void {
    this.#timers.push(setInterval(() => this.#poll(), 2000));
    this.#timers.push(
      setInterval(() => {
        this.#s.checkpointIfDue();
        this.#watchdog();
      }, 250),
    );
    for (const t of this.#timers) t.unref();
  }

  /**
   * Safety net for missed events (a Redis reconnect): look at the queued
   * chunks now and then. Too many failures in a row: Redis is lost.
   */
  #poll(): void {
    if (this.#polling) return;
    this.#polling = true;
    Promise.all([...this.#pending.keys()].map((id) => this.#lookup(id)))
      .then(() => {
        this.#pollFailures = 0;
      })
      .catch((err: unknown) => {
        this.#pollFailures++;
        this.#onRedisError(err);
        if (this.#pollFailures >= 10 && this.#s.stopReason === undefined) {
          this.#s.stop(`the queue's Redis cannot be reached: ${shortError(err)}`);
        }
      })
      .finally(() => {
        this.#polling = false;
      });
  }

  /** No chunk finished for a minute: say whether Redis or the workers are missing. */
  #watchdog(): void {
    const pending = this.#pending.size;
    if (pending === 0 || Date.now() - this.#lastChunkAt <= 60_000) return;
    this.#lastChunkAt = Date.now();
    const redisError = this.#redisError;
    const queue = describeQueue(this.#o.queueUrl, this.#o.queueName);
    if (this.#pollFailures > 0 || (redisError !== undefined && Date.now() - redisError.at < 60_000)) {
      // Not the workers: Redis itself is gone (its errors are warned about as they come).
      this.#logger.warn(
        `no chunk finished for a minute with ${pending} queued: Redis (${queue}) does not answer${redisError ? ` (${redisError.message})` : ''}; the run stops if it stays away`,
      );
    } else {
      this.#logger.warn(
        `no chunk finished for a minute with ${pending} queued; are workers running? (blobshift worker --queue … --queue-name ${this.#o.queueName}, with the same config)`,
      );
    }
  }

  /** The listing snapshot of the new backend; without it, workers check each blob. */
  async #buildSnapshot(): Promise<void> {
    const o = this.#o;
    if ((o.existence ?? 'list') !== 'list') return;
    try {
      this.#index = await PresentIndex.build(o.newDb, {
        ...(o.tempDir ? { tempDir: o.tempDir } : {}),
        ...(o.signal ? { signal: o.signal } : {}),
      });
    } catch (err) {
      if (o.signal?.aborted) throw err;
      this.#logger.warn(
        `the listing snapshot of the new backend could not be built; workers check each blob: ${shortError(err)}`,
      );
    }
  }

  #announce(estimatedBytes: number): void {
    const s = this.#s;
    const index = this.#index;
    this.#o.onStart?.({
      mode: 'backfill',
      run: this.#names.run,
      shard: this.#names.shard,
      log: s.log.path,
      resumedFrom: s.resumedFrom,
      attempt: s.current.attempts,
      estimate: { count: s.estimatedTotal, bytes: estimatedBytes },
      snapshot: index ? { keys: index.count, bytes: index.bytes } : undefined,
      queue: describeQueue(this.#o.queueUrl, this.#o.queueName),
      migrationId: this.#names.mid,
    });
  }

  /** Walks the metadata from the mark; each chunk is settled here or enqueued, within the pending limit. */
  async #walk(): Promise<void> {
    const o = this.#o;
    const s = this.#s;
    const types = this.#names.types;
    const maxPending = Math.max(1, o.maxPendingChunks ?? 16);
    const walk = o.meta.walk({
      afterId: s.resumedFrom,
      chunkSize: Math.max(1, o.chunkSize ?? 1000),
      ...(types.length > 0 ? { types } : {}),
      ...(o.shard && o.shard.count > 1 ? { shard: o.shard } : {}),
    });
    let after = s.resumedFrom;
    const nowMs = Date.now();
    try {
      for await (const rows of walk) {
        while (this.#pending.size >= maxPending && !s.stopping) await this.#nextEvent(1000);
        if (s.stopping) break;
        const last = rows[rows.length - 1];
        if (!last) continue;
        const chunk = planChunk(after, last.id, rows, this.#completed, this.#index, nowMs);
        after = last.id;
        if (chunk.rows.length === 0) this.#settle(chunk, emptyCounts(), []);
        else await this.#enqueue(chunk);
      }
    } catch (err) {
      throw new InfrastructureLost(`reading the metadata or queueing failed: ${shortError(err)}`, {
        cause: err,
      });
    }
  }

  /**
   * Waits for the queued chunks. Interrupted: the chunks no worker holds are
   * withdrawn, the ones running finish; abandoned (a second signal) or
   * stopped: waits no more.
   */
  async #drain(): Promise<void> {
    const s = this.#s;
    while (this.#pending.size > 0 && !s.abandoned && s.stopReason === undefined) {
      if (s.interrupted) {
        await this.#withdraw();
        if (this.#pending.size === 0) break;
      }
      await this.#nextEvent(1000);
    }
  }

  /**
   * Withdraws the queued chunks no worker holds (waiting, or delayed for a
   * retry). A chunk a worker finished meanwhile is settled with its result,
   * never withdrawn: removing its job would lose what the worker did (the
   * rerun would find its blobs present and not count them as copied).
   */
  async #withdraw(): Promise<void> {
    const q = this.#queue;
    if (!q) return;
    for (const [id, chunk] of [...this.#pending]) {
      const job = (await q.getJob(id).catch(() => undefined)) as ChunkJob | undefined;
      const state = job ? await job.getState().catch(() => 'unknown') : 'unknown';
      if (chunk.done) continue;
      if (state === 'completed' || state === 'failed') {
        await this.#onFinished(job, chunk);
        continue;
      }
      // A worker holds it (its lock refuses the removal anyway): it finishes.
      if (state === 'active') continue;
      const removed = await q.remove(id).catch(() => 0);
      if (removed === 1) {
        this.#pending.delete(id);
        chunk.jobId = undefined;
      }
    }
  }

  /** Enqueues a chunk (or takes over its job, still in Redis from an earlier attempt). */
  async #enqueue(chunk: PendingChunk): Promise<void> {
    const q = this.#queue;
    if (!q) return;
    const { run, shard, mid } = this.#names;
    const jobId = chunkJobId({
      migrationId: mid,
      run,
      shard,
      epoch: this.#epoch,
      after: chunk.after,
      upTo: chunk.upTo,
    });
    chunk.jobId = jobId;
    this.#pending.set(jobId, chunk);
    const data: ChunkJobData = {
      v: JOB_VERSION,
      migrationId: mid,
      migration: this.#o.migration,
      run,
      shard,
      after: chunk.after,
      upTo: chunk.upTo,
      rows: chunk.rows,
    };
    const job = await q.add(CHUNK_JOB, data, {
      jobId,
      attempts: Math.max(1, this.#o.attempts ?? 5),
      backoff: { type: 'exponential', delay: this.#o.backoffMs ?? 5000 },
      // The producer removes finished jobs once a checkpoint covers them;
      // these ages only clean up after a producer that never came back.
      removeOnComplete: { age: 7 * 24 * 3600 },
      removeOnFail: { age: 30 * 24 * 3600 },
    });
    // Already finished (a job of an earlier producer attempt): take its result.
    await this.#onFinished(job as ChunkJob, chunk);
  }

  /** A job event (or the poll): settles the chunk if its job finished. */
  async #lookup(jobId: string): Promise<void> {
    const chunk = this.#pending.get(jobId);
    if (!chunk || !this.#queue) return;
    const job = (await this.#queue.getJob(jobId)) as ChunkJob | undefined;
    // Settled meanwhile (another lookup took the result and the job left Redis).
    if (chunk.done || this.#pending.get(jobId) !== chunk) return;
    if (!job) {
      // Gone from Redis without a result (removed by hand): enqueue it again.
      await this.#enqueue(chunk);
      return;
    }
    await this.#onFinished(job, chunk);
  }

  async #onFinished(job: ChunkJob | undefined, chunk: PendingChunk): Promise<void> {
    if (chunk.done || !job) return;
    const state = await job.getState();
    if (chunk.done) return;
    if (state === 'completed') {
      // The job object may predate the completion (the one `add` returned): read the result afresh.
      const fresh = job.returnvalue ? job : await this.#queue?.getJob(String(job.id));
      if (chunk.done) return;
      const result = fresh?.returnvalue;
      if (!result || result.v !== JOB_VERSION || result.migrationId !== this.#names.mid) {
        this.#failChunk(chunk, 'the job result is not from a worker of this migration');
        return;
      }
      this.#settle(chunk, { ...emptyCounts(), ...result.counts, seconds: 0 }, result.missing);
      if (chunk.jobId !== undefined) this.#doneJobs.push(chunk.jobId);
    } else if (state === 'failed') {
      this.#failChunk(chunk, `${job.failedReason || 'failed'} (after ${job.attemptsMade} attempts)`);
    }
  }

  #failChunk(chunk: PendingChunk, reason: string): void {
    this.#logger.error(`chunk ${chunk.after}-${chunk.upTo} (${chunk.rows.length} blobs) failed: ${reason}`, {
      job: chunk.jobId,
    });
    const counts = emptyCounts();
    counts.total = chunk.rows.length;
    counts.failed = chunk.rows.length;
    const at = new Date().toISOString();
    const error = `chunk failed: ${reason}`.slice(0, 500);
    this.#settle(
      chunk,
      counts,
      chunk.rows.map((r) => ({ id: r.id, key: r.key, type: r.type, parentId: r.parentId, error, at })),
    );
  }

  /** Marks a chunk finished: counts, log records, range, mark. */
  #settle(chunk: PendingChunk, counts: RunCounts, records: MissingRecord[]): void {
    if (chunk.done) return;
    chunk.done = true;
    if (chunk.jobId !== undefined) this.#pending.delete(chunk.jobId);
    const finished = this.#s.finalized;
    const all = addCounts(chunk.local, counts, 0);
    for (const k of Object.keys(finished) as (keyof RunCounts)[]) finished[k] += all[k];
    const missing = [...chunk.localMissing, ...records].sort((a, b) => a.id - b.id);
    for (const r of missing) this.#s.log.write(r);
    addRange(this.#completed, chunk.after, chunk.upTo);
    this.#mark = advanceMark(this.#completed, this.#mark);
    this.#lastChunkAt = Date.now();
    this.#s.progress();
    this.#poke();
  }
}

/** Settles what the producer can (expired, present in the snapshot, invalid size); the rest becomes the job. */
function planChunk(
  after: number,
  upTo: number,
  rows: readonly BlobMeta[],
  completed: readonly [number, number][],
  index: PresentIndex | undefined,
  nowMs: number,
): PendingChunk {
  const local = emptyCounts();
  const localMissing: MissingRecord[] = [];
  const jobRows: JobRow[] = [];
  const todo = rows.filter((r) => !inRanges(completed, r.id));
  const present = index ? index.lookup(todo.map((r) => r.key)) : undefined;
  const rules: PlanRules = { nowMs, refuse: 'size', headEach: !index };
  for (const row of todo) {
    const plan = planRow(row, present?.get(row.key), rules);
    if (plan.kind === 'copy') {
      jobRows.push({
        id: row.id,
        key: row.key,
        contentLength: row.contentLength,
        contentType: row.contentType,
        type: row.type,
        parentId: row.parentId,
        ...(plan.check ? { check: true as const } : {}),
      });
      continue;
    }
    local.total++;
    if (plan.kind === 'expired') local.expired++;
    else if (plan.kind === 'present') local.present++;
    else {
      local.failed++;
      const { id, key, type, parentId } = row;
      localMissing.push({ id, key, type, parentId, error: plan.error, at: new Date().toISOString() });
    }
  }
  return { jobId: undefined, after, upTo, rows: jobRows, local, localMissing, inFlight: 0, done: false };
}

function inRanges(ranges: readonly [number, number][], id: number): boolean {
  for (const [a, b] of ranges) if (id > a && id <= b) return true;
  return false;
}

/** Adds `(after, upTo]` to sorted, merged ranges. */
export function addRange(ranges: [number, number][], after: number, upTo: number): void {
  ranges.push([after, upTo]);
  ranges.sort((x, y) => x[0] - y[0]);
  const merged: [number, number][] = [];
  for (const r of ranges) {
    const prev = merged[merged.length - 1];
    if (prev && r[0] <= prev[1]) prev[1] = Math.max(prev[1], r[1]);
    else merged.push([r[0], r[1]]);
  }
  ranges.splice(0, ranges.length, ...merged);
}

/** Moves the mark over the ranges that start at or below it, and drops them. */
export function advanceMark(ranges: [number, number][], mark: number): number {
  let m = mark;
  while (ranges.length > 0 && (ranges[0]?.[0] ?? Number.POSITIVE_INFINITY) <= m) {
    const r = ranges.shift();
    if (r) m = Math.max(m, r[1]);
  }
  return m;
}

function queueExtraOf(state: RunState): QueueExtra | undefined {
  const q = state.extra.queue;
  if (!q || typeof q.epoch !== 'string') return undefined;
  return { epoch: q.epoch, completed: Array.isArray(q.completed) ? q.completed : [] };
}

/** `--reset`: jobs of the run's previous epoch leave the queue (running ones finish unobserved). */
async function withdrawRun(opts: QueuedBackfillOptions, prefix: string): Promise<void> {
  const { Queue: QueueClass } = await import('bullmq');
  const queue = new QueueClass(opts.queueName, {
    connection: redisConnection(opts.queueUrl, { blocking: false }),
  });
  try {
    for (const type of ['waiting', 'delayed', 'prioritized', 'paused', 'completed', 'failed'] as const) {
      for (let start = 0; ; start += 1000) {
        const jobs = await queue.getJobs([type], start, start + 999);
        if (jobs.length === 0) break;
        const mine = jobs.filter((j) => j?.id?.startsWith(prefix));
        await Promise.all(mine.map((j) => j.remove().catch(() => {})));
        if (mine.length > 0) start -= mine.length;
      }
    }
  } finally {
    await queue.close();
  }
}
