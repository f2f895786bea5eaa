/**
 * `MetaDB`: blob metadata and run state over knex, on SQLite (better-sqlite3),
 * MySQL/MariaDB (mysql2) and PostgreSQL (pg). knex is loaded lazily, on the
 * first `open` that is given a config rather than a ready instance.
 */
import { access } from 'node:fs/promises';
import type { Knex } from 'knex';
import { registerErrorKnowledge } from '../contract/error-knowledge.js';
import {
  BlobShiftError,
  ConfigError,
  errorMessage,
  PreflightError,
  ReadOnlyError,
} from '../contract/errors.js';
import { validateKey } from '../contract/keys.js';
import type {
  ColumnMap,
  DuplicateKeys,
  DuplicateKeysOptions,
  Estimate,
  MetaOpenOptions,
  MetaStore,
  NewBlobMeta,
  RunState,
  ShardSpec,
  TypeTotals,
  WalkOptions,
} from '../contract/meta.js';
import { redactString } from '../contract/redact.js';
import type { BlobMeta } from '../contract/types.js';
import {
  type ColumnFacts,
  checkIdColumn,
  exactKeyExpr,
  isIntegerType,
  type SizeColumnKind,
  sizeSum,
} from './columns.js';
import { rowToRun, runToRow } from './runs.js';
import {
  checkOwnColumns,
  checkSchema,
  type Dialect,
  dialectOf,
  ensureSchema,
  MAX_TABLE_NAME,
  ownMigrations,
  ownTableNames,
  qualified,
  runsOnlyMigrations,
  runsOnlyTableNames,
  SUPPORTED_CLIENTS,
  schemaBuilder,
  tableQuery,
  validateIdentifier,
} from './schema.js';
import { keyProblem, readSize, toDate, toKey, toNullableText, toSafeNumber, toText } from './values.js';

export { emptyCounts } from './runs.js';
export type { Dialect } from './schema.js';
export { IDENTIFIER, LOCK_GRACE_MS, MAX_TABLE_NAME, validateIdentifier } from './schema.js';

/** Keys per `IN (…)` list in `referenced` and `deleteMany`. */
export const KEY_BATCH = 1000;
/** Rows per INSERT statement in `addMany`. */
export const INSERT_BATCH = 500;
/** SQLite busy timeout: how long a writer waits for another (the app, a backfill) to finish. */
export const SQLITE_BUSY_TIMEOUT_MS = 10_000;
/** Rows `get` considers for one key: a case-insensitive app column can hold several spellings. */
const MAX_CASE_VARIANTS = 16;
/** The run-state table used beside an app's own mapped table. */
export const DEFAULT_RUNS_TABLE = 'blobshift_meta_runs';

/** blobshift's own table, as a column map. */
const OWN_COLUMNS: Required<ColumnMap> = {
  id: 'id',
  key: 'key',
  size: 'content_length',
  type: 'type',
  parentId: 'parent_id',
  contentType: 'content_type',
  sha256: 'sha256',
  name: 'name',
  createdOn: 'created_on',
  expiresOn: 'expires_on',
};

const COLUMN_FIELDS = [
  'id',
  'key',
  'size',
  'type',
  'parentId',
  'contentType',
  'sha256',
  'name',
  'createdOn',
  'expiresOn',
] as const satisfies readonly (keyof ColumnMap)[];

const SHA256 = /^[0-9a-f]{64}$/;

function isKnex(value: unknown): value is Knex {
  return typeof value === 'function' && 'client' in value && 'schema' in value;
}

function isSqliteClient(client: unknown): boolean {
  return client === 'better-sqlite3' || client === 'sqlite3' || client === 'sqlite';
}

function isMysqlClient(client: unknown): boolean {
  return client === 'mysql2' || client === 'mysql';
}

function isPgClient(client: unknown): boolean {
  return client === 'pg' || client === 'postgres' || client === 'postgresql';
}

/**
 * The database drivers' errors, told to the engine (`lib/engine/errors.ts`)
 * through the contract: which codes mean a lost connection, which names a
 * timeout. Registered when this module loads, before any knex exists.
 */
const PG_CONNECTION_LOST = 'PG_CONNECTION_LOST';
/**
 * The pg driver's errors for a connection that is gone carry no code (the
 * next query on a connection the server ended, or one whose socket closed):
 * they are recognised by their message and given `PG_CONNECTION_LOST`.
 */
const PG_LOST_MESSAGE =
  /\bConnection terminated( unexpectedly)?$|Client has encountered a connection error and is not queryable|Connection ended unexpectedly/;

registerErrorKnowledge('meta', {
  timeoutNames: ['KnexTimeoutError'],
  connectionCodes: [
    // MySQL/MariaDB (mysql2): the connection dropped, the server shut down.
    'PROTOCOL_CONNECTION_LOST',
    'ER_SERVER_SHUTDOWN',
    // PostgreSQL SQLSTATEs: connection exceptions (class 08); the server ended
    // the session (admin_shutdown: pg_terminate_backend, a failover;
    // crash_shutdown) or cannot take it yet (cannot_connect_now: starting up).
    '08000',
    '08001',
    '08003',
    '08004',
    '08006',
    '08007',
    '08P01',
    '57P01',
    '57P02',
    '57P03',
    PG_CONNECTION_LOST,
  ],
  codeOf: (err) => (PG_LOST_MESSAGE.test(err.message) ? PG_CONNECTION_LOST : undefined),
});

/** How blobshift's connections show in `pg_stat_activity` unless the config names them otherwise. */
export const PG_APPLICATION_NAME = 'blobshift';

/** Percent-decodes, leaving text that is not valid percent-encoding as it is. */
function decodeLoosely(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** Parses `mysql://user:password@host:port/database?opt=value` into a mysql2 connection object. */
export function parseMysqlUrl(url: string): Record<string, unknown> {
  let u: URL;
  try {
    u = new URL(url);
  } catch (err) {
    throw new ConfigError('meta.connection', 'is not a valid mysql:// URL', { cause: err });
  }
  if (u.protocol !== 'mysql:' && u.protocol !== 'mariadb:' && u.protocol !== 'mysql2:') {
    throw new ConfigError('meta.connection', `a MySQL URL must start with mysql://, not ${u.protocol}//`);
  }
  const out: Record<string, unknown> = { host: u.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1' };
  if (u.port) out.port = Number(u.port);
  if (u.username) out.user = decodeLoosely(u.username);
  if (u.password) out.password = decodeLoosely(u.password);
  const database = decodeLoosely(u.pathname.replace(/^\//, ''));
  if (database) out.database = database;
  for (const [k, v] of u.searchParams) {
    out[k] = v === 'true' ? true : v === 'false' ? false : /^\d+$/.test(v) ? Number(v) : v;
  }
  return out;
}

/**
 * knex printouts that say nothing the caller does not get otherwise, or say
 * the wrong thing to a blobshift user: "Acquire connection error: <stack>"
 * (the same error rejects the query), and the migration lock's "Can't take
 * lock" and "knex migrate:unlock" advice (blobshift waits for a held lock
 * and reports a stale one with the SQL that clears it).
 */
export function isKnexNoise(text: string): boolean {
  return (
    text.startsWith('Acquire connection error') ||
    text.startsWith("Can't take lock to run migrations") ||
    text.startsWith('If you are sure migrations are not running')
  );
}

/** One knex warning as one redacted line on stderr; see {@link isKnexNoise} for what is dropped. */
function warnOnStderr(message: unknown): void {
  const text = typeof message === 'string' ? message : String(message);
  if (isKnexNoise(text)) return;
  const line = redactString(text.split('\n')[0] ?? text);
  process.stderr.write(`blobshift: database: ${line}\n`);
}

/**
 * knex's printouts when the config brings no `log`. knex writes them to
 * stdout (`console.log`), where `--json` output goes. Failed migrations and
 * failed connections are rethrown as typed errors, so their printouts are
 * dropped; other warnings (a pool connection the server ended) go to stderr
 * as one redacted line.
 */
const QUIET_ERRORS: Knex.Logger = {
  error() {},
  debug() {},
  warn: warnOnStderr,
  deprecate: (method, alternative) => warnOnStderr(`${method} is deprecated; use ${alternative}`),
};

type AfterCreate = (conn: unknown, done: (err: Error | null, conn: unknown) => void) => void;

function sqliteAfterCreate(userHook: AfterCreate | undefined): AfterCreate {
  return (conn, done) => {
    try {
      const db = conn as { pragma(sql: string): unknown; readonly: boolean };
      if (!db.readonly) db.pragma('journal_mode = WAL');
      db.pragma(`busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`);
      db.pragma('foreign_keys = ON');
    } catch (err) {
      done(err instanceof Error ? err : new Error(String(err)), conn);
      return;
    }
    if (userHook) userHook(conn, done);
    else done(null, conn);
  };
}

/**
 * The knex config blobshift opens: SQLite through better-sqlite3 with WAL, a
 * busy timeout and foreign keys on every connection; MySQL through mysql2 with
 * UTC dates and safe big numbers; PostgreSQL through pg (a `postgres://` URL
 * or a connection object; `application_name` `blobshift` unless given).
 * `connection.options.fileMustExist` (SQLite) is checked here, since knex
 * does not pass it on. knex's own options (`pool`, `searchPath`,
 * `acquireConnectionTimeout`, …) pass through.
 */
export async function normalizeKnexConfig(config: Knex.Config): Promise<Knex.Config> {
  const client = config.client;
  if (isSqliteClient(client)) return normalizeSqliteConfig(config);
  if (isPgClient(client)) return normalizePgConfig(config);
  if (isMysqlClient(client)) return normalizeMysqlConfig(config);
  throw new ConfigError(
    'meta.client',
    `the database client ${JSON.stringify(client)} is not supported; use ${SUPPORTED_CLIENTS}`,
  );
}

async function normalizeSqliteConfig(config: Knex.Config): Promise<Knex.Config> {
  const conn = await sqliteConnection(config.connection as unknown);
  const pool = { ...(config.pool ?? {}) } as Knex.PoolConfig & { afterCreate?: AfterCreate };
  pool.afterCreate = sqliteAfterCreate(pool.afterCreate);
  return {
    log: QUIET_ERRORS,
    ...config,
    client: 'better-sqlite3',
    useNullAsDefault: config.useNullAsDefault ?? true,
    connection: conn,
    pool,
  };
}

/** A copy of the SQLite connection with a checked filename and without `options.fileMustExist`. */
async function sqliteConnection(given: unknown): Promise<Record<string, unknown>> {
  const connection = typeof given === 'string' ? { filename: given } : given;
  if (connection === null || typeof connection !== 'object') {
    throw new ConfigError('meta.connection', 'SQLite needs a connection with a filename');
  }
  const conn = { ...(connection as Record<string, unknown>) };
  const filename = conn.filename;
  if (typeof filename !== 'string' || filename === '') {
    throw new ConfigError('meta.connection.filename', 'is required for SQLite (a path to the database file)');
  }
  const options = { ...((conn.options as Record<string, unknown> | undefined) ?? {}) };
  if (options.fileMustExist === true && filename !== ':memory:') await assertSqliteFileExists(filename);
  delete options.fileMustExist;
  conn.options = options;
  return conn;
}

async function assertSqliteFileExists(filename: string): Promise<void> {
  try {
    await access(filename);
  } catch (err) {
    throw new ConfigError(
      'meta.connection.filename',
      `the SQLite file ${filename} does not exist (check the path; blobshift does not create it here)`,
      { cause: err },
    );
  }
}

async function normalizePgConfig(config: Knex.Config): Promise<Knex.Config> {
  let connection = config.connection as unknown;
  if (typeof connection === 'string') {
    if (!/^postgres(ql)?:\/\//i.test(connection)) {
      throw new ConfigError(
        'meta.connection',
        'a PostgreSQL URL must start with postgres:// or postgresql://',
      );
    }
    connection = { connectionString: connection };
  }
  if (typeof connection === 'function') return { log: QUIET_ERRORS, ...config, client: 'pg' };
  if (connection === null || typeof connection !== 'object') {
    throw new ConfigError('meta.connection', 'PostgreSQL needs a connection object or a postgres:// URL');
  }
  // A URL's own application_name wins over this default (pg reads the URL last).
  const conn: Record<string, unknown> = {
    application_name: PG_APPLICATION_NAME,
    ...(connection as Record<string, unknown>),
  };
  if (conn.types === undefined) conn.types = await pgConnectionTypes();
  return { log: QUIET_ERRORS, ...config, client: 'pg', connection: conn };
}

/**
 * For these connections only (the pg module's global parsers stay as they
 * are): BIGINT and COUNT() come back as numbers while they are safe, as from
 * mysql2, and as text beyond; a `timestamp` without time zone (an app's
 * column) is read as UTC, as on MySQL, not in this process's zone (its text
 * goes to `toDate`).
 */
async function pgConnectionTypes(): Promise<{
  getTypeParser: (oid: number, format?: 'text' | 'binary') => unknown;
}> {
  const { default: pg } = await import('pg');
  const { INT8, TIMESTAMP } = pg.types.builtins;
  const int8 = (text: string) => {
    const n = Number(text);
    return Number.isSafeInteger(n) ? n : text;
  };
  return {
    getTypeParser: (oid: number, format?: 'text' | 'binary') => {
      if (format !== 'binary' && oid === INT8) return int8;
      if (format !== 'binary' && oid === TIMESTAMP) return (text: string) => text;
      return pg.types.getTypeParser(oid, format as 'text');
    },
  };
}

function normalizeMysqlConfig(config: Knex.Config): Knex.Config {
  let connection = config.connection as unknown;
  if (typeof connection === 'string') connection = parseMysqlUrl(connection);
  if (typeof connection === 'function') return { log: QUIET_ERRORS, ...config, client: 'mysql2' };
  if (connection === null || typeof connection !== 'object') {
    throw new ConfigError('meta.connection', 'MySQL needs a connection object or a mysql:// URL');
  }
  const conn: Record<string, unknown> = {
    charset: 'utf8mb4',
    ...(connection as Record<string, unknown>),
    // Dates are written and read as UTC; ids come back as numbers while they are safe.
    timezone: 'Z',
    supportBigNumbers: true,
  };
  return { log: QUIET_ERRORS, ...config, client: 'mysql2', connection: conn };
}

/** Creates a knex instance from a config normalised by {@link normalizeKnexConfig}. Loads knex lazily. */
export async function createKnex(config: Knex.Config): Promise<Knex> {
  const normalized = await normalizeKnexConfig(config);
  const { default: knexFactory } = await import('knex');
  return knexFactory(normalized);
}

function uniqueViolation(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return (
    code === 'ER_DUP_ENTRY' ||
    code === 'SQLITE_CONSTRAINT_UNIQUE' ||
    code === 'SQLITE_CONSTRAINT_PRIMARYKEY' ||
    // PostgreSQL's unique_violation
    code === '23505'
  );
}

function checkRow(m: NewBlobMeta): void {
  validateKey(m.key);
  if (typeof m.type !== 'string') throw new BlobShiftError(`row ${m.key}: type must be a string`);
  if (typeof m.parentId !== 'string') throw new BlobShiftError(`row ${m.key}: parentId must be a string`);
  if (!Number.isSafeInteger(m.contentLength) || m.contentLength < 0) {
    throw new BlobShiftError(
      `row ${m.key}: contentLength must be a non-negative integer, got ${m.contentLength}`,
    );
  }
  if (m.sha256 !== undefined && m.sha256 !== null && !SHA256.test(m.sha256)) {
    throw new BlobShiftError(`row ${m.key}: sha256 must be 64 lower-case hex digits`);
  }
}

function checkShard(shard: ShardSpec | undefined): void {
  if (shard === undefined) return;
  const { index, count } = shard;
  if (
    !Number.isSafeInteger(count) ||
    count < 1 ||
    !Number.isSafeInteger(index) ||
    index < 0 ||
    index >= count
  ) {
    throw new ConfigError('shard', `a shard is I/N with 0 <= I < N, got ${index}/${count}`);
  }
}

function uniq(values: Iterable<string>): string[] {
  return [...new Set(values)];
}

/** What one walk reads per page: its chunk size, id bound and shard. */
interface WalkScope {
  chunkSize: number;
  upTo: number | undefined;
  shard: ShardSpec | undefined;
}

/** One type's keyset cursor in a walk over several types. */
interface WalkCursor {
  type: string;
  after: number;
  buffer: BlobMeta[];
  pos: number;
  done: boolean;
}

/** The mapped columns of `meta.columns`, each a valid identifier; id, key and size are required. */
function validateColumnMap(columns: ColumnMap): Partial<ColumnMap> {
  const map: Partial<ColumnMap> = {};
  for (const field of COLUMN_FIELDS) {
    const col = (columns as unknown as Record<string, unknown>)[field];
    if (col === undefined) {
      if (field === 'id' || field === 'key' || field === 'size') {
        throw new ConfigError(`meta.columns.${field}`, 'is required to map an app table');
      }
      continue;
    }
    map[field] = validateIdentifier(`meta.columns.${field}`, col);
  }
  for (const field of Object.keys(columns)) {
    if (!(COLUMN_FIELDS as readonly string[]).includes(field)) {
      throw new ConfigError(
        `meta.columns.${field}`,
        `is not a known column (known: ${COLUMN_FIELDS.join(', ')})`,
      );
    }
  }
  return map;
}

async function assertAppTableExists(
  knex: Knex,
  dialect: Dialect,
  schema: string | undefined,
  table: string,
): Promise<void> {
  if (await schemaBuilder(knex, schema).hasTable(table)) return;
  const folded =
    dialect === 'pg' && table !== table.toLowerCase()
      ? ` (PostgreSQL folds unquoted names to lower case: is it ${table.toLowerCase()}?)`
      : '';
  throw new ConfigError(
    'meta.table',
    `the app table ${qualified(table, schema)} does not exist in this database${folded}`,
  );
}

/** Replaces each mapped column name by the table's own spelling (exact first, then case-insensitive). */
function matchColumnNames(map: Partial<ColumnMap>, present: string[], table: string): void {
  for (const field of COLUMN_FIELDS) {
    const col = map[field];
    if (col === undefined) continue;
    const found =
      present.find((c) => c === col) ?? present.find((c) => c.toLowerCase() === col.toLowerCase());
    if (found === undefined) {
      throw new ConfigError(
        `meta.columns.${field}`,
        `table ${table} has no column "${col}" (its columns: ${present.join(', ')})`,
      );
    }
    map[field] = found;
  }
}

/** An INTEGER PRIMARY KEY is the rowid: never NULL, though table_info says nullable. */
async function isSqliteRowid(knex: Knex, table: string, idCol: string): Promise<boolean> {
  const pk = (await knex.raw('SELECT name, pk, type FROM pragma_table_info(?) WHERE pk > 0', [table])) as {
    name: string;
    type: string;
  }[];
  return pk.length === 1 && pk[0]?.name === idCol && /^integer$/i.test(pk[0].type.trim());
}

/**
 * Blob metadata rows and run state, over knex. Open with {@link MetaDB.open}.
 *
 * blobshift's own table `<table>` (default `blob_meta`) has `key` as
 * `VARBINARY(1024)` on MySQL (byte order, no case folding), `text COLLATE "C"`
 * on PostgreSQL and TEXT on SQLite (BINARY collation); `<table>_runs` holds
 * run state; `<table>_migrations` the schema version. On PostgreSQL all of
 * them may live in a named schema (`schema`). An app's own table mapped with
 * `columns` is read-only.
 */
export class MetaDB implements MetaStore {
  readonly table: string;
  readonly readOnly: boolean;
  readonly dialect: Dialect;
  /** The PostgreSQL schema that holds the tables, when one was named; else the connection's own. */
  readonly schema: string | undefined;
  /** Where run state lives: `<table>_runs`, or `runsTable` beside a mapped app table. */
  readonly runsTable: string;
  readonly #knex: Knex;
  readonly #owned: boolean;
  readonly #cols: ColumnMap;
  readonly #binaryKeys: boolean;
  /** The key column's SQL type, as the database names it. */
  readonly #keyType: string;
  /** The id column can hold NULL (an app table): such rows are counted, never walked. */
  readonly #idNullable: boolean;
  /** How far `estimate` may trust the size column's values. */
  readonly #sizeKind: SizeColumnKind;
  readonly #select: Record<string, string>;
  #closed = false;

  private constructor(init: {
    knex: Knex;
    owned: boolean;
    dialect: Dialect;
    schema: string | undefined;
    table: string;
    runsTable: string;
    cols: ColumnMap;
    readOnly: boolean;
    binaryKeys: boolean;
    keyType: string;
    idNullable: boolean;
    sizeKind: SizeColumnKind;
  }) {
    this.#knex = init.knex;
    this.#owned = init.owned;
    this.dialect = init.dialect;
    this.schema = init.schema;
    this.table = init.table;
    this.runsTable = init.runsTable;
    this.#cols = init.cols;
    this.readOnly = init.readOnly;
    this.#binaryKeys = init.binaryKeys;
    this.#keyType = init.keyType;
    this.#idNullable = init.idNullable;
    this.#sizeKind = init.sizeKind;
    const select: Record<string, string> = {};
    for (const field of COLUMN_FIELDS) {
      const col = init.cols[field];
      if (col !== undefined) select[field] = col;
    }
    this.#select = select;
  }

  /**
   * Opens the metadata. Given a knex config, creates (and on `close` destroys)
   * its own knex; given a knex instance, uses it as is and leaves it open
   * (its connection settings are the app's: for SQLite, the app should set
   * WAL and a busy timeout itself, as {@link normalizeKnexConfig} does).
   * Creates or migrates the schema unless `create: false` (then it must exist
   * and be current). With `columns`, maps the app's own table read-only and
   * keeps run state in `runsTable` (default `blobshift_meta_runs`). On
   * PostgreSQL, `schema` names the schema that holds every table (it must
   * exist; default: the connection's current schema, the first of its
   * search_path), and blobshift's own table needs a UTF8 database.
   * Rejects `ConfigError` for bad names, a missing SQLite file or schema, and
   * `PreflightError` when the database cannot be reached or its schema is
   * unusable (a stale migration lock is reported with the SQL that clears it).
   */
  static async open(knexConfigOrInstance: Knex.Config | Knex, opts: MetaOpenOptions = {}): Promise<MetaDB> {
    const table = validateIdentifier('meta.table', opts.table ?? 'blob_meta', MAX_TABLE_NAME);
    const schema = opts.schema === undefined ? undefined : validateIdentifier('meta.schema', opts.schema, 63);
    const owned = !isKnex(knexConfigOrInstance);
    const knex = isKnex(knexConfigOrInstance) ? knexConfigOrInstance : await createKnex(knexConfigOrInstance);
    try {
      const dialect = dialectOf(knex);
      if (schema !== undefined && dialect !== 'pg') {
        throw new ConfigError(
          'meta.schema',
          'applies to PostgreSQL only (on MySQL the database is the schema)',
        );
      }
      const target = `metadata table ${qualified(table, schema)}`;
      try {
        await knex.raw('select 1');
      } catch (err) {
        throw new PreflightError(target, `the database is unreachable: ${errorMessage(err)}`, { cause: err });
      }
      if (dialect === 'pg') await MetaDB.#checkPg(knex, schema, opts.columns === undefined);
      if (opts.columns) {
        const cols = await MetaDB.#mapColumns(knex, dialect, schema, table, opts.columns);
        const runsTable = validateIdentifier(
          'meta.runsTable',
          opts.runsTable ?? DEFAULT_RUNS_TABLE,
          MAX_TABLE_NAME,
        );
        if (runsTable === table) {
          throw new ConfigError('meta.runsTable', `must differ from the mapped app table ${table}`);
        }
        const names = runsOnlyTableNames(runsTable, schema);
        const migrations = runsOnlyMigrations(names, dialect);
        const runsTarget = `run-state table ${qualified(runsTable, schema)}`;
        if (opts.create === false) await checkSchema(knex, names, migrations, runsTarget);
        else await ensureSchema(knex, names, migrations, runsTarget);
        return new MetaDB({
          knex,
          owned,
          dialect,
          schema,
          table,
          runsTable,
          cols: cols.map,
          readOnly: true,
          binaryKeys: cols.binaryKeys,
          keyType: cols.keyType,
          idNullable: cols.idNullable,
          sizeKind: cols.sizeKind,
        });
      }
      const names = ownTableNames(table, schema);
      const migrations = ownMigrations(names, dialect);
      if (opts.create === false) await checkSchema(knex, names, migrations, target);
      else await ensureSchema(knex, names, migrations, target);
      await checkOwnColumns(knex, table, target, schema);
      return new MetaDB({
        knex,
        owned,
        dialect,
        schema,
        table,
        runsTable: names.runs,
        cols: OWN_COLUMNS,
        readOnly: false,
        binaryKeys: dialect === 'mysql',
        keyType: dialect === 'mysql' ? 'varbinary' : 'text',
        idNullable: false,
        sizeKind: 'own',
      });
    } catch (err) {
      if (owned) await knex.destroy().catch(() => undefined);
      throw err;
    }
  }

  /**
   * PostgreSQL: the named schema exists (a typo must not become an empty
   * migration), and blobshift's own table, whose keys are UTF-8 text in the
   * "C" collation, lives in a UTF8 database.
   */
  static async #checkPg(knex: Knex, schema: string | undefined, ownTable: boolean): Promise<void> {
    if (schema !== undefined) {
      const found = (await knex.raw('SELECT 1 FROM pg_namespace WHERE nspname = ?', [schema])) as {
        rows: unknown[];
      };
      if (found.rows.length === 0) {
        throw new ConfigError(
          'meta.schema',
          `the schema "${schema}" does not exist in this database (check the name; create it with CREATE SCHEMA "${schema}")`,
        );
      }
    }
    if (ownTable) {
      const enc = (await knex.raw('SHOW server_encoding')) as { rows: { server_encoding?: string }[] };
      const encoding = enc.rows[0]?.server_encoding ?? '';
      if (encoding.toUpperCase() !== 'UTF8') {
        throw new ConfigError(
          'meta.connection',
          `the database's encoding is ${encoding}; blobshift's keys are UTF-8 text: use a database created with ENCODING 'UTF8'`,
        );
      }
    }
  }

  static async #mapColumns(
    knex: Knex,
    dialect: Dialect,
    schema: string | undefined,
    table: string,
    columns: ColumnMap,
  ): Promise<{
    map: ColumnMap;
    binaryKeys: boolean;
    keyType: string;
    idNullable: boolean;
    sizeKind: SizeColumnKind;
  }> {
    const map = validateColumnMap(columns);
    await assertAppTableExists(knex, dialect, schema, table);
    const info = (await tableQuery(knex, table, schema).columnInfo()) as unknown as Record<
      string,
      Partial<ColumnFacts>
    >;
    matchColumnNames(map, Object.keys(info), table);
    const facts = (column: string): ColumnFacts => {
      const f = info[column] ?? {};
      return { type: String(f.type ?? ''), maxLength: f.maxLength, nullable: f.nullable !== false };
    };
    const idCol = map.id as string;
    const idFacts = facts(idCol);
    await checkIdColumn(knex, dialect, schema, table, idCol, idFacts);
    let idNullable = idFacts.nullable;
    if (dialect === 'sqlite' && idNullable && (await isSqliteRowid(knex, table, idCol))) idNullable = false;
    const keyType = facts(map.key as string).type;
    return {
      map: map as ColumnMap,
      binaryKeys: /binary|blob|bytea/i.test(keyType),
      keyType,
      idNullable,
      // SQLite keeps whatever it is given in any column: its declared type is no guarantee.
      sizeKind:
        dialect !== 'sqlite' && isIntegerType(dialect, facts(map.size as string).type) ? 'integer' : 'any',
    };
  }

  /** The knex instance (shared with the app when one was passed to `open`). */
  get knex(): Knex {
    return this.#knex;
  }

  #keyParam(key: string): string | Buffer {
    return this.#binaryKeys ? Buffer.from(key, 'utf8') : key;
  }

  /** A query on the blob table (in its schema), on `trx` when given. */
  #blobs(trx: Knex = this.#knex): Knex.QueryBuilder {
    return tableQuery(trx, this.table, this.schema);
  }

  /** A query on the run-state table (in its schema). */
  #runs(): Knex.QueryBuilder {
    return tableQuery(this.#knex, this.runsTable, this.schema);
  }

  #writable(op: string): void {
    if (this.readOnly) {
      throw new ReadOnlyError(
        `cannot ${op}: ${this.table} is the app's own table, mapped read-only (meta.columns); ` +
          'blobshift never writes to it',
      );
    }
  }

  #toMeta(row: Record<string, unknown>): BlobMeta {
    // A row that cannot be used as it is (an app's messy table) must not fail
    // the whole chunk: it is handed over marked `invalid`, with NaN for an
    // unusable size and '' for a NULL key, and the engine reports that row.
    const problems: string[] = [];
    let id = 0;
    if (row.id === null || row.id === undefined) problems.push('the id is NULL');
    else id = toSafeNumber(row.id, `${this.table} id`);
    const keyIssue = keyProblem(row.key);
    if (keyIssue !== undefined) problems.push(keyIssue);
    const size = readSize(row.size);
    if (size.invalid !== undefined) problems.push(size.invalid);
    const meta: BlobMeta = {
      id,
      key: toKey(row.key),
      parentId: toText(row.parentId),
      type: toText(row.type),
      name: toText(row.name),
      contentLength: size.size,
      contentType: toNullableText(row.contentType),
      sha256: toNullableText(row.sha256),
      createdOn: toDate(row.createdOn) ?? new Date(0),
      expiresOn: toDate(row.expiresOn),
    };
    if (problems.length > 0) meta.invalid = problems.join('; ');
    return meta;
  }

  #toRow(m: NewBlobMeta, createdOn: Date): Record<string, unknown> {
    return {
      key: this.#keyParam(m.key),
      parent_id: m.parentId,
      type: m.type,
      name: m.name ?? '',
      content_length: m.contentLength,
      content_type: m.contentType ?? null,
      sha256: m.sha256 ?? null,
      created_on: createdOn,
      expires_on: m.expiresOn ?? null,
    };
  }

  #duplicate(m: NewBlobMeta, err: unknown): BlobShiftError {
    return new BlobShiftError(
      `a row with key ${JSON.stringify(m.key)} already exists in ${this.table}; use upsert to replace it`,
      { cause: err },
    );
  }

  /** Inserts a row; rejects when its key already has one (use `upsert` to replace). */
  async add(m: NewBlobMeta): Promise<BlobMeta> {
    this.#writable('add a row');
    checkRow(m);
    const createdOn = m.createdOn ?? new Date();
    let ids: unknown[];
    try {
      const insert = this.#blobs().insert(this.#toRow(m, createdOn));
      // PostgreSQL hands back an id only when asked (RETURNING).
      ids = this.dialect === 'pg' ? await insert.returning('id') : await insert;
    } catch (err) {
      if (uniqueViolation(err)) throw this.#duplicate(m, err);
      throw err;
    }
    const first = ids[0];
    const id = first !== null && typeof first === 'object' ? (first as { id?: unknown }).id : first;
    return {
      id: toSafeNumber(id, `${this.table} id`),
      key: m.key,
      parentId: m.parentId,
      type: m.type,
      name: m.name ?? '',
      contentLength: m.contentLength,
      contentType: m.contentType ?? null,
      sha256: m.sha256 ?? null,
      createdOn,
      expiresOn: m.expiresOn ?? null,
    };
  }

  /**
   * Inserts many rows, `INSERT_BATCH` per statement, in one transaction (all
   * or none). Resolves the number inserted. Rejects when a key already has a row.
   */
  async addMany(rows: NewBlobMeta[]): Promise<number> {
    this.#writable('add rows');
    const now = new Date();
    const prepared = rows.map((m) => {
      checkRow(m);
      return this.#toRow(m, m.createdOn ?? now);
    });
    try {
      await this.#knex.transaction(async (trx) => {
        for (let i = 0; i < prepared.length; i += INSERT_BATCH) {
          await this.#blobs(trx).insert(prepared.slice(i, i + INSERT_BATCH));
        }
      });
    } catch (err) {
      if (uniqueViolation(err)) {
        throw new BlobShiftError(`a key in the batch already has a row in ${this.table}; nothing was added`, {
          cause: err,
        });
      }
      throw err;
    }
    return prepared.length;
  }

  /**
   * Inserts the row, or updates the row with the same key in place (its id
   * stays). On update, `createdOn` changes only when given.
   */
  async upsert(m: NewBlobMeta): Promise<BlobMeta> {
    this.#writable('upsert a row');
    checkRow(m);
    const row = this.#toRow(m, m.createdOn ?? new Date());
    const merge = ['parent_id', 'type', 'name', 'content_length', 'content_type', 'sha256', 'expires_on'];
    if (m.createdOn !== undefined) merge.push('created_on');
    const result = await this.#knex.transaction(async (trx) => {
      await this.#blobs(trx).insert(row).onConflict('key').merge(merge);
      return this.#blobs(trx).select(this.#select).where(this.#cols.key, this.#keyParam(m.key)).first();
    });
    if (result === undefined) throw new BlobShiftError(`upsert of ${JSON.stringify(m.key)} left no row`);
    return this.#toMeta(result as Record<string, unknown>);
  }

  /** The row for `key`, or `undefined`. Keys match byte for byte. */
  async get(key: string): Promise<BlobMeta | undefined> {
    const rows = (await this.#blobs()
      .select(this.#select)
      .where(this.#cols.key, this.#keyParam(key))
      .limit(MAX_CASE_VARIANTS)) as Record<string, unknown>[];
    // A case-insensitive app column may answer for another spelling; only the exact key counts.
    const row = rows.find((r) => toKey(r.key) === key);
    return row === undefined ? undefined : this.#toMeta(row);
  }

  /** Deletes the row for `key`; resolves true when there was one. Idempotent. */
  async delete(key: string): Promise<boolean> {
    this.#writable('delete a row');
    const n = await this.#blobs().where(this.#cols.key, this.#keyParam(key)).del();
    return Number(n) > 0;
  }

  /**
   * Deletes the row of `key` when `check(row)` resolves true, in one
   * transaction that first locks the row with an UPDATE that changes nothing
   * (SQLite: the database's write lock; MySQL/MariaDB: the key's index
   * record; PostgreSQL: the row), so no other writer of the key, in any
   * process, runs between the read, the check and the delete. Resolves true
   * when a row was deleted.
   */
  async deleteIf(key: string, check: (row: BlobMeta) => Promise<boolean>): Promise<boolean> {
    this.#writable('delete a row');
    const where = { [this.#cols.key]: this.#keyParam(key) };
    return this.#knex.transaction(async (trx) => {
      await trx(this.table)
        .where(where)
        .update({ [this.#cols.id]: trx.ref(this.#cols.id) });
      const raw = (await trx(this.table).select(this.#select).where(where).first()) as
        | Record<string, unknown>
        | undefined;
      if (raw === undefined || toKey(raw.key) !== key) return false;
      if (!(await check(this.#toMeta(raw)))) return false;
      return Number(await trx(this.table).where(where).del()) > 0;
    });
  }

  /** Deletes the rows of `keys` (`KEY_BATCH` per statement); resolves how many were deleted. */
  async deleteMany(keys: string[]): Promise<number> {
    this.#writable('delete rows');
    let deleted = 0;
    const unique = uniq(keys);
    for (let i = 0; i < unique.length; i += KEY_BATCH) {
      const batch = unique.slice(i, i + KEY_BATCH).map((k) => this.#keyParam(k));
      deleted += Number(await this.#blobs().whereIn(this.#cols.key, batch).del());
    }
    return deleted;
  }

  #typeColumn(types: string[] | undefined): string | undefined {
    if (types === undefined || types.length === 0) return undefined;
    if (this.#cols.type === undefined) {
      throw new ConfigError('meta.columns.type', 'filtering by types needs a type column mapped');
    }
    return this.#cols.type;
  }

  async #page(
    after: number,
    limit: number,
    type: string | undefined,
    upTo: number | undefined,
    shard: ShardSpec | undefined,
  ): Promise<BlobMeta[]> {
    const q = this.#blobs().select(this.#select).where(this.#cols.id, '>', after);
    if (upTo !== undefined) q.where(this.#cols.id, '<=', upTo);
    if (type !== undefined) q.where(this.#cols.type as string, type);
    if (shard !== undefined) q.whereRaw('?? % ? = ?', [this.#cols.id, shard.count, shard.index]);
    const rows = (await q.orderBy(this.#cols.id, 'asc').limit(limit)) as Record<string, unknown>[];
    return rows.map((r) => this.#toMeta(r));
  }

  /**
   * Rows in ascending id order, `chunkSize` per chunk, pages fetched lazily by
   * keyset (`id > last`). With `types`, one cursor per type (served by the
   * `(type, id)` index) merged by id. `shard` keeps `id % count = index`;
   * `idRange` keeps `after < id <= upTo`; `afterId` resumes after an id.
   */
  async *walk(opts: WalkOptions): AsyncIterable<BlobMeta[]> {
    const { chunkSize } = opts;
    if (!Number.isSafeInteger(chunkSize) || chunkSize < 1) {
      throw new ConfigError('chunkSize', `must be a positive integer, got ${chunkSize}`);
    }
    checkShard(opts.shard);
    const start = Math.max(opts.afterId ?? 0, opts.idRange?.after ?? 0);
    const upTo = opts.idRange?.upTo;
    const typeCol = this.#typeColumn(opts.types);
    const scope: WalkScope = { chunkSize, upTo, shard: opts.shard };
    if (typeCol === undefined) yield* this.#walkAll(start, scope);
    else yield* this.#walkTypes(uniq(opts.types ?? []), start, scope);
  }

  /** The walk without types: one keyset cursor over all rows. */
  async *#walkAll(start: number, scope: WalkScope): AsyncIterable<BlobMeta[]> {
    let after = start;
    for (;;) {
      const rows = await this.#page(after, scope.chunkSize, undefined, scope.upTo, scope.shard);
      if (rows.length > 0) yield rows;
      if (rows.length < scope.chunkSize) return;
      after = (rows[rows.length - 1] as BlobMeta).id;
    }
  }

  /** The walk with types: one cursor per type, merged by id into chunks. */
  async *#walkTypes(types: string[], start: number, scope: WalkScope): AsyncIterable<BlobMeta[]> {
    const cursors: WalkCursor[] = types.map((type) => ({
      type,
      after: start,
      buffer: [],
      pos: 0,
      done: false,
    }));
    let chunk: BlobMeta[] = [];
    for (;;) {
      const best = await this.#lowestCursor(cursors, scope);
      if (best === undefined) break;
      chunk.push(best.buffer[best.pos] as BlobMeta);
      best.pos += 1;
      if (chunk.length === scope.chunkSize) {
        yield chunk;
        chunk = [];
      }
    }
    if (chunk.length > 0) yield chunk;
  }

  /**
   * Refills each drained cursor, in order, and returns the cursor whose next
   * row has the lowest id (undefined when all are exhausted).
   */
  async #lowestCursor(cursors: WalkCursor[], scope: WalkScope): Promise<WalkCursor | undefined> {
    let best: WalkCursor | undefined;
    for (const c of cursors) {
      if (c.pos >= c.buffer.length && !c.done) await this.#refill(c, scope);
      const head = c.buffer[c.pos];
      if (head !== undefined && (best === undefined || head.id < (best.buffer[best.pos] as BlobMeta).id)) {
        best = c;
      }
    }
    return best;
  }

  async #refill(c: WalkCursor, scope: WalkScope): Promise<void> {
    c.buffer = await this.#page(c.after, scope.chunkSize, c.type, scope.upTo, scope.shard);
    c.pos = 0;
    if (c.buffer.length < scope.chunkSize) c.done = true;
    const last = c.buffer[c.buffer.length - 1];
    if (last !== undefined) c.after = last.id;
  }

  /** Row count and summed sizes, in total and per type (requested types with no rows appear as zeros). */
  async estimate(opts: { types?: string[] } = {}): Promise<Estimate> {
    const typeCol = this.#typeColumn(opts.types);
    const byType: Record<string, TypeTotals> = {};
    for (const t of uniq(opts.types ?? [])) byType[t] = { count: 0, bytes: 0 };
    const q = this.#blobs()
      .count({ count: '*' })
      .select({ bytes: sizeSum(this.#knex, this.dialect, this.#cols.size, this.#sizeKind) });
    if (this.#cols.type !== undefined) q.select({ type: this.#cols.type }).groupBy(this.#cols.type);
    if (typeCol !== undefined) q.whereIn(typeCol, uniq(opts.types ?? []));
    const rows = (await q) as Record<string, unknown>[];
    let count = 0;
    let bytes = 0;
    for (const r of rows) {
      const c = toSafeNumber(r.count, 'row count');
      if (c === 0) continue;
      const b = toSafeNumber(r.bytes, 'byte sum');
      const type = toText(r.type);
      byType[type] = { count: c, bytes: b };
      count += c;
      bytes += b;
    }
    return { count, bytes, byType };
  }

  /** The subset of `keys` that have a row: one query per `KEY_BATCH` keys. Byte-exact. */
  async referenced(keys: string[]): Promise<Set<string>> {
    const found = new Set<string>();
    const unique = uniq(keys);
    const wanted = new Set(unique);
    for (let i = 0; i < unique.length; i += KEY_BATCH) {
      const batch = unique.slice(i, i + KEY_BATCH).map((k) => this.#keyParam(k));
      const rows = (await this.#blobs()
        .select({ key: this.#cols.key })
        .whereIn(this.#cols.key, batch)) as Record<string, unknown>[];
      for (const r of rows) {
        const k = toKey(r.key);
        // A case-insensitive app column may answer for another spelling; keep exact matches only.
        if (wanted.has(k)) found.add(k);
      }
    }
    return found;
  }

  /** The highest id (0 when there are no rows), within `types` when given. */
  async maxId(opts: { types?: string[] } = {}): Promise<number> {
    const typeCol = this.#typeColumn(opts.types);
    const q = this.#blobs().max({ max: this.#cols.id });
    if (typeCol !== undefined) q.whereIn(typeCol, uniq(opts.types ?? []));
    const row = (await q.first()) as Record<string, unknown> | undefined;
    return toSafeNumber(row?.max ?? 0, `${this.table} max id`);
  }

  /** Rows within `types` and `id <= upToId` (NULL-id rows included), all of them: see `MetaStore.count`. */
  async count(opts: { types?: string[]; upToId?: number; shard?: ShardSpec } = {}): Promise<number> {
    const typeCol = this.#typeColumn(opts.types);
    const { upToId, shard } = opts;
    if (upToId !== undefined && !Number.isSafeInteger(upToId)) {
      throw new ConfigError('upToId', `must be an integer, got ${upToId}`);
    }
    checkShard(shard);
    const counted = async (filter: (q: Knex.QueryBuilder) => void): Promise<number> => {
      const q = this.#blobs().count({ n: '*' });
      if (typeCol !== undefined) q.whereIn(typeCol, uniq(opts.types ?? []));
      filter(q);
      const row = (await q.first()) as Record<string, unknown> | undefined;
      return toSafeNumber(row?.n ?? 0, 'row count');
    };
    const inShard = (q: Knex.QueryBuilder) => {
      if (shard !== undefined && shard.count > 1)
        q.whereRaw('?? % ? = ?', [this.#cols.id, shard.count, shard.index]);
    };
    if (upToId === undefined && shard === undefined) return counted(() => {});
    let n = await counted((q) => {
      if (upToId !== undefined) q.where(this.#cols.id, '<=', upToId);
      else q.whereNotNull(this.#cols.id);
      inShard(q);
    });
    // Rows with a NULL id belong to no shard: the first shard counts them.
    if (this.#idNullable && (shard === undefined || shard.index === 0)) {
      n += await counted((q) => q.whereNull(this.#cols.id));
    }
    return n;
  }

  /**
   * Keys held by more than one row, compared byte for byte: see
   * `MetaStore.duplicateKeys`. Two grouping scans of the table (a count and
   * the samples) plus one lookup of the samples' ids. blobshift's own table
   * has a unique key and is not queried.
   */
  async duplicateKeys(opts: DuplicateKeysOptions = {}): Promise<DuplicateKeys> {
    const limit = opts.limit ?? 10;
    if (!Number.isSafeInteger(limit) || limit < 0) {
      throw new ConfigError('limit', `must be a non-negative integer, got ${limit}`);
    }
    if (!this.readOnly) return { count: 0, samples: [] };
    const typeCol = this.#typeColumn(opts.types);
    const types = uniq(opts.types ?? []);
    const keyCol = this.#cols.key;
    const idCol = this.#cols.id;
    const exact = exactKeyExpr(this.dialect, this.#keyType);
    const groups = (columns: (Knex.Raw | string)[]) => {
      const q = this.#blobs()
        .select(columns)
        .whereNotNull(keyCol)
        .groupByRaw(exact, [keyCol])
        .havingRaw('COUNT(*) > 1');
      if (typeCol !== undefined) q.whereIn(typeCol, types);
      return q;
    };
    const counted = (await this.#knex
      .count({ n: '*' })
      .from(groups([this.#knex.raw(`${exact} AS k`, [keyCol])]).as('dups'))
      .first()) as Record<string, unknown> | undefined;
    const count = toSafeNumber(counted?.n ?? 0, 'duplicate key count');
    if (count === 0 || limit === 0) return { count, samples: [] };
    const first = (await groups([
      this.#knex.raw(`${exact} AS k`, [keyCol]),
      this.#knex.raw('MIN(??) AS first_id', [idCol]),
    ])
      .orderBy('first_id', 'asc')
      .limit(limit)) as { k: unknown }[];
    const keys = first.map((r) => toKey(r.k));
    const ids = new Map<string, number[]>(keys.map((k) => [k, []]));
    const lookup = this.#blobs()
      .select({ id: idCol, key: keyCol })
      .whereIn(
        keyCol,
        keys.map((k) => this.#keyParam(k)),
      );
    if (typeCol !== undefined) lookup.whereIn(typeCol, types);
    for (const r of (await lookup) as Record<string, unknown>[]) {
      // A case-insensitive column answers for other spellings too: keep the exact key's rows.
      const list = ids.get(toKey(r.key));
      if (list !== undefined && r.id !== null && r.id !== undefined) {
        list.push(toSafeNumber(r.id, `${this.table} id`));
      }
    }
    return {
      count,
      samples: keys.map((key) => ({ key, ids: (ids.get(key) ?? []).sort((a, b) => a - b) })),
    };
  }

  async getRun(name: string, shard: string): Promise<RunState | undefined> {
    const row = await this.#runs().where({ name, shard }).first();
    return row === undefined ? undefined : rowToRun(row as Record<string, unknown>);
  }

  async saveRun(state: RunState): Promise<void> {
    await this.#runs().insert(runToRow(state)).onConflict(['name', 'shard']).merge();
  }

  async deleteRun(name: string, shard: string): Promise<boolean> {
    const n = await this.#runs().where({ name, shard }).del();
    return Number(n) > 0;
  }

  async listRuns(): Promise<RunState[]> {
    const rows = (await this.#runs()
      .select('*')
      .orderBy([
        { column: 'name', order: 'asc' },
        { column: 'shard', order: 'asc' },
      ])) as Record<string, unknown>[];
    return rows.map(rowToRun);
  }

  /** Destroys the knex instance if `open` created it; a passed-in instance stays open. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#owned) await this.#knex.destroy();
  }
}
