/**
 * What every data command does first: load the config, open the metadata and
 * the backends it needs, run the preflight, and hand back one object that
 * closes everything. The subcommand scripts stay thin on top of it.
 */
import type { BlobShiftConfig, LoadedConfig } from '../config/index.js';
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
  const reverse = opts.reverse === true;
  const sourceCfg = reverse ? config.new : config.old;
  const destCfg = reverse ? config.old : config.new;
  const buildSource = () => (reverse ? loaded.buildNew() : loaded.buildOld());
  const buildDest = () => (reverse ? loaded.buildOld() : loaded.buildNew());
  const names = {
    old: sourceCfg ? describeBackend(sourceCfg) : undefined,
    new: destCfg ? describeBackend(destCfg) : undefined,
    meta: describeMeta(config),
  };
  const opened: { close(): Promise<void> }[] = [];
  const close = async () => {
    for (const item of opened.reverse()) await item.close().catch(() => {});
    opened.length = 0;
  };
  let logger: Logger;
  try {
    let newDb: BlobDB | undefined;
    let snapshot: SnapshotBuild | undefined;
    // Leftover write probes are swept only by a command that writes, once its
    // preflight passed (a dry run or a failed preflight writes nothing).
    let sweepAllowed = false;
    let probeKeys: string[] | undefined;
    let sweeping: Promise<void> | undefined;
    const sweepFromSnapshot = () => {
      if (sweepAllowed && newDb && probeKeys && !sweeping) sweeping = sweepProbesFrom(newDb, probeKeys);
    };
    const openNew = async () => {
      newDb = opts.requireNew || destCfg ? await buildDest() : undefined;
      if (newDb) opened.push(newDb);
      if (newDb && opts.snapshot) {
        const { PresentIndex } = await import('../engine/present-index.js');
        const db = newDb;
        let build: SnapshotBuild;
        try {
          build = await PresentIndex.start(db);
        } catch {
          // No snapshot here (its temporary index could not be made): the
          // engine tries again and, failing too, says so and HEADs each blob.
          return;
        }
        snapshot = build;
        // The snapshot lists every write probe killed preflights left: the
        // preflight need not list them again (read here, before the engine
        // takes the index). A snapshot that never completes (a reprinted or
        // interrupted run) leaves that to a prefix listing when closing.
        build.ready.then(
          (index) => {
            probeKeys = [...index.keysWithPrefix(PROBE_PREFIX)];
            sweepFromSnapshot();
          },
          () => {},
        );
        // Closed in reverse order: the listing stops before the backend closes.
        opened.push({
          close: async () => {
            await build.cancel();
            if (sweeping) await sweeping;
            else if (sweepAllowed) await sweepProbes(db).catch(() => {});
          },
        });
      }
    };
    throwIfInterrupted();
    // The listing is the long part of a run's setup: start it first.
    if (opts.snapshot) await openNew();
    const { createLogger } = await import('./log.js');
    logger = createLogger({ format: opts.logFormat ?? DEFAULTS.logFormat });
    const meta = await openQuietMeta(loaded, logger).catch((err: unknown) => {
      throw asPreflight(names.meta, err);
    });
    opened.push(meta);
    throwIfInterrupted();
    const oldDb = opts.requireOld || sourceCfg ? await buildSource() : undefined;
    if (oldDb) opened.push(oldDb);
    if (!opts.snapshot) await openNew();
    throwIfInterrupted();
    if (opts.preflight !== false) {
      const same =
        (opts.refuseSameLocation ?? true) && sourceCfg && destCfg ? sameLocation(sourceCfg, destCfg) : false;
      await preflight({
        meta,
        ...(oldDb ? { oldDb } : {}),
        ...(newDb ? { newDb } : {}),
        names: {
          ...(names.old ? { old: names.old } : {}),
          ...(names.new ? { new: names.new } : {}),
          meta: names.meta,
        },
        write: opts.write ?? false,
        sameLocation: same,
        sweepProbes: snapshot === undefined,
      });
      sweepAllowed = opts.write === true;
      sweepFromSnapshot();
    }
    throwIfInterrupted();
    return { loaded, config, printable, meta, oldDb, newDb, snapshot, names, logger, close };
  } catch (err) {
    await close();
    // A signal during the setup: whatever the step in progress said, the operator asked to stop.
    const signal = pendingSignal();
    if (signal !== undefined && !(err instanceof AbortedError)) {
      throw new AbortedError(`interrupted (${signal}) during setup, before any blob was touched`, {
        cause: err,
      });
    }
    throw err;
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
