/**
 * The producer of a scale-out backfill: walks the metadata by id in chunks,
 * joins each chunk against the listing snapshot, and enqueues one BullMQ job
 * per chunk holding only the rows that need copying (expired rows, rows the
 * snapshot shows present, and rows with an invalid size are settled here).
 * Workers (`worker.ts`) copy; the producer collects their results, writes the
 * single missing-blob log, shows the aggregated progress, and ends with the
 * same summary and exit codes as a local run.
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
import { hostname } from 'node:os';
import type { Job, Queue, QueueEvents } from 'bullmq';
import { ConfigError } from '../contract/errors.js';
import type { MetaStore, RunCounts, RunState, ShardSpec } from '../contract/meta.js';
import type { BlobDB, BlobMeta } from '../contract/types.js';
import {
  addCounts,
  type BackfillProgress,
  type BackfillStartInfo,
  type BackfillSummary,
  type EngineLogger,
  emptyCounts,
  endSummary,
  freshRunState,
  refuseChangedOptions,
  refuseLiveOwner,
  settleRun,
  shardLabel,
  silentLogger,
  summaryFromState,
} from '../engine/backfill.js';
import { shortError } from '../engine/errors.js';
import { MissingLogWriter, type MissingRecord } from '../engine/missing-log.js';
import { PresentIndex } from '../engine/present-index.js';
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

class InfrastructureLost extends Error {}

/** Runs (or resumes, or reprints) a backfill spread over queue workers. */
export async function queuedBackfill(opts: QueuedBackfillOptions): Promise<BackfillSummary> {
  if (opts.meta.dialect === 'sqlite') {
    throw new ConfigError(
      'meta',
      'a --queue backfill needs a metadata database every worker host can reach (MySQL/MariaDB or PostgreSQL); a SQLite file cannot be shared with other hosts: run the backfill without --queue',
    );
  }
  const run = opts.run ?? 'default';
  const shard = shardLabel(opts.shard);
  const types = [...new Set(opts.types ?? [])].sort();
  const chunkSize = Math.max(1, opts.chunkSize ?? 1000);
  const maxPending = Math.max(1, opts.maxPendingChunks ?? 16);
  const logger = opts.logger ?? silentLogger;
  const { meta } = opts;
  const mid = migrationId(opts.migration);
  const queueLabel = describeQueue(opts.queueUrl, opts.queueName);
  const runOptions: Record<string, unknown> = {
    types,
    shard,
    old: opts.migration.old,
    new: opts.migration.new,
  };

  await checkRedis(opts.queueUrl, opts.queueName);

  let state = await meta.getRun(run, shard);
  const resetting = state !== undefined && opts.reset === true;
  if (state && opts.reset) {
    // --reset forgets a run, never one that is being run right now.
    refuseLiveOwner(run, state);
    await meta.deleteRun(run, shard);
  }
  if (resetting && state) {
    const old = queueExtraOf(state);
    if (old) await withdrawRun(opts, runJobPrefix({ migrationId: mid, run, shard, epoch: old.epoch }));
    state = undefined;
  }
  if (state) {
    refuseChangedOptions(run, state, runOptions);
    if (state.status === 'completed') return summaryFromState(state, 'completed', true);
    refuseLiveOwner(run, state);
  }

  const now = new Date();
  const base: RunState = state ?? freshRunState(run, shard, runOptions);
  const extra: QueueExtra = queueExtraOf(base) ?? { epoch: randomBytes(4).toString('hex'), completed: [] };
  const resumedFrom = base.lowWaterMark;
  const log = await MissingLogWriter.create(opts.logDir ?? 'blobshift-logs', {
    run,
    ...(opts.shard ? { shard: opts.shard } : {}),
  });
  const current: RunState = {
    ...base,
    status: 'running',
    attempts: base.attempts + 1,
    logs: [...base.logs, log.path],
    exitCode: null,
    updatedAt: now,
    finishedAt: null,
    extra: {
      ...base.extra,
      owner: { host: hostname(), pid: process.pid },
      queue: { name: opts.queueName, epoch: extra.epoch, completed: extra.completed },
    },
  };
  await meta.saveRun(current);

  const attemptStart = Date.now();
  const baseCounts = { ...base.counts };
  const finished = emptyCounts(); // this attempt, chunks finished
  let mark = resumedFrom;
  const completed: [number, number][] = extra.completed.map(([a, b]) => [a, b]);
  let interrupted = false;
  let stopReason: string | undefined;
  let lastChunkAt = Date.now();

  const estimate = await meta.estimate(types.length > 0 ? { types } : {});
  const shardCount = opts.shard && opts.shard.count > 1 ? opts.shard.count : 1;
  const estimatedTotal = Math.ceil(estimate.count / shardCount);

  // Chunks queued in Redis, by job id.
  const pending = new Map<string, PendingChunk>();
  let wake: (() => void) | undefined;
  const poke = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const nextEvent = (ms: number) =>
    new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(t);
        resolve();
      };
    });

  const doneJobs: string[] = []; // finished jobs to remove once a checkpoint covers them

  /** Marks a chunk finished: counts, log records, range, mark. */
  const settle = (chunk: PendingChunk, counts: RunCounts, records: MissingRecord[]) => {
    if (chunk.done) return;
    chunk.done = true;
    if (chunk.jobId !== undefined) pending.delete(chunk.jobId);
    const all = addCounts(chunk.local, counts, 0);
    for (const k of Object.keys(finished) as (keyof RunCounts)[]) finished[k] += all[k];
    const missing = [...chunk.localMissing, ...records].sort((a, b) => a.id - b.id);
    for (const r of missing) log.write(r);
    addRange(completed, chunk.after, chunk.upTo);
    mark = advanceMark(completed, mark);
    lastChunkAt = Date.now();
    progress();
    poke();
  };

  const onFinished = async (job: Job<ChunkJobData, ChunkJobResult> | undefined, chunk: PendingChunk) => {
    if (chunk.done || !job) return;
    const state = await job.getState();
    if (chunk.done) return;
    if (state === 'completed') {
      // The job object may predate the completion (the one `add` returned): read the result afresh.
      const fresh = job.returnvalue ? job : await queue?.getJob(String(job.id));
      if (chunk.done) return;
      const result = fresh?.returnvalue;
      if (!result || result.v !== JOB_VERSION || result.migrationId !== mid) {
        failChunk(chunk, 'the job result is not from a worker of this migration');
        return;
      }
      settle(chunk, { ...emptyCounts(), ...result.counts, seconds: 0 }, result.missing);
      if (chunk.jobId !== undefined) doneJobs.push(chunk.jobId);
    } else if (state === 'failed') {
      failChunk(chunk, `${job.failedReason || 'failed'} (after ${job.attemptsMade} attempts)`);
    }
  };

  const failChunk = (chunk: PendingChunk, reason: string) => {
    logger.error(`chunk ${chunk.after}-${chunk.upTo} (${chunk.rows.length} blobs) failed: ${reason}`, {
      job: chunk.jobId,
    });
    const counts = emptyCounts();
    counts.total = chunk.rows.length;
    counts.failed = chunk.rows.length;
    const at = new Date().toISOString();
    const error = `chunk failed: ${reason}`.slice(0, 500);
    settle(
      chunk,
      counts,
      chunk.rows.map((r) => ({ id: r.id, key: r.key, type: r.type, parentId: r.parentId, error, at })),
    );
  };

  let lastSaved = Date.now();
  let saving: Promise<void> | undefined;
  const checkpoint = async (status: RunState['status'], exitCode: number | null) => {
    while (saving) await saving;
    const p = (async () => {
      await log.flush();
      const removable = doneJobs.splice(0);
      current.lowWaterMark = mark;
      current.counts = addCounts(baseCounts, finished, (Date.now() - attemptStart) / 1000);
      current.status = status;
      current.exitCode = exitCode;
      current.updatedAt = new Date();
      current.extra = {
        ...current.extra,
        queue: { name: opts.queueName, epoch: extra.epoch, completed: completed.map(([a, b]) => [a, b]) },
      };
      if (status === 'completed') current.finishedAt = current.updatedAt;
      await meta.saveRun(current);
      lastSaved = Date.now();
      // The checkpoint covers these chunks now: their jobs may leave Redis.
      if (queue) await Promise.all(removable.map((id) => queue?.remove(id).catch(() => 0)));
    })();
    saving = p;
    try {
      await p;
    } finally {
      saving = undefined;
    }
  };
  const safeCheckpoint = async (status: RunState['status'], exitCode: number | null) => {
    try {
      await checkpoint(status, exitCode);
      return true;
    } catch (err) {
      logger.error(`the checkpoint could not be saved (the previous one stands): ${shortError(err)}`);
      return false;
    }
  };

  let lastProgress = 0;
  function progress(force = false) {
    if (!opts.onProgress) return;
    const t = Date.now();
    if (!force && t - lastProgress < 200) return;
    lastProgress = t;
    let inFlight = 0;
    for (const c of pending.values()) inFlight += c.inFlight;
    const done = baseCounts.total + finished.total + inFlight;
    opts.onProgress({
      done,
      total: Math.max(estimatedTotal, done),
      bytes: baseCounts.bytes + finished.bytes,
      counts: addCounts(baseCounts, finished, (t - attemptStart) / 1000),
      lowWaterMark: mark,
    });
  }

  const onAbort = () => {
    interrupted = true;
    poke();
  };
  let abandon = false;
  const onHard = () => {
    interrupted = true;
    abandon = true;
    poke();
  };
  if (opts.signal?.aborted) onAbort();
  else opts.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts.hardSignal?.aborted) onHard();
  else opts.hardSignal?.addEventListener('abort', onHard, { once: true });

  let queue: Queue<ChunkJobData, ChunkJobResult> | undefined;
  let events: QueueEvents | undefined;
  let index: PresentIndex | undefined;
  const timers: NodeJS.Timeout[] = [];
  try {
    const { Queue: QueueClass, QueueEvents: EventsClass } = await import('bullmq');
    queue = new QueueClass<ChunkJobData, ChunkJobResult>(opts.queueName, {
      connection: redisConnection(opts.queueUrl, { blocking: false }),
    });
    // Redis errors come once per reconnect attempt: one warning in 20 s, naming Redis.
    let redisError: { message: string; at: number; warnedAt: number; count: number } | undefined;
    const onRedisError = (err: unknown) => {
      const now = Date.now();
      redisError = {
        message: shortError(err),
        at: now,
        warnedAt: redisError?.warnedAt ?? 0,
        count: (redisError?.count ?? 0) + 1,
      };
      if (now - redisError.warnedAt >= 20_000) {
        redisError.warnedAt = now;
        logger.warn(
          `Redis (${describeQueue(opts.queueUrl, opts.queueName)}) does not answer: ${redisError.message}; queued chunks wait for it (${redisError.count} errors so far)`,
        );
      }
    };
    queue.on('error', onRedisError);
    events = new EventsClass(opts.queueName, {
      connection: redisConnection(opts.queueUrl, { blocking: true }),
    });
    events.on('error', onRedisError);
    await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);
    const q = queue;
    const lookup = async (jobId: string) => {
      const chunk = pending.get(jobId);
      if (!chunk) return;
      const job = (await q.getJob(jobId)) as Job<ChunkJobData, ChunkJobResult> | undefined;
      // Settled meanwhile (another lookup took the result and the job left Redis).
      if (chunk.done || pending.get(jobId) !== chunk) return;
      if (!job) {
        // Gone from Redis without a result (removed by hand): enqueue it again.
        await enqueue(chunk);
        return;
      }
      await onFinished(job, chunk);
    };
    const reportLookupError = (err: unknown) => logger.warn(`queue: ${shortError(err)}`);
    events.on('completed', ({ jobId }) => void lookup(jobId).catch(reportLookupError));
    events.on('failed', ({ jobId }) => void lookup(jobId).catch(reportLookupError));
    events.on('progress', ({ jobId, data }) => {
      const chunk = pending.get(jobId);
      const done = (data as { done?: unknown } | undefined)?.done;
      if (chunk && typeof done === 'number') {
        chunk.inFlight = done;
        progress();
      }
    });

    const enqueue = async (chunk: PendingChunk) => {
      const jobId = chunkJobId({
        migrationId: mid,
        run,
        shard,
        epoch: extra.epoch,
        after: chunk.after,
        upTo: chunk.upTo,
      });
      chunk.jobId = jobId;
      pending.set(jobId, chunk);
      const job = await q.add(
        CHUNK_JOB,
        {
          v: JOB_VERSION,
          migrationId: mid,
          migration: opts.migration,
          run,
          shard,
          after: chunk.after,
          upTo: chunk.upTo,
          rows: chunk.rows,
        },
        {
          jobId,
          attempts: Math.max(1, opts.attempts ?? 5),
          backoff: { type: 'exponential', delay: opts.backoffMs ?? 5000 },
          // The producer removes finished jobs once a checkpoint covers them;
          // these ages only clean up after a producer that never came back.
          removeOnComplete: { age: 7 * 24 * 3600 },
          removeOnFail: { age: 30 * 24 * 3600 },
        },
      );
      // Already finished (a job of an earlier producer attempt): take its result.
      await onFinished(job as Job<ChunkJobData, ChunkJobResult>, chunk);
    };

    // Safety net for missed events (a Redis reconnect): look at the queued
    // chunks now and then. Too many failures in a row: Redis is lost.
    let pollFailures = 0;
    let polling = false;
    timers.push(
      setInterval(() => {
        if (polling) return;
        polling = true;
        Promise.all([...pending.keys()].map((id) => lookup(id)))
          .then(() => {
            pollFailures = 0;
          })
          .catch((err: unknown) => {
            pollFailures++;
            onRedisError(err);
            if (pollFailures >= 10 && stopReason === undefined) {
              stopReason = `the queue's Redis cannot be reached: ${shortError(err)}`;
              poke();
            }
          })
          .finally(() => {
            polling = false;
          });
      }, 2000),
    );
    timers.push(
      setInterval(() => {
        if (Date.now() - lastSaved >= (opts.checkpointIntervalMs ?? 2000) && !saving) {
          checkpoint('running', null).catch((err: unknown) => {
            stopReason ??= `saving the checkpoint failed: ${shortError(err)}`;
            poke();
          });
        }
        if (pending.size > 0 && Date.now() - lastChunkAt > 60_000) {
          lastChunkAt = Date.now();
          if (pollFailures > 0 || (redisError !== undefined && Date.now() - redisError.at < 60_000)) {
            // Not the workers: Redis itself is gone (its errors are warned about as they come).
            logger.warn(
              `no chunk finished for a minute with ${pending.size} queued: Redis (${describeQueue(opts.queueUrl, opts.queueName)}) does not answer${redisError ? ` (${redisError.message})` : ''}; the run stops if it stays away`,
            );
          } else {
            logger.warn(
              `no chunk finished for a minute with ${pending.size} queued; are workers running? (blobshift worker --queue … --queue-name ${opts.queueName}, with the same config)`,
            );
          }
        }
      }, 250),
    );
    for (const t of timers) t.unref();

    if ((opts.existence ?? 'list') === 'list') {
      try {
        index = await PresentIndex.build(opts.newDb, {
          ...(opts.tempDir ? { tempDir: opts.tempDir } : {}),
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
      } catch (err) {
        if (opts.signal?.aborted) throw err;
        logger.warn(
          `the listing snapshot of the new backend could not be built; workers check each blob: ${shortError(err)}`,
        );
      }
    }
    opts.onStart?.({
      mode: 'backfill',
      run,
      shard,
      log: log.path,
      resumedFrom,
      attempt: current.attempts,
      estimate: { count: estimatedTotal, bytes: Math.round(estimate.bytes / shardCount) },
      snapshot: index ? { keys: index.count, bytes: index.bytes } : undefined,
      queue: queueLabel,
      migrationId: mid,
    });

    const walk = meta.walk({
      afterId: resumedFrom,
      chunkSize,
      ...(types.length > 0 ? { types } : {}),
      ...(opts.shard && opts.shard.count > 1 ? { shard: opts.shard } : {}),
    });
    let after = resumedFrom;
    const nowMs = Date.now();
    try {
      for await (const rows of walk) {
        while (pending.size >= maxPending && !interrupted && stopReason === undefined) await nextEvent(1000);
        if (interrupted || stopReason !== undefined) break;
        const last = rows[rows.length - 1];
        if (!last) continue;
        const chunk = planChunk(after, last.id, rows, completed, index, nowMs);
        after = last.id;
        if (chunk.rows.length === 0) settle(chunk, emptyCounts(), []);
        else await enqueue(chunk);
      }
    } catch (err) {
      throw new InfrastructureLost(`reading the metadata or queueing failed: ${shortError(err)}`, {
        cause: err,
      });
    }
    while (pending.size > 0 && !abandon && stopReason === undefined) {
      // Interrupted: withdraw the chunks no worker holds (waiting, or delayed
      // for a retry); the ones running finish.
      if (interrupted) {
        for (const [id, chunk] of [...pending]) {
          const removed = await q.remove(id).catch(() => 0);
          if (removed === 1) {
            pending.delete(id);
            chunk.jobId = undefined;
          }
        }
        if (pending.size === 0) break;
      }
      await nextEvent(1000);
    }
  } catch (err) {
    if (err instanceof InfrastructureLost) stopReason ??= err.message;
    else if (!interrupted) {
      await safeCheckpoint('failed', null);
      throw err;
    }
  } finally {
    for (const t of timers) clearInterval(t);
    opts.signal?.removeEventListener('abort', onAbort);
    opts.hardSignal?.removeEventListener('abort', onHard);
    await index?.close().catch(() => {});
  }

  const end = await settleRun(
    { stopReason, interrupted, counts: addCounts(baseCounts, finished, 0) },
    safeCheckpoint,
  );
  await log.close().catch(() => {});
  await events?.close().catch(() => {});
  await queue?.close().catch(() => {});
  progress(true);
  return endSummary(current, end);
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
  for (const row of todo) {
    if (row.expiresOn && row.expiresOn.getTime() <= nowMs) {
      local.total++;
      local.expired++;
      continue;
    }
    if (!Number.isSafeInteger(row.contentLength) || row.contentLength < 0) {
      local.total++;
      local.failed++;
      localMissing.push({
        id: row.id,
        key: row.key,
        type: row.type,
        parentId: row.parentId,
        error: `the metadata row has an invalid size (${row.contentLength})`,
        at: new Date().toISOString(),
      });
      continue;
    }
    const size = present?.get(row.key);
    if (size !== undefined && size === row.contentLength) {
      local.total++;
      local.present++;
      continue;
    }
    jobRows.push({
      id: row.id,
      key: row.key,
      contentLength: row.contentLength,
      contentType: row.contentType,
      type: row.type,
      parentId: row.parentId,
      ...(size !== undefined || !index ? { check: true as const } : {}),
    });
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
  const q = state.extra.queue as { epoch?: unknown; completed?: unknown } | undefined;
  if (!q || typeof q.epoch !== 'string') return undefined;
  const completed = Array.isArray(q.completed)
    ? q.completed.filter(
        (r): r is [number, number] =>
          Array.isArray(r) && r.length === 2 && typeof r[0] === 'number' && typeof r[1] === 'number',
      )
    : [];
  return { epoch: q.epoch, completed };
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
