/**
 * The run lifecycle shared by a local backfill (`backfill.ts`) and the
 * producer of a scale-out one (`queue/producer.ts`): the saved state is
 * loaded, refused (other options, a live owner), reset or reprinted; an
 * attempt starts (its missing-blob log, its owner); the low-water mark and
 * the cumulative counts are checkpointed; progress is throttled; signals and
 * a lost infrastructure stop it; it settles into the final summary.
 */
import { hostname } from 'node:os';
import { RunStateError } from '../contract/errors.js';
import {
  type BackfillRunOptions,
  emptyCounts,
  type MetaStore,
  type RunCounts,
  type RunExtra,
  type RunOptions,
  type RunState,
  type ShardSpec,
} from '../contract/meta.js';
import { shortError } from './errors.js';
import { MissingLogWriter } from './missing-log.js';

/** The few logger methods the engine uses (winston's logger fits). */
export interface EngineLogger {
  info(message: string, meta?: Record<string, unknown>): unknown;
  warn(message: string, meta?: Record<string, unknown>): unknown;
  error(message: string, meta?: Record<string, unknown>): unknown;
}

export const silentLogger: EngineLogger = { info() {}, warn() {}, error() {} };

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

/** A run's outcome: its cumulative counts (`RunCounts`) and how it ended. */
export interface BackfillSummary extends RunCounts {
  /** `rollback` for a run that replaces stale destination copies (`replaceStale`). */
  mode: 'backfill' | 'rollback';
  run: string;
  shard: string;
  status: BackfillStatus;
  exitCode: number;
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

/**
 * The run cannot go on: the metadata database, the destination, or the
 * queue is gone. The run checkpoints what it finished and exits 3; the
 * message says what was lost.
 */
export class InfrastructureLost extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'InfrastructureLost';
  }
}

/** The state of a run that has not started yet. */
export function freshRunState(name: string, shard: string, options: RunOptions): RunState {
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

function sameList(a: readonly string[] | null | undefined, b: readonly string[] | null | undefined): boolean {
  const x = a ?? [];
  const y = b ?? [];
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** A resume with other types, shard or backends is refused (`RunStateError`, exit 2). */
export function refuseChangedOptions(run: string, state: RunState, wanted: RunOptions): void {
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
  const owner = state.extra.owner;
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

/** What loading a run found: the state to resume (none: a fresh run), or the summary of a completed one. */
export type LoadedRun =
  | { kind: 'resume'; state: RunState | undefined }
  | { kind: 'reprint'; summary: BackfillSummary };

/**
 * Loads the run's saved state: `--reset` forgets it (never while a live
 * process runs it; `onReset` cleans up after the forgotten state), other
 * options are refused, a completed run is reprinted, a run a live process
 * holds is refused.
 */
export async function loadRun(
  meta: MetaStore,
  name: string,
  shard: string,
  wanted: BackfillRunOptions,
  reset: { reset?: boolean; onReset?: (forgotten: RunState) => Promise<void> },
): Promise<LoadedRun> {
  let state = await meta.getRun(name, shard);
  if (state && reset.reset) {
    // --reset forgets a run, never one that is being run right now.
    refuseLiveOwner(name, state);
    await meta.deleteRun(name, shard);
    await reset.onReset?.(state);
    state = undefined;
  }
  if (state) {
    refuseChangedOptions(name, state, wanted);
    if (state.status === 'completed')
      return { kind: 'reprint', summary: summaryFromState(state, 'completed', true) };
    refuseLiveOwner(name, state);
  }
  return { kind: 'resume', state };
}

export interface RunSessionOptions {
  meta: MetaStore;
  run: string;
  shard?: ShardSpec;
  /** The options a fresh run is saved with. */
  runOptions: BackfillRunOptions;
  /** The saved state this attempt resumes (`loadRun`); undefined: a fresh run. */
  resumed: RunState | undefined;
  /** Extra data this attempt saves beside its owner (a scale-out run's queue). */
  extra?: (base: RunState) => RunExtra;
  logDir?: string;
  logger: EngineLogger;
  checkpointIntervalMs?: number;
  onProgress?: (p: BackfillProgress) => void;
  /** The low-water mark to checkpoint now. */
  mark: () => number;
  /** The blobs finished for the progress shown: counts, and rows done within unfinished work. */
  live?: () => { counts: RunCounts; inFlight: number };
  /** Called when the run stops for a lost infrastructure (`first`: the first reason). */
  onStop?: (reason: string, first: boolean) => void;
  /** Called before each checkpoint is saved (to add to the state), and after. */
  beforeSave?: (state: RunState) => void;
  afterSave?: () => Promise<void>;
}

/** One attempt of a run, from its start to its summary. */
export class RunSession {
  readonly current: RunState;
  readonly log: MissingLogWriter;
  /** Where this attempt started: every blob with an id at or below is finished. */
  readonly resumedFrom: number;
  readonly attemptStart = Date.now();
  /** The counts of earlier attempts. */
  readonly baseCounts: RunCounts;
  /** This attempt's blobs passed by the mark (checkpointed). */
  readonly finalized = emptyCounts();
  /** This attempt's blobs finished (shown as progress). */
  readonly live = emptyCounts();
  /** Estimated blobs in the run (sizes the progress bar). */
  estimatedTotal = 0;
  #stopReason: string | undefined;
  #interrupted = false;
  #abandoned = false;
  #lastSaved = Date.now();
  #saving: Promise<void> | undefined;
  #lastProgress = 0;
  #timer: NodeJS.Timeout | undefined;
  #unwatch: (() => void) | undefined;
  readonly #o: RunSessionOptions;

  private constructor(o: RunSessionOptions, current: RunState, log: MissingLogWriter, base: RunState) {
    this.#o = o;
    this.current = current;
    this.log = log;
    this.resumedFrom = base.lowWaterMark;
    this.baseCounts = { ...base.counts };
  }

  /** Starts an attempt: its missing-blob log, its state saved as `running` with this process as owner. */
  static async begin(o: RunSessionOptions): Promise<RunSession> {
    const now = new Date();
    const base = o.resumed ?? freshRunState(o.run, shardLabel(o.shard), o.runOptions);
    const log = await MissingLogWriter.create(o.logDir ?? 'blobshift-logs', {
      run: o.run,
      ...(o.shard ? { shard: o.shard } : {}),
    });
    const current: RunState = {
      ...base,
      status: 'running',
      attempts: base.attempts + 1,
      logs: [...base.logs, log.path],
      exitCode: null,
      updatedAt: now,
      finishedAt: null,
      extra: { ...base.extra, owner: { host: hostname(), pid: process.pid }, ...o.extra?.(base) },
    };
    await o.meta.saveRun(current);
    return new RunSession(o, current, log, base);
  }

  /** Why the run stopped on a lost infrastructure; undefined while it goes on. */
  get stopReason(): string | undefined {
    return this.#stopReason;
  }

  /** A signal asked the run to stop. */
  get interrupted(): boolean {
    return this.#interrupted;
  }

  /** The second signal: work in flight is abandoned too. */
  get abandoned(): boolean {
    return this.#abandoned;
  }

  /** The run stops dispatching: interrupted, or infrastructure lost. */
  get stopping(): boolean {
    return this.#interrupted || this.#stopReason !== undefined;
  }

  /** Stops the run for a lost infrastructure; the first reason is the one reported. */
  stop(reason: string): void {
    const first = this.#stopReason === undefined;
    if (first) this.#stopReason = reason;
    this.#o.onStop?.(reason, first);
  }

  /**
   * Listens to the stop signals: `signal` interrupts (nothing new starts),
   * `hardSignal` abandons work in flight too. `onInterrupt` is called once per
   * signal, at once when it fired already.
   */
  watchSignals(
    signal: AbortSignal | undefined,
    hardSignal: AbortSignal | undefined,
    onInterrupt: (hard: boolean) => void,
  ): void {
    const onSoft = () => {
      this.#interrupted = true;
      onInterrupt(false);
    };
    const onHard = () => {
      this.#interrupted = true;
      this.#abandoned = true;
      onInterrupt(true);
    };
    if (signal?.aborted) onSoft();
    else signal?.addEventListener('abort', onSoft, { once: true });
    if (hardSignal?.aborted) onHard();
    else hardSignal?.addEventListener('abort', onHard, { once: true });
    this.#unwatch = () => {
      signal?.removeEventListener('abort', onSoft);
      hardSignal?.removeEventListener('abort', onHard);
    };
  }

  unwatchSignals(): void {
    this.#unwatch?.();
    this.#unwatch = undefined;
  }

  /** Saves the checkpoint: the mark, the counts (earlier attempts + finalized), the status. */
  async checkpoint(status: RunState['status'], exitCode: number | null): Promise<void> {
    while (this.#saving) await this.#saving;
    const p = this.#save(status, exitCode);
    this.#saving = p;
    try {
      await p;
    } finally {
      this.#saving = undefined;
    }
  }

  async #save(status: RunState['status'], exitCode: number | null): Promise<void> {
    const current = this.current;
    await this.log.flush();
    current.lowWaterMark = this.#o.mark();
    current.counts = addCounts(this.baseCounts, this.finalized, (Date.now() - this.attemptStart) / 1000);
    current.status = status;
    current.exitCode = exitCode;
    current.updatedAt = new Date();
    this.#o.beforeSave?.(current);
    if (status === 'completed') current.finishedAt = current.updatedAt;
    await this.#o.meta.saveRun(current);
    this.#lastSaved = Date.now();
    await this.#o.afterSave?.();
  }

  /** A checkpoint whose failure is logged, not thrown: resolves whether it was saved. */
  async safeCheckpoint(status: RunState['status'], exitCode: number | null): Promise<boolean> {
    try {
      await this.checkpoint(status, exitCode);
      return true;
    } catch (err) {
      this.#o.logger.error(`the checkpoint could not be saved (the previous one stands): ${shortError(err)}`);
      return false;
    } finally {
      await this.log.flush().catch(() => {});
    }
  }

  /** Saves a `running` checkpoint every interval; one that fails stops the run. */
  startCheckpoints(): void {
    this.#timer = setInterval(() => this.checkpointIfDue(), 250);
    this.#timer.unref();
  }

  /** Saves a `running` checkpoint when the last one is older than the interval. */
  checkpointIfDue(): void {
    if (Date.now() - this.#lastSaved >= (this.#o.checkpointIntervalMs ?? 2000) && !this.#saving) {
      this.checkpoint('running', null).catch((err: unknown) =>
        this.stop(`saving the checkpoint failed: ${shortError(err)}`),
      );
    }
  }

  stopCheckpoints(): void {
    clearInterval(this.#timer);
  }

  /** Reports progress, at most every 200 ms unless forced. */
  progress(force = false): void {
    const onProgress = this.#o.onProgress;
    if (!onProgress) return;
    const t = Date.now();
    if (!force && t - this.#lastProgress < 200) return;
    this.#lastProgress = t;
    const { counts, inFlight } = this.#o.live?.() ?? { counts: this.live, inFlight: 0 };
    const done = this.baseCounts.total + counts.total + inFlight;
    onProgress({
      done,
      total: Math.max(this.estimatedTotal, done),
      bytes: this.baseCounts.bytes + counts.bytes,
      counts: addCounts(this.baseCounts, counts, (t - this.attemptStart) / 1000),
      lowWaterMark: this.#o.mark(),
    });
  }

  /** Ends the attempt: the final checkpoint says how (`settleRun`); the log is closed. */
  async settle(): Promise<RunEnd> {
    const end = await settleRun(
      {
        stopReason: this.#stopReason,
        interrupted: this.#interrupted,
        counts: addCounts(this.baseCounts, this.finalized, 0),
      },
      (status, exitCode) => this.safeCheckpoint(status, exitCode),
    );
    await this.log.close().catch(() => {});
    return end;
  }

  /** The summary of the settled attempt (the last progress shown first). */
  summary(end: RunEnd): BackfillSummary {
    this.progress(true);
    return endSummary(this.current, end);
  }
}
