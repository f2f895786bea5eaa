/**
 * backfill: copy every blob the metadata references and the new backend
 * lacks. Resumable (a run's low-water mark is checkpointed in the metadata
 * database), parallel (p-queue), shardable (`id % N = I`), bounded in memory
 * (a byte budget for blobs in flight), and safe against the live app (see
 * `copy.ts`).
 *
 * The run reads like its runbook: load the run (`loadRun`), start an attempt
 * (`RunSession`), prepare (probe the destination, estimate, start the
 * listing snapshot), walk the metadata and triage each row (`planRow`), copy
 * what needs it (`runTask`), and settle into the summary.
 */
import PQueue from 'p-queue';
import type { BackfillRunOptions, MetaStore, RunState, ShardSpec } from '../contract/meta.js';
import { emptyCounts } from '../contract/meta.js';
import type { BlobDB, BlobMeta } from '../contract/types.js';
import { DEFAULT_RETRY, ReferenceChecker, type RetryPolicy } from './copy.js';
import { isInfrastructureError, shortError } from './errors.js';
import { answer, type PlanRules, planRow } from './plan.js';
import { PresentIndex, type SnapshotBuild } from './present-index.js';
import {
  type BackfillProgress,
  type BackfillStartInfo,
  type BackfillSummary,
  type EngineLogger,
  EXIT_OK,
  InfrastructureLost,
  loadRun,
  RunSession,
  shardLabel,
  silentLogger,
} from './session.js';
import { missingRecord, type Outcome, runTask, type TaskContext, tallyOutcome } from './task.js';
import { ByteBudget, InFlightWindow, type WindowEntry } from './window.js';

export {
  addCounts,
  type BackfillProgress,
  type BackfillStartInfo,
  type BackfillStatus,
  type BackfillSummary,
  type EngineLogger,
  EXIT_INCOMPLETE,
  EXIT_INFRA,
  EXIT_INTERRUPTED,
  EXIT_OK,
  endSummary,
  freshRunState,
  type RunEnd,
  refuseChangedOptions,
  refuseLiveOwner,
  settleRun,
  shardLabel,
  silentLogger,
  summaryFromState,
} from './session.js';
export { checkNew, type Outcome, tallyOutcome } from './task.js';
export { emptyCounts };

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

interface Slot {
  row: BlobMeta;
  outcome: Outcome;
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
  const runOptions: BackfillRunOptions = {
    types,
    shard,
    old: opts.identity?.old ?? null,
    new: opts.identity?.new ?? null,
    ...(opts.replaceStale ? { replaceStale: true } : {}),
  };
  if (opts.dryRun) return dryRun(opts, run, shard, types, Math.max(1, opts.chunkSize ?? 1000));
  const loaded = await loadRun(opts.meta, run, shard, runOptions, opts.reset ? { reset: true } : {});
  if (loaded.kind === 'reprint') return loaded.summary;
  const attempt = await BackfillAttempt.start(opts, run, runOptions, loaded.state);
  return attempt.run();
}

/** One attempt of a local backfill: the walk, the in-flight window, the copies. */
class BackfillAttempt {
  readonly #o: BackfillOptions;
  readonly #s: RunSession;
  readonly #logger: EngineLogger;
  readonly #types: string[];
  /** Where blobs go, for messages: a rollback writes into the old backend. */
  readonly #dest: string;
  readonly #queue: PQueue;
  readonly #budget: ByteBudget;
  readonly #window: InFlightWindow<Slot>;
  readonly #task: TaskContext;
  readonly #rules: PlanRules;
  /**
   * Consecutive infrastructure failures that stop the run. Failures held back
   * never stall the walk (they are released as soon as nothing else runs), so
   * the threshold may exceed a small window: with --concurrency 1 a single
   * failing key is still logged, not taken for an outage.
   */
  readonly #threshold: number;
  #infraStreak = 0;
  readonly #held: { entry: WindowEntry<Slot>; slot: Slot }[] = [];
  #running = 0;
  #listing: SnapshotBuild | undefined;
  #index: PresentIndex | undefined;
  #estimate = { count: 0, bytes: 0 };

  private constructor(opts: BackfillOptions, session: RunSession, types: string[]) {
    this.#o = opts;
    this.#s = session;
    this.#types = types;
    this.#logger = opts.logger ?? silentLogger;
    this.#dest = opts.replaceStale ? 'the old backend (the destination of the rollback)' : 'the new backend';
    const concurrency = Math.max(1, opts.concurrency ?? 16);
    this.#queue = new PQueue({
      concurrency,
      ...(opts.maxRate ? { intervalCap: Math.max(1, Math.ceil(opts.maxRate)), interval: 1000 } : {}),
    });
    this.#budget = new ByteBudget(opts.maxInflightBytes ?? 256 * 1024 * 1024);
    const retry: RetryPolicy = { ...DEFAULT_RETRY, ...opts.retry };
    this.#task = {
      oldDb: opts.oldDb,
      newDb: opts.newDb,
      references: new ReferenceChecker(opts.meta),
      meta: opts.meta,
      retry,
      ...(opts.hardSignal ? { signal: opts.hardSignal } : {}),
      logger: this.#logger,
      ...(opts.replaceStale ? { replaceStale: true } : {}),
    };
    this.#threshold = opts.infrastructureThreshold ?? Math.max(3, Math.min(concurrency, 16));
    this.#window = new InFlightWindow<Slot>(concurrency, session.resumedFrom, (entry) =>
      this.#finalize(entry),
    );
    this.#rules = {
      nowMs: Date.now(),
      refuse: 'row',
      judgeBytes: opts.replaceStale === true,
      headEach: (opts.existence ?? 'list') === 'head',
    };
  }

  /** Starts the attempt (its state saved as running, its missing-blob log open). */
  static async start(
    opts: BackfillOptions,
    run: string,
    runOptions: BackfillRunOptions,
    resumed: RunState | undefined,
  ): Promise<BackfillAttempt> {
    let self: BackfillAttempt | undefined;
    const session = await RunSession.begin({
      meta: opts.meta,
      run,
      ...(opts.shard ? { shard: opts.shard } : {}),
      runOptions,
      resumed,
      ...(opts.logDir !== undefined ? { logDir: opts.logDir } : {}),
      logger: opts.logger ?? silentLogger,
      ...(opts.checkpointIntervalMs !== undefined ? { checkpointIntervalMs: opts.checkpointIntervalMs } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      mark: () => (self ? self.#window.mark : (resumed?.lowWaterMark ?? 0)),
      onStop: (reason, first) => {
        if (self) self.#onStop(reason, first);
      },
    });
    self = new BackfillAttempt(opts, session, runOptions.types);
    return self;
  }

  /** Runs the attempt to its end and resolves with its summary. */
  async run(): Promise<BackfillSummary> {
    const s = this.#s;
    s.watchSignals(this.#o.signal, this.#o.hardSignal, () => this.#onAbort());
    try {
      await this.#prepare();
      s.startCheckpoints();
      try {
        await this.#walk();
        await this.#queue.onIdle();
        // A failure held back as a possible infrastructure loss, with nothing
        // after it to clear it: the run did not stop, so it is an ordinary failure.
        if (s.stopReason === undefined) this.#releaseHeld();
      } finally {
        s.stopCheckpoints();
      }
    } catch (err) {
      if (err instanceof InfrastructureLost) s.stop(err.message);
      else this.#queue.clear();
      // Copies already running finish first (their reference recheck, their log
      // line), as when a failure streak stops the run: the process may exit next.
      await this.#queue.onIdle().catch(() => {});
      if (!(err instanceof InfrastructureLost) && !s.interrupted) {
        await s.safeCheckpoint('failed', null);
        throw err;
      }
    } finally {
      s.unwatchSignals();
      await this.#listing?.cancel().catch(() => {});
    }
    return s.summary(await s.settle());
  }

  /** Stop dispatching: nothing new starts, the window no longer waits. */
  #onStop(reason: string, first: boolean): void {
    if (first) this.#logger.error(`stopping: ${reason}`);
    this.#queue.clear();
    this.#window.close();
  }

  #onAbort(): void {
    this.#queue.clear();
    this.#window.close();
    // A listing still running stops too (the run then ends as interrupted).
    void (this.#listing ?? this.#o.snapshot)?.cancel();
  }

  /** Probes the destination, estimates the run, starts the listing snapshot; tells the caller. */
  async #prepare(): Promise<void> {
    const { meta, newDb, oldDb } = this.#o;
    // What the new backend can do decides how each copy keeps no-overwrite,
    // and whether S3 → S3 copies server-side (the CLI's preflight asked already).
    await newDb.probeCapabilities?.({ copyFrom: oldDb }).catch((err: unknown) => {
      throw new InfrastructureLost(`probing ${this.#dest} failed: ${shortError(err)}`, { cause: err });
    });
    // The estimate only sizes the progress bar: a row with an absurd size must
    // not stop the run (that row fails on its own, the rest are copied).
    const types = this.#types;
    this.#estimate = await meta.estimate(types.length > 0 ? { types } : {}).catch((err: unknown) => {
      if (isInfrastructureError(err)) {
        throw new InfrastructureLost(`reading the metadata failed: ${shortError(err)}`, { cause: err });
      }
      this.#logger.warn(`no estimate of the run's size (progress shows no total): ${shortError(err)}`);
      return { count: 0, bytes: 0 };
    });
    const shardCount = this.#o.shard && this.#o.shard.count > 1 ? this.#o.shard.count : 1;
    this.#s.estimatedTotal = Math.ceil(this.#estimate.count / shardCount);
    if (!this.#rules.headEach) await this.#startListing();
    const index = this.#index;
    this.#o.onStart?.({
      mode: this.#o.replaceStale ? 'rollback' : 'backfill',
      run: this.#s.current.name,
      shard: this.#s.current.shard,
      log: this.#s.log.path,
      resumedFrom: this.#s.resumedFrom,
      attempt: this.#s.current.attempts,
      estimate: { count: this.#s.estimatedTotal, bytes: Math.round(this.#estimate.bytes / shardCount) },
      // While the listing runs, its figures come in their own line when it completes.
      snapshot: index?.complete ? { keys: index.count, bytes: index.bytes } : undefined,
    });
  }

  /** The listing snapshot of the destination (the CLI's, or one started now); a HEAD per blob without it. */
  async #startListing(): Promise<void> {
    const o = this.#o;
    try {
      const listing =
        o.snapshot ??
        (await PresentIndex.start(o.newDb, {
          ...(o.tempDir ? { tempDir: o.tempDir } : {}),
          ...(o.signal ? { signal: o.signal } : {}),
        }));
      this.#listing = listing;
      this.#index = listing.index;
      listing.ready.then(
        (done) =>
          this.#logger.info(`the listing snapshot of ${this.#dest} is complete`, {
            keys: done.count,
            bytes: done.bytes,
          }),
        () => {},
      );
    } catch (err) {
      if (o.signal?.aborted) throw err;
      this.#logger.warn(
        `the listing snapshot of ${this.#dest} could not be started; using a HEAD per blob instead: ${shortError(err)}`,
      );
      this.#rules.headEach = true;
    }
  }

  /** Walks the metadata from the mark, chunk by chunk, until the end or a stop. */
  async #walk(): Promise<void> {
    const o = this.#o;
    const types = this.#types;
    const walk = o.meta.walk({
      afterId: this.#s.resumedFrom,
      chunkSize: Math.max(1, o.chunkSize ?? 1000),
      ...(types.length > 0 ? { types } : {}),
      ...(o.shard && o.shard.count > 1 ? { shard: o.shard } : {}),
    });
    this.#rules.nowMs = Date.now();
    try {
      for await (const chunk of walk) {
        if (this.#s.stopping) break;
        await this.#dispatchChunk(chunk);
        this.#s.progress();
      }
    } catch (err) {
      if (!(err instanceof InfrastructureLost)) {
        throw new InfrastructureLost(`reading the metadata failed: ${shortError(err)}`, { cause: err });
      }
      throw err;
    }
  }

  /** Triages a chunk's rows in id order, each once the window has room for it. */
  async #dispatchChunk(chunk: BlobMeta[]): Promise<void> {
    // What the snapshot says of this chunk's keys, and up to which key it said it.
    let answers = answer(this.#index, chunk);
    for (const [i, row] of chunk.entries()) {
      await this.#window.room();
      if (this.#s.stopping) break;
      if (this.#index && !answers.covers(row.key)) {
        // The listing has not passed this key yet: wait for it (the copies
        // in flight go on), then ask again for the rest of the chunk.
        if (!(await this.#waitListed(this.#index, row.key))) break;
        answers = answer(this.#index, chunk.slice(i));
      }
      this.#dispatch(this.#window.enter(row.id), row, answers.sizes.get(row.key));
    }
  }

  /** Waits until the listing passed `key`; resolves false when the run stops meanwhile. */
  async #waitListed(index: PresentIndex, key: string): Promise<boolean> {
    try {
      await index.waitListed(key);
    } catch (err) {
      if (this.#s.interrupted || this.#o.signal?.aborted) return false;
      if (isInfrastructureError(err)) {
        throw new InfrastructureLost(`listing ${this.#dest} failed: ${shortError(err)}`, { cause: err });
      }
      this.#logger.warn(
        `the listing of ${this.#dest} failed; blobs it had not reached get a HEAD each instead: ${shortError(err)}`,
      );
      this.#rules.headEach = true;
      this.#index = undefined;
    }
    return !this.#s.stopping;
  }

  /** Settles a row the plan decides at once, or queues its copy. */
  #dispatch(entry: WindowEntry<Slot>, row: BlobMeta, listed: number | undefined): void {
    const plan = planRow(row, listed, this.#rules);
    switch (plan.kind) {
      case 'expired':
        this.#finish(entry, row, { kind: 'expired', retries: 0 });
        return;
      case 'invalid':
        this.#finish(entry, row, {
          kind: 'failed',
          error: plan.error,
          cause: undefined,
          infrastructure: false,
          retries: 0,
        });
        return;
      case 'present':
        this.#finish(entry, row, { kind: 'present', retries: 0 });
        return;
      case 'copy':
        this.#queue.add(() => this.#copyRow(entry, row, plan.check)).catch(() => {});
    }
  }

  /** One copy within the byte budget; its outcome finishes the row. */
  async #copyRow(entry: WindowEntry<Slot>, row: BlobMeta, check: boolean): Promise<void> {
    const reserve = Math.min(row.contentLength, 32 * 1024 * 1024);
    await this.#budget.acquire(reserve);
    this.#running++;
    try {
      if (this.#s.stopReason !== undefined) return;
      // Rejects only when the copies are abandoned (a second Ctrl-C): the row stays unfinished.
      const outcome = await runTask(this.#task, row, check).catch(() => undefined);
      if (outcome) this.#finish(entry, row, outcome);
    } finally {
      this.#budget.release(reserve);
      this.#running--;
      // Nothing else is running to confirm an outage: the held failures were
      // about their own blobs (and they may be all that blocks the window).
      if (this.#running === 0) this.#releaseHeld();
      this.#s.progress();
    }
  }

  /** A row is finished; an infrastructure failure is held back (see `#releaseHeld`). */
  #finish(entry: WindowEntry<Slot>, row: BlobMeta, outcome: Outcome): void {
    const slot: Slot = { row, outcome };
    if (outcome.kind === 'failed' && outcome.infrastructure) {
      this.#infraStreak++;
      this.#held.push({ entry, slot });
      this.#warnFailed(row, outcome);
      if (this.#infraStreak >= this.#threshold) {
        this.#s.stop(
          `${this.#infraStreak} blobs in a row failed on the infrastructure: ${shortError(outcome.cause)}`,
        );
      }
      return;
    }
    if (outcome.kind !== 'failed') {
      this.#infraStreak = 0;
      this.#releaseHeld();
    } else this.#warnFailed(row, outcome);
    tallyOutcome(this.#s.live, outcome);
    this.#window.finish(entry, slot);
  }

  #warnFailed(row: BlobMeta, outcome: Extract<Outcome, { kind: 'failed' }>): void {
    this.#logger.warn(`blob failed: ${outcome.error}`, {
      key: row.key,
      id: row.id,
      ...(outcome.cause !== undefined ? { error: shortError(outcome.cause) } : {}),
    });
  }

  /**
   * Infrastructure failures are held back until something succeeds again: if
   * the run then stops, they stay behind the mark and the rerun retries them.
   */
  #releaseHeld(): void {
    while (this.#held.length > 0 && this.#s.stopReason === undefined) {
      const held = this.#held.shift();
      if (!held) break;
      tallyOutcome(this.#s.live, held.slot.outcome);
      this.#window.finish(held.entry, held.slot);
    }
  }

  /** The mark passed a row: it counts in the checkpoint, its log record is written. */
  #finalize(entry: WindowEntry<Slot>): void {
    const slot = entry.value;
    if (!slot) return;
    tallyOutcome(this.#s.finalized, slot.outcome);
    // A row without a key (NULL in an app's table) has nothing to look up later:
    // it is counted as failed and logged on stderr with its id, not in the log.
    if (slot.row.key === '') return;
    const record = missingRecord(slot.row, slot.outcome);
    if (record) this.#s.log.write(record);
  }
}

/** What a run would do: the rows the snapshot lacks, counted; nothing written. */
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
    const rules: PlanRules = { nowMs: Date.now(), refuse: 'none', headEach: false };
    for await (const chunk of opts.meta.walk({
      chunkSize,
      ...(types.length > 0 ? { types } : {}),
      ...(opts.shard && opts.shard.count > 1 ? { shard: opts.shard } : {}),
    })) {
      const present = index.lookup(chunk.map((r) => r.key));
      for (const row of chunk) {
        counts.total++;
        const plan = planRow(row, present.get(row.key), rules);
        if (plan.kind === 'expired') counts.expired++;
        else if (plan.kind === 'present') counts.present++;
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
