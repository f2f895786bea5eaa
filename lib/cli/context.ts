/**
 * What every data command does first: load the config, open the metadata and
 * the backends it needs, run the preflight, and hand back one object that
 * closes everything. The subcommand scripts stay thin on top of it.
 */
import type { BackendConfig, BlobShiftConfig, LoadedConfig } from '../config/index.js';
import { AbortedError, ConfigError, PreflightError } from '../contract/errors.js';
import type { MetaStore } from '../contract/meta.js';
import { redact, redactString } from '../contract/redact.js';
import type { BlobDB } from '../contract/types.js';
import { shortError } from '../engine/errors.js';
import type { SnapshotBuild } from '../engine/present-index.js';
import { isKnexNoise } from '../meta/index.js';
import { DEFAULTS } from './args.js';
import type { LogFormat, Logger } from './log.js';
import { oneLine } from './run.js';
import { pendingSignal, throwIfInterrupted } from './signals.js';

export interface CommandContext {
  loaded: LoadedConfig;
  config: BlobShiftConfig;
  /** The config as validated, secrets redacted: what may be printed. */
  printable: unknown;
  meta: MetaStore;
  oldDb: BlobDB | undefined;
  newDb: BlobDB | undefined;
  /** The listing snapshot of the new backend, started before the preflight (`snapshot: true`). */
  snapshot: SnapshotBuild | undefined;
  /** Printable names (no secrets) of the backends and the database. */
  names: { old: string | undefined; new: string | undefined; meta: string };
  logger: Logger;
  close(): Promise<void>;
}

export interface ContextOptions {
  /** `-c FILE` (default `./blobshift.config.json`). */
  config?: string;
  requireOld?: boolean;
  requireNew?: boolean;
  /** Probe a write on the new backend during the preflight. */
  write?: boolean;
  /** Skip the preflight (status, estimate). */
  preflight?: boolean;
  /** Refuse when old and new are the same place (default true when both are required). */
  refuseSameLocation?: boolean;
  logFormat?: LogFormat;
  /** Override the new backend's socket pool size (S3). */
  maxSockets?: number;
  /**
   * A rollback: the config's `new` is the source and its `old` the
   * destination. `oldDb`/`newDb` (and their names, the snapshot, the write
   * probe) come back swapped, so the engine copies new → old.
   */
  reverse?: boolean;
  /**
   * Start listing the new backend into a snapshot as soon as it is built, so
   * the listing overlaps opening the metadata and the preflight (it writes
   * nothing; a failed preflight cancels it). The command passes it on to the
   * engine, which cancels it when done; `close()` cancels it too.
   */
  snapshot?: boolean;
}

/** Opens what a command needs; on any failure closes what it opened and rethrows. */
export async function openContext(opts: ContextOptions): Promise<CommandContext> {
  const [
    { loadConfig, describeBackend, sameLocation },
    { preflight, sweepProbes, sweepProbesFrom, PROBE_PREFIX },
  ] = await Promise.all([import('../config/index.js'), import('../engine/preflight.js')]);
  const loaded = await loadConfig(opts.config ?? DEFAULTS.config, {
    ...(opts.requireOld ? { requireOld: true } : {}),
    ...(opts.requireNew ? { requireNew: true } : {}),
    sqliteMustExist: true,
  });
  const config = loaded.config;
  // Taken before any client is built (SDK clients annotate the credentials object).
  const printable = redact(structuredClone(config));
  const sides = contextSides(loaded, opts.reverse === true, describeBackend);
  const setup = new ContextSetup({ sweepProbes, sweepProbesFrom, PROBE_PREFIX });
  const close = setup.close;
  try {
    const { meta, oldDb, logger } = await openParts(opts, loaded, sides, setup);
    if (opts.preflight !== false) {
      const same =
        (opts.refuseSameLocation ?? true) && sides.sourceCfg && sides.destCfg
          ? sameLocation(sides.sourceCfg, sides.destCfg)
          : false;
      await preflight({
        meta,
        ...(oldDb ? { oldDb } : {}),
        ...(setup.newDb ? { newDb: setup.newDb } : {}),
        names: preflightNames(sides.names),
        write: opts.write ?? false,
        sameLocation: same,
        sweepProbes: setup.snapshot === undefined,
      });
      setup.preflightPassed(opts.write === true);
    }
    throwIfInterrupted();
    const { newDb, snapshot } = setup;
    const names = sides.names;
    return { loaded, config, printable, meta, oldDb, newDb, snapshot, names, logger, close };
  } catch (err) {
    await close();
    throw setupFailure(err);
  }
}

/** The backends a command copies between: source and destination, swapped for a rollback. */
interface ContextSides {
  sourceCfg: BackendConfig | undefined;
  destCfg: BackendConfig | undefined;
  buildSource(): Promise<BlobDB | undefined>;
  buildDest(): Promise<BlobDB | undefined>;
  names: CommandContext['names'];
}

function contextSides(
  loaded: LoadedConfig,
  reverse: boolean,
  describeBackend: (cfg: BackendConfig) => string,
): ContextSides {
  const config = loaded.config;
  const sourceCfg = reverse ? config.new : config.old;
  const destCfg = reverse ? config.old : config.new;
  return {
    sourceCfg,
    destCfg,
    buildSource: () => (reverse ? loaded.buildNew() : loaded.buildOld()),
    buildDest: () => (reverse ? loaded.buildOld() : loaded.buildNew()),
    names: {
      old: sourceCfg ? describeBackend(sourceCfg) : undefined,
      new: destCfg ? describeBackend(destCfg) : undefined,
      meta: describeMeta(config),
    },
  };
}

/**
 * Opens the metadata and the backends, in this order: the new backend first
 * when a snapshot is wanted (its listing is the long part of a run's setup),
 * then the logger, the metadata, the source backend, and otherwise the new
 * backend last. Each opened part is tracked by `setup` for closing.
 */
async function openParts(
  opts: ContextOptions,
  loaded: LoadedConfig,
  sides: ContextSides,
  setup: ContextSetup,
): Promise<{ meta: MetaStore; oldDb: BlobDB | undefined; logger: Logger }> {
  const openNew = () =>
    setup.openNew(sides.buildDest, Boolean(opts.requireNew || sides.destCfg), opts.snapshot);
  throwIfInterrupted();
  // The listing is the long part of a run's setup: start it first.
  if (opts.snapshot) await openNew();
  const { createLogger } = await import('./log.js');
  const logger = createLogger({ format: opts.logFormat ?? DEFAULTS.logFormat });
  const meta = await openQuietMeta(loaded, logger).catch((err: unknown) => {
    throw asPreflight(sides.names.meta, err);
  });
  setup.track(meta);
  throwIfInterrupted();
  const oldDb = opts.requireOld || sides.sourceCfg ? await sides.buildSource() : undefined;
  if (oldDb) setup.track(oldDb);
  if (!opts.snapshot) await openNew();
  throwIfInterrupted();
  return { meta, oldDb, logger };
}

function preflightNames(names: CommandContext['names']): { old?: string; new?: string; meta: string } {
  return {
    ...(names.old ? { old: names.old } : {}),
    ...(names.new ? { new: names.new } : {}),
    meta: names.meta,
  };
}

/** A signal during the setup: whatever the step in progress said, the operator asked to stop. */
function setupFailure(err: unknown): unknown {
  const signal = pendingSignal();
  if (signal !== undefined && !(err instanceof AbortedError)) {
    return new AbortedError(`interrupted (${signal}) during setup, before any blob was touched`, {
      cause: err,
    });
  }
  return err;
}

/** The preflight's probe sweepers (its module loads lazily). */
type ProbeSweepers = Pick<
  typeof import('../engine/preflight.js'),
  'sweepProbes' | 'sweepProbesFrom' | 'PROBE_PREFIX'
>;

/**
 * What a context's setup opened (closed in reverse order), the new backend
 * and its listing snapshot, and the sweep of leftover write probes.
 */
class ContextSetup {
  readonly #opened: { close(): Promise<void> }[] = [];
  readonly #probes: ProbeSweepers;
  newDb: BlobDB | undefined;
  snapshot: SnapshotBuild | undefined;
  // Leftover write probes are swept only by a command that writes, once its
  // preflight passed (a dry run or a failed preflight writes nothing).
  #sweepAllowed = false;
  #probeKeys: string[] | undefined;
  #sweeping: Promise<void> | undefined;

  constructor(probes: ProbeSweepers) {
    this.#probes = probes;
  }

  /** Closes everything opened, last first, ignoring errors. Bound: handed out as `close`. */
  readonly close = async (): Promise<void> => {
    for (const item of this.#opened.reverse()) await item.close().catch(() => {});
    this.#opened.length = 0;
  };

  track(item: { close(): Promise<void> }): void {
    this.#opened.push(item);
  }

  /** Opens the new backend when `wanted`; with `snapshot`, starts listing it. */
  async openNew(
    build: () => Promise<BlobDB | undefined>,
    wanted: boolean,
    snapshot: boolean | undefined,
  ): Promise<void> {
    this.newDb = wanted ? await build() : undefined;
    if (this.newDb) this.#opened.push(this.newDb);
    if (this.newDb && snapshot) await this.#startSnapshot(this.newDb);
  }

  /** A passed preflight: a command that writes may now sweep the probes the snapshot found. */
  preflightPassed(write: boolean): void {
    this.#sweepAllowed = write;
    this.#sweepFromSnapshot();
  }

  #sweepFromSnapshot(): void {
    if (this.#sweepAllowed && this.newDb && this.#probeKeys && !this.#sweeping) {
      this.#sweeping = this.#probes.sweepProbesFrom(this.newDb, this.#probeKeys);
    }
  }

  async #startSnapshot(db: BlobDB): Promise<void> {
    const { PresentIndex } = await import('../engine/present-index.js');
    let build: SnapshotBuild;
    try {
      build = await PresentIndex.start(db);
    } catch {
      // No snapshot here (its temporary index could not be made): the
      // engine tries again and, failing too, says so and HEADs each blob.
      return;
    }
    this.snapshot = build;
    // The snapshot lists every write probe killed preflights left: the
    // preflight need not list them again (read here, before the engine
    // takes the index). A snapshot that never completes (a reprinted or
    // interrupted run) leaves that to a prefix listing when closing.
    build.ready.then(
      (index) => {
        this.#probeKeys = [...index.keysWithPrefix(this.#probes.PROBE_PREFIX)];
        this.#sweepFromSnapshot();
      },
      () => {},
    );
    // Closed in reverse order: the listing stops before the backend closes.
    this.#opened.push({
      close: async () => {
        await build.cancel();
        if (this.#sweeping) await this.#sweeping;
        else if (this.#sweepAllowed) await this.#probes.sweepProbes(db).catch(() => {});
      },
    });
  }
}

/**
 * The metadata, with knex's own printouts routed through the logger: knex
 * prints "Acquire connection error: <stack>" to stdout when the database does
 * not answer, though the error also reaches us (and becomes one preflight
 * line). Those go; other warnings go to the logger, redacted.
 */
export async function openQuietMeta(loaded: LoadedConfig, logger: Pick<Logger, 'warn'>): Promise<MetaStore> {
  const [{ MetaDB }, { metaOpenOptions }] = await Promise.all([
    import('../meta/index.js'),
    import('../config/index.js'),
  ]);
  const say = (message: unknown) => {
    const text = typeof message === 'string' ? message : String(message);
    if (isKnexNoise(text)) return;
    logger.warn(`database: ${redactString(oneLine(text))}`);
  };
  return MetaDB.open(
    { ...loaded.knexConfig(), log: { warn: say, error() {}, deprecate: say, debug() {} } },
    metaOpenOptions(loaded.config.meta),
  );
}

/** The database and table, for messages: no user, no password, no query string. */
export function describeMeta(config: BlobShiftConfig): string {
  const m = config.meta;
  if (m.client === 'better-sqlite3') return `SQLite ${m.connection.filename} (table ${m.table})`;
  const [kind, port] = m.client === 'pg' ? ['PostgreSQL', 5432] : ['MySQL', 3306];
  const table =
    m.client === 'pg' && m.schema !== undefined ? `table ${m.schema}.${m.table}` : `table ${m.table}`;
  const c = m.connection;
  if (typeof c === 'string') {
    try {
      const u = new URL(c);
      return `${kind} ${u.hostname}:${u.port || port}${u.pathname} (${table})`;
    } catch {
      return `${kind} (${table})`;
    }
  }
  const conn = c as { host?: string; port?: number; database?: string };
  return `${kind} ${conn.host ?? 'localhost'}:${conn.port ?? port}/${conn.database ?? ''} (${table})`;
}

function asPreflight(target: string, err: unknown): unknown {
  if (err instanceof ConfigError || err instanceof PreflightError) return err;
  return new PreflightError(target, `it cannot be opened: ${shortError(err)}`, { cause: err });
}
