/**
 * backfill: copy every blob the metadata references and the new backend
 * lacks. Resumable (a run's low-water mark is checkpointed in the metadata
 * database), parallel (p-queue), shardable (`id % N = I`), bounded in memory
 * (a byte budget for blobs in flight), and safe against the live app (see
 * `copy.ts`).
 */
import { hostname } from 'node:os';
import PQueue from 'p-queue';
import { BlobNotFoundError, RunStateError } from '../contract/errors.js';
import { compareKeys } from '../contract/keys.js';
import type { MetaStore, RunCounts, RunState, ShardSpec } from '../contract/meta.js';
import { emptyCounts } from '../contract/meta.js';
import type { BlobDB, BlobMeta } from '../contract/types.js';
import {
  type CopyOutcome,
  copyBlob,
  DEFAULT_RETRY,
  ReferenceChecker,
  type RetryPolicy,
  refreshStale,
} from './copy.js';
import { isInfrastructureError, shortError } from './errors.js';
import { MissingLogWriter, type MissingRecord, NOT_FOUND } from './missing-log.js';
import { PresentIndex, type SnapshotBuild } from './present-index.js';
import { withRetry } from './retry.js';
import { ByteBudget, InFlightWindow, type WindowEntry } from './window.js';

/** The few logger methods the engine uses (winston's logger fits). */
export interface EngineLogger {
  info(message: string, meta?: Record<string, unknown>): unknown;
  warn(message: string, meta?: Record<string, unknown>): unknown;
  error(message: string, meta?: Record<string, unknown>): unknown;
}

export const silentLogger: EngineLogger = { info() {}, warn() {}, error() {} };

export interface BackfillOptions {
  meta: MetaStore;
  oldDb: BlobDB;
  newDb: BlobDB;
  /** The run's name (default `default`). */
  run?: string;
  shard?: ShardSpec;
  types?: string[];
  /** Metadata rows per walk query (default 1000). */
  chunkSize?: number;
  /** Blobs copied at once, and the in-flight window (default 16). */
  concurrency?: number;
  /** `list` (default): one listing snapshot; `head`: a HEAD per blob. */
  existence?: 'list' | 'head';
  /** At most this many copies started per second. */
  maxRate?: number;
  /** Forget the run's saved state and start over. */
  reset?: boolean;
  /**
   * A rollback (`blobshift rollback`): the copy the destination already holds
   * is compared with the metadata (its size, and the SHA-256 of its bytes
   * where the row has one) and replaced when the metadata proves it stale and
   * the source matches the row (see `refreshStale`). Costs a read of every
   * destination copy that has the row's size and a row sha256.
   */
  replaceStale?: boolean;
  /** Report what would be done; write nothing. */
  dryRun?: boolean;
  /** Where missing-blob logs go (default `./blobshift-logs`). */
  logDir?: string;
  /** Budget of blob bytes being copied at once (default 256 MiB). */
  maxInflightBytes?: number;
  retry?: Partial<RetryPolicy>;
  /**
   * Names of the two backends as the operator configured them; a resume
   * against other backends is refused. The CLI passes the config's
   * descriptions.
   */
  identity?: { old: string; new: string };
  /** Stop dispatching; in-flight copies finish; checkpoint; status `interrupted`. */
  signal?: AbortSignal;
  /** Abandon in-flight copies too (a second Ctrl-C). */
  hardSignal?: AbortSignal;
  onProgress?: (p: BackfillProgress) => void;
  /** Called once the run is set up, before copying (what the CLI prints at start). */
  onStart?: (info: BackfillStartInfo) => void;
  logger?: EngineLogger;
  /** Directory for the snapshot's temporary file. */
  tempDir?: string;
  /**
   * The listing snapshot of the new backend, already being built
   * (`PresentIndex.start`): the CLI starts it before its preflight so the
   * listing overlaps the setup. The run uses it instead of listing again and
   * cancels it when it ends (or does not need it: a reprint, a refusal).
   */
  snapshot?: SnapshotBuild;
  /** How often the checkpoint is saved (default 2000 ms). */
  checkpointIntervalMs?: number;
  /** Consecutive infrastructure failures that stop the run (default: concurrency, within 3–16). */
  infrastructureThreshold?: number;
}

export interface BackfillStartInfo {
  mode: 'backfill' | 'rollback';
  run: string;
  shard: string;
  log: string | undefined;
  resumedFrom: number;
  attempt: number;
  estimate: { count: number; bytes: number };
  snapshot: { keys: number; bytes: number } | undefined;
}

export interface BackfillProgress {
  /** Blobs finished (this attempt and earlier ones). */
  done: number;
  /** Estimated blobs in the run. */
  total: number;
  bytes: number;
  counts: RunCounts;
  lowWaterMark: number;
}

export type BackfillStatus = 'completed' | 'interrupted' | 'infrastructure' | 'dry-run';

export interface BackfillSummary {
  /** `rollback` for a run that replaces stale destination copies (`replaceStale`). */
  mode: 'backfill' | 'rollback';
  run: string;
  shard: string;
  status: BackfillStatus;
  exitCode: number;
  total: number;
  copied: number;
  /** Of `copied`: stale destination copies replaced (a rollback). */
  replaced: number;
  present: number;
  notFound: number;
  failed: number;
  deletedDuringMigration: number;
  expired: number;
  bytes: number;
  retries: number;
  seconds: number;
  /** Blobs per second over the run's attempts. */
  rate: number;
  logs: string[];
  attempts: number;
  lowWaterMark: number;
  /** True when this invocation only reprinted a completed run. */
  reprinted: boolean;
  /** Set for the infrastructure status: what was lost. */
  reason?: string;
  /** Dry run: blobs that would be copied. */
  toCopy?: number;
  toCopyBytes?: number;
}

export const EXIT_OK = 0;
export const EXIT_INCOMPLETE = 1;
export const EXIT_INFRA = 3;
export const EXIT_INTERRUPTED = 130;

export { emptyCounts };

/** The state of a run that has not started yet. */
export function freshRunState(name: string, shard: string, options: Record<string, unknown>): RunState {
  const now = new Date();
  return {
    name,
    shard,
    status: 'running',
    lowWaterMark: 0,
    counts: emptyCounts(),
    logs: [],
    options,
    attempts: 0,
    exitCode: null,
    startedAt: now,
    updatedAt: now,
    finishedAt: null,
    extra: {},
  };
}

export function shardLabel(shard: ShardSpec | undefined): string {
  return shard && shard.count > 1 ? `${shard.index}/${shard.count}` : '';
}

export type Outcome =
  | CopyOutcome
  | { kind: 'expired'; retries: number }
  | { kind: 'failed'; error: string; cause: unknown; infrastructure: boolean; retries: number };

interface Slot {
  row: BlobMeta;
  outcome: Outcome;
}

class InfrastructureLost extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'InfrastructureLost';
  }
}

/** Runs (or resumes, or reprints) a backfill. Never throws for per-blob problems. */
export async function backfill(opts: BackfillOptions): Promise<BackfillSummary> {
  try {
    return await runBackfill(opts);
  } finally {
    await opts.snapshot?.cancel();
  }
}

async function runBackfill(opts: BackfillOptions): Promise<BackfillSummary> {
  const run = opts.run ?? 'default';
  const shard = shardLabel(opts.shard);
  const types = [...new Set(opts.types ?? [])].sort();
  const concurrency = Math.max(1, opts.concurrency ?? 16);
  const chunkSize = Math.max(1, opts.chunkSize ?? 1000);
  const logger = opts.logger ?? silentLogger;
  const { meta, oldDb, newDb } = opts;
  // Where blobs go, for messages: a rollback writes into the old backend.
  const dest = opts.replaceStale ? 'the old backend (the destination of the rollback)' : 'the new backend';

  const runOptions: Record<string, unknown> = {
    types,
    shard,
    old: opts.identity?.old ?? null,
    new: opts.identity?.new ?? null,
    ...(opts.replaceStale ? { replaceStale: true } : {}),
  };

  if (opts.dryRun) return dryRun(opts, run, shard, types, chunkSize);

  let state = await meta.getRun(run, shard);
  if (state && opts.reset) {
    // --reset forgets a run, never one that is being run right now.
    refuseLiveOwner(run, state);
    await meta.deleteRun(run, shard);
    state = undefined;
  }
  if (state) {
    refuseChangedOptions(run, state, runOptions);
    if (state.status === 'completed') return summaryFromState(state, 'completed', true);
    refuseLiveOwner(run, state);
  }

  const now = new Date();
  const base: RunState = state ?? freshRunState(run, shard, runOptions);
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
    extra: { ...base.extra, owner: { host: hostname(), pid: process.pid } },
  };
  await meta.saveRun(current);

  const attemptStart = Date.now();
  const baseCounts = { ...base.counts };
  const finalized = emptyCounts(); // this attempt, passed by the mark
  const live = emptyCounts(); // this attempt, finished (for progress)

  let listing: SnapshotBuild | undefined;
  let index: PresentIndex | undefined;
  let existence = opts.existence ?? 'list';
  let stopReason: string | undefined;
  let interrupted = false;

  // The estimate only sizes the progress bar: a row with an absurd size must
  // not stop the run (that row fails on its own, the rest are copied).
  // Set inside the main try below, where losing the database checkpoints and exits 3.
  let estimate = { count: 0, bytes: 0 };
  const shardCount = opts.shard && opts.shard.count > 1 ? opts.shard.count : 1;
  let estimatedTotal = 0;

  const queue = new PQueue({
    concurrency,
    ...(opts.maxRate ? { intervalCap: Math.max(1, Math.ceil(opts.maxRate)), interval: 1000 } : {}),
  });
  const budget = new ByteBudget(opts.maxInflightBytes ?? 256 * 1024 * 1024);
  const references = new ReferenceChecker(meta);
  const retry: RetryPolicy = { ...DEFAULT_RETRY, ...opts.retry };
  // Failures held back never stall the walk (they are released as soon as
  // nothing else runs), so the threshold may exceed a small window: with
  // --concurrency 1 a single failing key is still logged, not taken for an outage.
  const threshold = opts.infrastructureThreshold ?? Math.max(3, Math.min(concurrency, 16));
  let infraStreak = 0;
  const heldInfra: { entry: WindowEntry<Slot>; slot: Slot }[] = [];

  const window = new InFlightWindow<Slot>(concurrency, resumedFrom, (entry) => {
    const slot = entry.value;
    if (!slot) return;
    tally(finalized, slot);
    const record = missingRecord(slot);
    if (record) log.write(record);
  });

  const stop = (reason: string) => {
    if (stopReason === undefined) {
      stopReason = reason;
      logger.error(`stopping: ${reason}`);
    }
    queue.clear();
    window.close();
  };

  const finish = (entry: WindowEntry<Slot>, row: BlobMeta, outcome: Outcome) => {
    const slot: Slot = { row, outcome };
    if (outcome.kind === 'failed' && outcome.infrastructure) {
      infraStreak++;
      heldInfra.push({ entry, slot });
      logger.warn(`blob failed: ${outcome.error}`, {
        key: row.key,
        id: row.id,
        ...(outcome.cause !== undefined ? { error: shortError(outcome.cause) } : {}),
      });
      if (infraStreak >= threshold) {
        stop(`${infraStreak} blobs in a row failed on the infrastructure: ${shortError(outcome.cause)}`);
      }
      return;
    }
    if (outcome.kind !== 'failed') {
      infraStreak = 0;
      releaseHeld();
    } else {
      logger.warn(`blob failed: ${outcome.error}`, {
        key: row.key,
        id: row.id,
        ...(outcome.cause !== undefined ? { error: shortError(outcome.cause) } : {}),
      });
    }
    tally(live, slot);
    window.finish(entry, slot);
  };

  // Infrastructure failures are held back until something succeeds again: if
  // the run then stops, they stay behind the mark and the rerun retries them.
  const releaseHeld = () => {
    while (heldInfra.length > 0 && stopReason === undefined) {
      const held = heldInfra.shift();
      if (!held) break;
      tally(live, held.slot);
      window.finish(held.entry, held.slot);
    }
  };

  let lastSaved = Date.now();
  let saving: Promise<void> | undefined;
  const checkpoint = async (status: RunState['status'], exitCode: number | null) => {
    while (saving) await saving;
    const p = (async () => {
      await log.flush();
      current.lowWaterMark = window.mark;
      current.counts = addCounts(baseCounts, finalized, (Date.now() - attemptStart) / 1000);
      current.status = status;
      current.exitCode = exitCode;
      current.updatedAt = new Date();
      if (status === 'completed') current.finishedAt = current.updatedAt;
      await meta.saveRun(current);
      lastSaved = Date.now();
    })();
    saving = p;
    try {
      await p;
    } finally {
      saving = undefined;
    }
  };

  let lastProgress = 0;
  const progress = (force = false) => {
    if (!opts.onProgress) return;
    const t = Date.now();
    if (!force && t - lastProgress < 200) return;
    lastProgress = t;
    const done = baseCounts.total + live.total;
    opts.onProgress({
      done,
      total: Math.max(estimatedTotal, done),
      bytes: baseCounts.bytes + live.bytes,
      counts: addCounts(baseCounts, live, (t - attemptStart) / 1000),
      lowWaterMark: window.mark,
    });
  };

  const ctxSignal = opts.hardSignal;
  let running = 0;
  const copyRow = async (entry: WindowEntry<Slot>, row: BlobMeta, checkNewFirst: boolean) => {
    const reserve = Math.min(row.contentLength, 32 * 1024 * 1024);
    await budget.acquire(reserve);
    running++;
    try {
      if (stopReason !== undefined) return;
      let outcome: Outcome | undefined;
      const ctx = {
        oldDb,
        newDb,
        references,
        meta,
        retry,
        ...(ctxSignal ? { signal: ctxSignal } : {}),
        onRetry: (key: string, attempt: number, err: unknown) =>
          logger.warn(`retrying blob (attempt ${attempt + 1} of ${retry.attempts})`, {
            key,
            error: shortError(err),
          }),
      };
      if (checkNewFirst && opts.replaceStale) {
        outcome = await withRetry(() => refreshStale(ctx, row), retry, {
          what: 'the check of the copy in the destination',
          ...(ctxSignal ? { signal: ctxSignal } : {}),
          onRetry: (err, attempt) => ctx.onRetry(row.key, attempt, err),
        });
        if (outcome?.kind === 'copied' && outcome.replaced) {
          logger.info('replaced a copy the metadata proves stale', { key: row.key });
        }
      } else if (checkNewFirst) outcome = await checkNew(newDb, row, meta);
      outcome ??= await copyBlob(ctx, row);
      if (outcome.kind === 'failed' && isInfrastructureError(outcome.cause)) outcome.infrastructure = true;
      finish(entry, row, outcome);
    } catch (err) {
      if (ctxSignal?.aborted) return;
      finish(entry, row, {
        kind: 'failed',
        error: shortError(err),
        cause: err,
        infrastructure: isInfrastructureError(err),
        retries: 0,
      });
    } finally {
      budget.release(reserve);
      running--;
      // Nothing else is running to confirm an outage: the held failures were
      // about their own blobs (and they may be all that blocks the window).
      if (running === 0) releaseHeld();
      progress();
    }
  };

  const onAbort = () => {
    interrupted = true;
    queue.clear();
    window.close();
    // A listing still running stops too (the run then ends as interrupted).
    void (listing ?? opts.snapshot)?.cancel();
  };
  for (const signal of [opts.signal, opts.hardSignal]) {
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
  }

  try {
    // What the new backend can do decides how each copy keeps no-overwrite,
    // and whether S3 → S3 copies server-side (the CLI's preflight asked already).
    await newDb.probeCapabilities?.({ copyFrom: oldDb }).catch((err: unknown) => {
      throw new InfrastructureLost(`probing ${dest} failed: ${shortError(err)}`, { cause: err });
    });
    // The estimate only sizes the progress bar: a row with an absurd size must
    // not stop the run (that row fails on its own, the rest are copied).
    estimate = await meta.estimate(types.length > 0 ? { types } : {}).catch((err: unknown) => {
      if (isInfrastructureError(err)) {
        throw new InfrastructureLost(`reading the metadata failed: ${shortError(err)}`, { cause: err });
      }
      logger.warn(`no estimate of the run's size (progress shows no total): ${shortError(err)}`);
      return { count: 0, bytes: 0 };
    });
    estimatedTotal = Math.ceil(estimate.count / shardCount);
    if (existence === 'list') {
      try {
        listing =
          opts.snapshot ??
          (await PresentIndex.start(newDb, {
            ...(opts.tempDir ? { tempDir: opts.tempDir } : {}),
            ...(opts.signal ? { signal: opts.signal } : {}),
          }));
        index = listing.index;
        listing.ready.then(
          (done) =>
            logger.info(`the listing snapshot of ${dest} is complete`, {
              keys: done.count,
              bytes: done.bytes,
            }),
          () => {},
        );
      } catch (err) {
        if (opts.signal?.aborted) throw err;
        logger.warn(
          `the listing snapshot of ${dest} could not be started; using a HEAD per blob instead: ${shortError(err)}`,
        );
        existence = 'head';
      }
    }
    opts.onStart?.({
      mode: opts.replaceStale ? 'rollback' : 'backfill',
      run,
      shard,
      log: log.path,
      resumedFrom,
      attempt: current.attempts,
      estimate: { count: estimatedTotal, bytes: Math.round(estimate.bytes / shardCount) },
      // While the listing runs, its figures come in their own line when it completes.
      snapshot: index?.complete ? { keys: index.count, bytes: index.bytes } : undefined,
    });
    const checkpointTimer = setInterval(() => {
      if (Date.now() - lastSaved >= (opts.checkpointIntervalMs ?? 2000) && !saving) {
        checkpoint('running', null).catch((err: unknown) =>
          stop(`saving the checkpoint failed: ${shortError(err)}`),
        );
      }
    }, 250);
    checkpointTimer.unref();
    try {
      const walk = meta.walk({
        afterId: resumedFrom,
        chunkSize,
        ...(types.length > 0 ? { types } : {}),
        ...(opts.shard && opts.shard.count > 1 ? { shard: opts.shard } : {}),
      });
      const nowMs = Date.now();
      try {
        for await (const chunk of walk) {
          if (interrupted || stopReason !== undefined) break;
          // What the snapshot says of this chunk's keys, and up to which key it said it.
          let answers = answer(index, chunk);
          for (const [i, row] of chunk.entries()) {
            await window.room();
            if (interrupted || stopReason !== undefined) break;
            if (index && !answers.covers(row.key)) {
              // The listing has not passed this key yet: wait for it (the copies
              // in flight go on), then ask again for the rest of the chunk.
              try {
                await index.waitListed(row.key);
              } catch (err) {
                if (interrupted || opts.signal?.aborted) break;
                if (isInfrastructureError(err))
                  throw new InfrastructureLost(`listing ${dest} failed: ${shortError(err)}`, {
                    cause: err,
                  });
                logger.warn(
                  `the listing of ${dest} failed; blobs it had not reached get a HEAD each instead: ${shortError(err)}`,
                );
                existence = 'head';
                index = undefined;
              }
              if (interrupted || stopReason !== undefined) break;
              answers = answer(index, chunk.slice(i));
            }
            const entry = window.enter(row.id);
            if (row.expiresOn && row.expiresOn.getTime() <= nowMs) {
              finish(entry, row, { kind: 'expired', retries: 0 });
              continue;
            }
            if (
              row.invalid !== undefined ||
              !Number.isSafeInteger(row.contentLength) ||
              row.contentLength < 0
            ) {
              finish(entry, row, {
                kind: 'failed',
                error: `invalid metadata row: ${row.invalid ?? `the size ${row.contentLength} is not a non-negative integer`}`,
                cause: undefined,
                infrastructure: false,
                retries: 0,
              });
              continue;
            }
            const size = answers.sizes.get(row.key);
            // A rollback looks into a present copy whose row has a sha256: its bytes may be stale.
            const judgeBytes = opts.replaceStale === true && row.sha256 !== null;
            if (size !== undefined && size === row.contentLength && !judgeBytes) {
              finish(entry, row, { kind: 'present', retries: 0 });
              continue;
            }
            // Absent from the snapshot: straight to the copy path (it never
            // overwrites). Present with another size, or no snapshot: ask the
            // new backend first.
            const checkFirst = size !== undefined || existence === 'head';
            queue.add(() => copyRow(entry, row, checkFirst)).catch(() => {});
          }
          progress();
        }
      } catch (err) {
        if (!(err instanceof InfrastructureLost)) {
          throw new InfrastructureLost(`reading the metadata failed: ${shortError(err)}`, { cause: err });
        }
        throw err;
      }
      await queue.onIdle();
      // A failure held back as a possible infrastructure loss, with nothing
      // after it to clear it: the run did not stop, so it is an ordinary failure.
      if (stopReason === undefined) releaseHeld();
    } finally {
      clearInterval(checkpointTimer);
    }
  } catch (err) {
    if (err instanceof InfrastructureLost) stop(err.message);
    else queue.clear();
    // Copies already running finish first (their reference recheck, their log
    // line), as when a failure streak stops the run: the process may exit next.
    await queue.onIdle().catch(() => {});
    if (!(err instanceof InfrastructureLost) && !interrupted) {
      await safeCheckpoint('failed', null);
      throw err;
    }
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    opts.hardSignal?.removeEventListener('abort', onAbort);
    await listing?.cancel().catch(() => {});
  }

  async function safeCheckpoint(status: RunState['status'], exitCode: number | null): Promise<boolean> {
    try {
      await checkpoint(status, exitCode);
      return true;
    } catch (err) {
      logger.error(`the checkpoint could not be saved (the previous one stands): ${shortError(err)}`);
      return false;
    } finally {
      await log.flush().catch(() => {});
    }
  }

  const end = await settleRun(
    { stopReason, interrupted, counts: addCounts(baseCounts, finalized, 0) },
    safeCheckpoint,
  );
  await log.close().catch(() => {});
  progress(true);
  return endSummary(current, end);
}

export interface RunEnd {
  status: BackfillStatus;
  exitCode: number;
  /** Why the run stopped, for the infrastructure status. */
  reason: string | undefined;
}

/**
 * How an attempt ended, saved as its checkpoint: infrastructure lost (exit 3),
 * interrupted (130), or completed (0, or 1 when blobs are missing or failed);
 * a final checkpoint that cannot be saved is infrastructure lost too.
 */
export async function settleRun(
  end: { stopReason: string | undefined; interrupted: boolean; counts: RunCounts },
  save: (status: RunState['status'], exitCode: number) => Promise<boolean>,
): Promise<RunEnd> {
  if (end.stopReason !== undefined) {
    await save('failed', EXIT_INFRA);
    return { status: 'infrastructure', exitCode: EXIT_INFRA, reason: end.stopReason };
  }
  if (end.interrupted) {
    await save('interrupted', EXIT_INTERRUPTED);
    return { status: 'interrupted', exitCode: EXIT_INTERRUPTED, reason: undefined };
  }
  const exitCode = end.counts.notFound + end.counts.failed > 0 ? EXIT_INCOMPLETE : EXIT_OK;
  if (await save('completed', exitCode)) return { status: 'completed', exitCode, reason: undefined };
  return {
    status: 'infrastructure',
    exitCode: EXIT_INFRA,
    reason: 'the final checkpoint could not be saved',
  };
}

/** The summary of an attempt that ended as `end` says. */
export function endSummary(state: RunState, end: RunEnd): BackfillSummary {
  const summary = summaryFromState(state, end.status, false);
  summary.exitCode = end.exitCode;
  if (end.reason !== undefined) summary.reason = end.reason;
  return summary;
}

/**
 * For a blob the snapshot says is in new with another size, or with
 * `--existence head`: `present` when new holds the metadata's size now, a
 * failure (never an overwrite) when it holds another, undefined when absent.
 */
export async function checkNew(
  newDb: BlobDB,
  row: Pick<BlobMeta, 'key' | 'contentLength'>,
  meta?: Pick<MetaStore, 'get'>,
): Promise<Outcome | undefined> {
  try {
    const info = await newDb.stat(row.key);
    if (info.size === row.contentLength) return { kind: 'present', retries: 0 };
    if (meta) {
      // The app may have rewritten the blob since the row was read.
      const fresh = await meta.get(row.key);
      if (!fresh) return { kind: 'deleted', retries: 0 };
      if (fresh.contentLength === info.size) return { kind: 'present', retries: 0 };
    }
    return {
      kind: 'failed',
      error: `size mismatch in the new backend: it holds ${info.size} bytes, the metadata says ${row.contentLength}; not overwritten`,
      cause: undefined,
      infrastructure: false,
      retries: 0,
    };
  } catch (err) {
    if (err instanceof BlobNotFoundError) return undefined;
    throw err;
  }
}

/** What the snapshot said of some keys: their sizes, and which keys that answer covers. */
interface Answers {
  sizes: Map<string, number>;
  covers(key: string): boolean;
}

/** Asks the snapshot (`undefined`: none, every key is covered and absent) about the rows' keys. */
function answer(index: PresentIndex | undefined, rows: readonly BlobMeta[]): Answers {
  if (!index) return { sizes: new Map(), covers: () => true };
  const complete = index.complete;
  const upTo = index.position;
  const sizes = index.lookup(rows.map((r) => r.key));
  return {
    sizes,
    covers: (key) => complete || (upTo !== undefined && compareKeys(key, upTo) <= 0),
  };
}

function tally(counts: RunCounts, slot: Slot): void {
  tallyOutcome(counts, slot.outcome);
}

/** Adds one blob's outcome to `counts`. */
export function tallyOutcome(counts: RunCounts, o: Outcome): void {
  counts.total++;
  counts.retries += o.retries;
  switch (o.kind) {
    case 'copied':
      counts.copied++;
      if (o.replaced) counts.replaced++;
      counts.bytes += o.bytes;
      break;
    case 'present':
      counts.present++;
      break;
    case 'notFound':
      counts.notFound++;
      break;
    case 'deleted':
      counts.deletedDuringMigration++;
      break;
    case 'expired':
      counts.expired++;
      break;
    case 'failed':
      counts.failed++;
      break;
  }
}

function missingRecord(slot: Slot): MissingRecord | undefined {
  const o = slot.outcome;
  if (o.kind !== 'notFound' && o.kind !== 'failed') return undefined;
  // A row without a key (NULL in an app's table) has nothing to look up later:
  // it is counted as failed and logged on stderr with its id, not in the log.
  if (slot.row.key === '') return undefined;
  return {
    id: slot.row.id,
    key: slot.row.key,
    type: slot.row.type,
    parentId: slot.row.parentId,
    error: o.kind === 'notFound' ? NOT_FOUND : o.error,
    at: new Date().toISOString(),
  };
}

export function addCounts(a: RunCounts, b: RunCounts, extraSeconds: number): RunCounts {
  return {
    total: a.total + b.total,
    copied: a.copied + b.copied,
    replaced: a.replaced + b.replaced,
    present: a.present + b.present,
    notFound: a.notFound + b.notFound,
    failed: a.failed + b.failed,
    deletedDuringMigration: a.deletedDuringMigration + b.deletedDuringMigration,
    expired: a.expired + b.expired,
    bytes: a.bytes + b.bytes,
    retries: a.retries + b.retries,
    seconds: a.seconds + b.seconds + extraSeconds,
  };
}

/** The summary a run's saved state stands for. */
export function summaryFromState(
  state: RunState,
  status: BackfillStatus,
  reprinted: boolean,
): BackfillSummary {
  const c = state.counts;
  const seconds = Math.round(c.seconds * 1000) / 1000;
  const exitCode =
    state.exitCode ??
    (status === 'completed' ? (c.notFound + c.failed > 0 ? EXIT_INCOMPLETE : EXIT_OK) : EXIT_INFRA);
  return {
    mode: state.options.replaceStale === true ? 'rollback' : 'backfill',
    run: state.name,
    shard: state.shard,
    status,
    exitCode,
    total: c.total,
    copied: c.copied,
    replaced: c.replaced,
    present: c.present,
    notFound: c.notFound,
    failed: c.failed,
    deletedDuringMigration: c.deletedDuringMigration,
    expired: c.expired,
    bytes: c.bytes,
    retries: c.retries,
    seconds,
    rate: seconds > 0 ? Math.round((c.total / seconds) * 10) / 10 : 0,
    logs: [...state.logs],
    attempts: state.attempts,
    lowWaterMark: state.lowWaterMark,
    reprinted,
  };
}

function sameList(a: unknown, b: unknown): boolean {
  return JSON.stringify(a ?? []) === JSON.stringify(b ?? []);
}

/** A resume with other types, shard or backends is refused (`RunStateError`, exit 2). */
export function refuseChangedOptions(run: string, state: RunState, wanted: Record<string, unknown>): void {
  const saved = state.options;
  const label = (v: unknown) =>
    Array.isArray(v) ? (v.length ? v.join(',') : '(all)') : v ? String(v) : '(none)';
  const problems: string[] = [];
  if (!sameList(saved.types, wanted.types)) {
    problems.push(`--types ${label(saved.types)} then, ${label(wanted.types)} now`);
  }
  if ((saved.replaceStale === true) !== (wanted.replaceStale === true)) {
    problems.push(
      `it was ${saved.replaceStale ? 'a rollback' : 'a backfill'} then, ${wanted.replaceStale ? 'a rollback' : 'a backfill'} now`,
    );
  }
  if ((saved.shard ?? '') !== wanted.shard)
    problems.push(`--shard ${label(saved.shard)} then, ${label(wanted.shard)} now`);
  for (const side of ['old', 'new'] as const) {
    if (saved[side] && wanted[side] && saved[side] !== wanted[side]) {
      problems.push(`the ${side} backend was ${String(saved[side])}, now ${String(wanted[side])}`);
    }
  }
  if (problems.length > 0) {
    throw new RunStateError(
      `run "${run}" was started with other options (${problems.join('; ')}); resume it with the same options, pick another --run name, or start it over with --reset`,
    );
  }
}

/** A run another live process is running (here, or checkpointed lately elsewhere) is refused. */
export function refuseLiveOwner(run: string, state: RunState): void {
  if (state.status !== 'running') return;
  const owner = state.extra.owner as { host?: unknown; pid?: unknown } | undefined;
  if (!owner || typeof owner.pid !== 'number') return;
  if (owner.host === hostname()) {
    if (owner.pid === process.pid || !processAlive(owner.pid)) return;
    throw new RunStateError(
      `run "${run}" is being run right now by process ${owner.pid} on this host; wait for it, stop it, or pick another --run name`,
    );
  }
  const ageMs = Date.now() - state.updatedAt.getTime();
  if (ageMs < 60_000) {
    throw new RunStateError(
      `run "${run}" was checkpointed ${Math.round(ageMs / 1000)} s ago by a process on ${String(owner.host)}; if that process is gone, retry in a minute`,
    );
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function dryRun(
  opts: BackfillOptions,
  run: string,
  shard: string,
  types: string[],
  chunkSize: number,
): Promise<BackfillSummary> {
  const started = Date.now();
  const counts = emptyCounts();
  let toCopy = 0;
  let toCopyBytes = 0;
  const index = await (opts.snapshot?.ready ??
    PresentIndex.build(opts.newDb, opts.tempDir ? { tempDir: opts.tempDir } : {}));
  try {
    const nowMs = Date.now();
    for await (const chunk of opts.meta.walk({
      chunkSize,
      ...(types.length > 0 ? { types } : {}),
      ...(opts.shard && opts.shard.count > 1 ? { shard: opts.shard } : {}),
    })) {
      const present = index.lookup(chunk.map((r) => r.key));
      for (const row of chunk) {
        counts.total++;
        if (row.expiresOn && row.expiresOn.getTime() <= nowMs) counts.expired++;
        else if (present.get(row.key) === row.contentLength) counts.present++;
        else {
          toCopy++;
          toCopyBytes += row.contentLength;
        }
      }
    }
  } finally {
    await index.close();
  }
  const seconds = (Date.now() - started) / 1000;
  return {
    mode: opts.replaceStale ? 'rollback' : 'backfill',
    run,
    shard,
    status: 'dry-run',
    exitCode: EXIT_OK,
    total: counts.total,
    copied: 0,
    replaced: 0,
    present: counts.present,
    notFound: 0,
    failed: 0,
    deletedDuringMigration: 0,
    expired: counts.expired,
    bytes: 0,
    retries: 0,
    seconds,
    rate: 0,
    logs: [],
    attempts: 0,
    lowWaterMark: 0,
    reprinted: false,
    toCopy,
    toCopyBytes,
  };
}
