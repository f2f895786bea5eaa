/**
 * The config file (`blobshift.config.json`): read, validate, and build the
 * metadata store and backends from it.
 *
 * - Every object is strict: an unknown key is a `ConfigError` naming its path,
 *   with a did-you-mean from the allowed keys.
 * - `$NAME` and `${NAME}` in string values come from the environment (a
 *   whole value as is; inside a URL percent-encoded); unset is a
 *   `ConfigError` naming NAME and the field. `$$` is a literal `$`. Number
 *   and boolean fields also take their value as a string, so they can come
 *   from the environment.
 * - Relative paths (an `fs` root, a SQLite filename) are resolved against the
 *   config file's directory.
 * - Secrets (S3 secret keys and session tokens, database passwords, passwords
 *   inside URLs) are registered with the redactor as they are read, and never
 *   appear in a `ConfigError`. Print the config with `redact(loaded.config)`.
 * - Each backend's section, builder, description and same-place rule are
 *   its own (`lib/backends/<type>/config.ts`), listed in
 *   `lib/backends/registry.ts`; this module knows no backend by name.
 * - Heavy modules load only in the builders that need them: knex when the
 *   metadata is opened, a backend's module (the AWS SDK for S3) when it is
 *   built.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import { MigratingBlobDB } from '../app/migrating.js';
import {
  BACKEND_TYPES,
  type BackendConfig,
  backendSchema,
  createBackend,
  normalizeBackend as normalizeSection,
} from '../backends/registry.js';
import { bool, didYouMean, int, nonEmpty, strict } from '../contract/config-schema.js';
import { ConfigError, isErrnoException } from '../contract/errors.js';
import type { ColumnMap, MetaOpenOptions } from '../contract/meta.js';
import { redactString, registerSecret } from '../contract/redact.js';
import type { BlobDB } from '../contract/types.js';
import { MetaDB } from '../meta/index.js';
import { IDENTIFIER, MAX_TABLE_NAME } from '../meta/schema.js';

export { didYouMean, editDistance } from '../contract/config-schema.js';

/** The config file the CLI reads when `-c` is not given. */
export const DEFAULT_CONFIG_FILE = 'blobshift.config.json';

// ---------------------------------------------------------------------------
// Schema

const identifier = (max: number) =>
  z
    .string()
    .regex(IDENTIFIER, {
      error: 'must be a plain SQL name: letters, digits and "_", not starting with a digit',
    })
    .max(max);

const columnsSchema = strict({
  id: identifier(64),
  key: identifier(64),
  size: identifier(64),
  type: identifier(64).optional(),
  parentId: identifier(64).optional(),
  contentType: identifier(64).optional(),
  sha256: identifier(64).optional(),
  name: identifier(64).optional(),
  createdOn: identifier(64).optional(),
  expiresOn: identifier(64).optional(),
});

/** knex's pool options (tarn). */
const poolSchema = strict({
  min: int(0).optional(),
  max: int(1).optional(),
  acquireTimeoutMillis: int(1).optional(),
  createTimeoutMillis: int(1).optional(),
  destroyTimeoutMillis: int(1).optional(),
  idleTimeoutMillis: int(1).optional(),
  reapIntervalMillis: int(1).optional(),
  createRetryIntervalMillis: int(1).optional(),
  propagateCreateError: bool.optional(),
});

const sqliteConnection = strict({ filename: nonEmpty });

const mysqlConnection = strict({
  host: nonEmpty.optional(),
  port: int(1, 65535).optional(),
  user: z.string().optional(),
  password: z.string().optional(),
  database: nonEmpty.optional(),
  socketPath: nonEmpty.optional(),
  ssl: z.union([bool, z.record(z.string(), z.unknown())]).optional(),
  charset: nonEmpty.optional(),
  connectTimeout: int(1).optional(),
});

const mysqlUrl = z.string().refine((s) => /^(mysql2?|mariadb):\/\/./.test(s), {
  error: 'must be a mysql://user:password@host:port/database URL or a connection object',
});

/** TLS for PostgreSQL: `true`, or node's TLS options (PEM text for ca, cert and key). */
const pgSsl = z.union([
  bool,
  strict({
    rejectUnauthorized: bool.optional(),
    ca: nonEmpty.optional(),
    cert: nonEmpty.optional(),
    key: nonEmpty.optional(),
    passphrase: z.string().optional(),
    servername: nonEmpty.optional(),
  }),
]);

/** The pg driver's connection options (`PGPASSWORD` and the other PG* variables fill what is left out). */
const pgConnection = strict({
  host: nonEmpty.optional(),
  port: int(1, 65535).optional(),
  user: z.string().optional(),
  password: z.string().optional(),
  database: nonEmpty.optional(),
  ssl: pgSsl.optional(),
  application_name: z.string().optional(),
  options: z.string().optional(),
  connectionTimeoutMillis: int(0).optional(),
  statement_timeout: int(0).optional(),
  query_timeout: int(0).optional(),
  lock_timeout: int(0).optional(),
  idle_in_transaction_session_timeout: int(0).optional(),
  keepAlive: bool.optional(),
  keepAliveInitialDelayMillis: int(0).optional(),
});

const pgUrl = z.string().refine((s) => /^postgres(ql)?:\/\/./.test(s), {
  error:
    'must be a postgres://user@host:port/database URL (a password goes after the user, or in PGPASSWORD) or a connection object',
});

const metaCommon = {
  table: identifier(MAX_TABLE_NAME).optional(),
  columns: columnsSchema.optional(),
  runsTable: identifier(MAX_TABLE_NAME).optional(),
  pool: poolSchema.optional(),
  acquireConnectionTimeout: int(1).optional(),
  useNullAsDefault: bool.optional(),
  asyncStackTraces: bool.optional(),
};

const SQLITE_CLIENTS = ['better-sqlite3', 'sqlite3'] as const;
const MYSQL_CLIENTS = ['mysql2', 'mysql'] as const;
const PG_CLIENTS = ['pg', 'postgres', 'postgresql'] as const;
const CLIENTS = [...SQLITE_CLIENTS, ...MYSQL_CLIENTS, ...PG_CLIENTS];

const sqliteMeta = strict({
  client: z.enum(SQLITE_CLIENTS),
  connection: sqliteConnection,
  ...metaCommon,
});
const mysqlMeta = strict({
  client: z.enum(MYSQL_CLIENTS),
  connection: z.union([mysqlUrl, mysqlConnection]),
  ...metaCommon,
});
const pgMeta = strict({
  client: z.enum(PG_CLIENTS),
  connection: z.union([pgUrl, pgConnection]),
  /** The schema that holds blobshift's tables (or the mapped app table). */
  schema: identifier(63).optional(),
  /** knex's: the search_path set on every connection. */
  searchPath: z.union([nonEmpty, z.array(nonEmpty).min(1)]).optional(),
  ...metaCommon,
});

/**
 * The Redis queue of `--queue` (scale-out over workers): its URL, and its
 * password kept out of the command line (where `ps` shows it), usually as
 * `"$REDIS_PASSWORD"`.
 */
const queueSchema = strict({
  url: z
    .string()
    .refine((v) => /^rediss?:\/\/[^/]/.test(v), {
      error: 'must be a redis://HOST[:PORT][/DB] or rediss:// URL',
    })
    .optional(),
  password: nonEmpty.optional(),
});

const configSchema = strict({
  meta: z.unknown(),
  old: backendSchema.optional(),
  new: backendSchema.optional(),
  queue: queueSchema.optional(),
});

// ---------------------------------------------------------------------------
// Types

export type {
  BackendConfig,
  FsBackendConfig,
  MemoryBackendConfig,
  S3BackendConfig,
} from '../backends/registry.js';

export type MysqlConnectionConfig = z.output<typeof mysqlConnection>;
export type PgConnectionConfig = z.output<typeof pgConnection>;

/** The `meta` section, validated: clients normalised to `better-sqlite3` / `mysql2` / `pg`, paths absolute. */
export type MetaConfig = {
  table: string;
  columns?: ColumnMap;
  runsTable?: string;
  pool?: z.output<typeof poolSchema>;
  acquireConnectionTimeout?: number;
  useNullAsDefault?: boolean;
  asyncStackTraces?: boolean;
} & (
  | { client: 'better-sqlite3'; connection: { filename: string } }
  | { client: 'mysql2'; connection: string | MysqlConnectionConfig }
  | {
      client: 'pg';
      connection: string | PgConnectionConfig;
      schema?: string;
      searchPath?: string | string[];
    }
);

export type QueueConfig = z.output<typeof queueSchema>;

export interface BlobShiftConfig {
  meta: MetaConfig;
  old?: BackendConfig;
  new?: BackendConfig;
  /** The Redis queue of `--queue`: URL and password (see the README, Scaling out). */
  queue?: QueueConfig;
}

export interface ConfigOptions {
  /** The command needs `old` (backfill, check-blob-logs --migrate, cleanup-old). */
  requireOld?: boolean;
  /** The command needs `new`. */
  requireNew?: boolean;
  /** Open SQLite files that exist only (the CLI): a mistyped path is an error, not a new empty database. */
  sqliteMustExist?: boolean;
}

export interface LoadedConfig {
  /** The config file (absolute), when loaded from one. */
  readonly file: string | undefined;
  /** Relative paths were resolved against this directory. */
  readonly baseDir: string;
  /** The validated config, secrets included: print it through `redact()`. */
  readonly config: BlobShiftConfig;
  /** The knex config `openMeta` uses. */
  knexConfig(): Record<string, unknown>;
  /** Opens the metadata (lazy knex). Each call opens a new `MetaDB`; the caller closes it. */
  openMeta(): Promise<MetaDB>;
  /** The old backend, built once on first call; `undefined` when not configured. */
  buildOld(): Promise<BlobDB | undefined>;
  /** The new backend, built once on first call; `undefined` when not configured. */
  buildNew(): Promise<BlobDB | undefined>;
  /**
   * What the app reads and writes: a `MigratingBlobDB(new, old)` when both
   * are configured, else the one there is. Built from `buildOld`/`buildNew`,
   * so it shares their instances.
   */
  buildDb(): Promise<BlobDB>;
}

// ---------------------------------------------------------------------------
// Errors

type Path = readonly (string | number | symbol)[];

function formatPath(path: Path): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out === '' ? String(seg) : `.${String(seg)}`;
  }
  return out;
}

function valueAt(root: unknown, path: Path): unknown {
  let v = root;
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string | number, unknown>)[seg as string | number];
  }
  return v;
}

function describeType(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return `a ${typeof v}`;
}

/** zod's own messages start like this; anything else was written here and is kept. */
const ZOD_DEFAULT = /^(Invalid|Too (big|small)|Unrecognized)/;

function issueMessage(iss: z.core.$ZodIssue, input: unknown): { path: Path; message: string } {
  const value = valueAt(input, iss.path);
  if (iss.code !== 'unrecognized_keys' && !ZOD_DEFAULT.test(iss.message) && value !== undefined) {
    return { path: iss.path, message: iss.message };
  }
  switch (iss.code) {
    case 'unrecognized_keys':
      return { path: [...iss.path, String(iss.keys[0])], message: iss.message };
    case 'invalid_type':
      if (value === undefined) return { path: iss.path, message: `is required (${iss.expected})` };
      return { path: iss.path, message: `must be ${articled(iss.expected)}, got ${describeType(value)}` };
    case 'invalid_value':
      return { path: iss.path, message: invalidValueMessage(iss.values, value) };
    case 'invalid_union':
      return invalidUnionMessage(iss, value, input);
    case 'too_small':
      if (iss.origin === 'string' && Number(iss.minimum) === 1)
        return { path: iss.path, message: 'must not be empty' };
      return { path: iss.path, message: `must be at least ${String(iss.minimum)}, got ${String(value)}` };
    case 'too_big':
      return { path: iss.path, message: `must be at most ${String(iss.maximum)}, got ${String(value)}` };
    default:
      return { path: iss.path, message: iss.message };
  }
}

/** A `; did you mean "x"?` suffix, or nothing when no guess was found. */
function didYouMeanSuffix(guess: string | undefined): string {
  return guess !== undefined ? `; did you mean "${guess}"?` : '';
}

function invalidValueMessage(values: readonly unknown[], value: unknown): string {
  const options = values.map((x) => JSON.stringify(x)).join(', ');
  if (value === undefined) return `is required: one of ${options}`;
  const guess = typeof value === 'string' ? didYouMean(value, values.map(String)) : undefined;
  return `must be one of ${options}, got ${JSON.stringify(value)}` + didYouMeanSuffix(guess);
}

function backendTypeMessage(value: unknown): string {
  if (value === undefined) return `is required: one of ${BACKEND_TYPES.join(', ')} (memory is for tests)`;
  const guess = typeof value === 'string' ? didYouMean(value, BACKEND_TYPES) : undefined;
  return (
    `unknown backend type ${JSON.stringify(value)}; expected one of ${BACKEND_TYPES.join(', ')} ` +
    '(memory is for tests)' +
    didYouMeanSuffix(guess)
  );
}

/** Whether a union option failed because the value is of another kind (an object for a string, …). */
function isKindMismatch(option: z.core.$ZodIssue[]): boolean {
  return option.some((e) => e.code === 'invalid_type' && e.path.length === 0);
}

function invalidUnionMessage(
  iss: z.core.$ZodIssueInvalidUnion,
  value: unknown,
  input: unknown,
): { path: Path; message: string } {
  const discriminator = (iss as { discriminator?: string }).discriminator;
  if (discriminator === 'type') return { path: iss.path, message: backendTypeMessage(value) };
  // A union such as a URL or an object: report the option whose kind matches the value.
  for (const option of iss.errors) {
    if (isKindMismatch(option)) continue;
    const inner = [...option].sort(
      (a, b) => Number(b.code === 'unrecognized_keys') - Number(a.code === 'unrecognized_keys'),
    )[0];
    if (inner !== undefined) return issueMessage({ ...inner, path: [...iss.path, ...inner.path] }, input);
  }
  const kinds = iss.errors.flatMap((option) =>
    option.flatMap((e) => (e.code === 'invalid_type' && e.path.length === 0 ? [articled(e.expected)] : [])),
  );
  return { path: iss.path, message: `must be ${kinds.join(' or ')}, got ${describeType(value)}` };
}

function articled(word: string): string {
  return /^[aeiou]/.test(word) ? `an ${word}` : `a ${word}`;
}

function zodToConfigError(error: z.ZodError, input: unknown, prefix: Path = []): ConfigError {
  const issues = [...error.issues].sort(
    (a, b) => Number(b.code === 'unrecognized_keys') - Number(a.code === 'unrecognized_keys'),
  );
  const described = issues.map((iss) => issueMessage(iss, valueAt(input, []))).slice(0, 6);
  const [first, ...rest] = described;
  if (first === undefined) return new ConfigError(formatPath(prefix), 'is invalid');
  const path = formatPath([...prefix, ...first.path]);
  let message = first.message;
  for (const r of rest) message += `\n  also ${formatPath([...prefix, ...r.path])}: ${r.message}`;
  return new ConfigError(path, redactString(message));
}

// ---------------------------------------------------------------------------
// Environment and secrets

const ENV_REF = /\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))/g;
const URL_START = /^[a-z][a-z0-9+.-]*:\/\//i;

/**
 * Replaces `$NAME` and `${NAME}` in strings with environment variables, and
 * `$$` with `$`. A whole-string reference takes the value as is; inside a URL
 * (`mysql://app:$DB_PASSWORD@db/app`) the value is percent-encoded, so any
 * password fits. Throws `ConfigError` naming the variable and the field when
 * one is not set. A `$` not followed by a name stays as it is.
 */
export function substituteEnv(
  value: unknown,
  env: NodeJS.ProcessEnv = process.env,
  path: Path = [],
): unknown {
  if (typeof value === 'string') {
    const lookup = (name: string): string => {
      const got = env[name];
      if (got === undefined) {
        throw new ConfigError(
          formatPath(path),
          `the environment variable ${name} is not set (the config refers to $${name})`,
        );
      }
      return got;
    };
    const whole = /^\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))$/.exec(value);
    if (whole) return lookup((whole[1] ?? whole[2]) as string);
    const inUrl = URL_START.test(value);
    return value.replace(ENV_REF, (match, braced: string | undefined, bare: string | undefined) => {
      if (match === '$$') return '$';
      const got = lookup((braced ?? bare) as string);
      return inUrl ? encodeURIComponent(got) : got;
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => substituteEnv(v, env, [...path, i]));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = substituteEnv(v, env, [...path, k]);
    return out;
  }
  return value;
}

// The access key id is not a secret by itself, but it names the account: redacted like one.
const SECRET_KEY =
  /^(accesskeyid|secretaccesskey|sessiontoken|password|passwd|pass|secret|token|apikey|api_key)$/i;
const URL_PASSWORD = /[a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*:([^@/?#\s]+)@/gi;

/** Registers every secret-looking value (by field name, or a password inside a URL) with the redactor. */
export function registerConfigSecrets(value: unknown, key = ''): void {
  if (typeof value === 'string') {
    registerStringSecrets(value, key);
    return;
  }
  if (Array.isArray(value)) {
    for (const v of value) registerConfigSecrets(v, key);
    return;
  }
  if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if (k === 'ssl' && v !== null && typeof v === 'object') registerSslSecrets(v);
      registerConfigSecrets(v, k);
    }
  }
}

function registerStringSecrets(value: string, key: string): void {
  if (SECRET_KEY.test(key)) registerSecret(value);
  registerUrlPasswords(value);
  if (URL_START.test(value)) registerUrlQuerySecrets(value);
}

/** The password part of every `scheme://user:password@` in the string, raw and decoded. */
function registerUrlPasswords(value: string): void {
  for (const m of value.matchAll(URL_PASSWORD)) {
    const raw = m[1] as string;
    registerSecret(raw);
    try {
      registerSecret(decodeURIComponent(raw));
    } catch {
      // not percent-encoded
    }
  }
}

/** A password may also ride in the query (postgres://app@db/app?password=…). */
function registerUrlQuerySecrets(value: string): void {
  try {
    for (const [k, v] of new URL(value).searchParams) {
      if (SECRET_KEY.test(k) || /^ssl(password|key)$/i.test(k)) {
        registerSecret(v);
        registerSecret(encodeURIComponent(v));
      }
    }
  } catch {
    // not a URL after all
  }
}

/** The private parts of an `ssl` options object (key, passphrase, pfx). */
function registerSslSecrets(ssl: object): void {
  for (const [sk, sv] of Object.entries(ssl)) {
    if (sk === 'key' || sk === 'passphrase' || sk === 'pfx') registerSecret(sv);
  }
}

// ---------------------------------------------------------------------------
// Parsing

function parseMeta(raw: unknown, baseDir: string): MetaConfig {
  if (raw === undefined)
    throw new ConfigError('meta', 'is required (the metadata database: client, connection)');
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError('meta', `must be an object, got ${describeType(raw)}`);
  }
  const client = (raw as { client?: unknown }).client;
  if (client === undefined) {
    throw new ConfigError('meta.client', `is required: one of ${CLIENTS.join(', ')}`);
  }
  const parsed = parseMetaForClient(raw, client);
  const common = sharedMetaSettings(parsed);
  if (parsed.runsTable !== undefined && parsed.columns === undefined) {
    throw new ConfigError(
      'meta.runsTable',
      'applies only with meta.columns (an app table); blobshift uses <table>_runs',
    );
  }
  if (parsed.client === 'better-sqlite3' || parsed.client === 'sqlite3') {
    const filename = (parsed.connection as { filename: string }).filename;
    const resolved =
      filename === ':memory:' || filename.startsWith('file:') ? filename : resolve(baseDir, filename);
    return { ...common, client: 'better-sqlite3', connection: { filename: resolved } };
  }
  if (parsed.client === 'pg' || parsed.client === 'postgres' || parsed.client === 'postgresql') {
    const pg = parsed as z.output<typeof pgMeta>;
    return {
      ...common,
      client: 'pg',
      connection: pg.connection,
      ...(pg.schema !== undefined ? { schema: pg.schema } : {}),
      ...(pg.searchPath !== undefined ? { searchPath: pg.searchPath } : {}),
    };
  }
  return { ...common, client: 'mysql2', connection: parsed.connection as string | MysqlConnectionConfig };
}

type ParsedMeta = z.output<typeof sqliteMeta> | z.output<typeof mysqlMeta> | z.output<typeof pgMeta>;

/** Validates `meta` against the schema of its client family; an unknown client is a `ConfigError`. */
function parseMetaForClient(raw: object, client: unknown): ParsedMeta {
  if ((SQLITE_CLIENTS as readonly unknown[]).includes(client)) {
    const r = sqliteMeta.safeParse(raw);
    if (!r.success) throw zodToConfigError(r.error, raw, ['meta']);
    return r.data;
  }
  if ((MYSQL_CLIENTS as readonly unknown[]).includes(client)) {
    const r = mysqlMeta.safeParse(raw);
    if (!r.success) throw zodToConfigError(r.error, raw, ['meta']);
    return r.data;
  }
  if ((PG_CLIENTS as readonly unknown[]).includes(client)) {
    const r = pgMeta.safeParse(raw);
    if (!r.success) throw zodToConfigError(r.error, raw, ['meta']);
    // The pg driver reads the password from PGPASSWORD when the config has none.
    registerSecret(process.env.PGPASSWORD);
    return r.data;
  }
  const guess = typeof client === 'string' ? didYouMean(client, CLIENTS) : undefined;
  throw new ConfigError(
    'meta.client',
    `unknown database client ${typeof client === 'string' ? JSON.stringify(client) : describeType(client)}; ` +
      `expected one of ${CLIENTS.join(', ')}` +
      didYouMeanSuffix(guess),
  );
}

/** The settings every client shares, each only when set. */
function sharedMetaSettings(parsed: ParsedMeta) {
  return {
    table: parsed.table ?? 'blob_meta',
    ...(parsed.columns !== undefined ? { columns: parsed.columns } : {}),
    ...(parsed.runsTable !== undefined ? { runsTable: parsed.runsTable } : {}),
    ...(parsed.pool !== undefined ? { pool: parsed.pool } : {}),
    ...(parsed.acquireConnectionTimeout !== undefined
      ? { acquireConnectionTimeout: parsed.acquireConnectionTimeout }
      : {}),
    ...(parsed.useNullAsDefault !== undefined ? { useNullAsDefault: parsed.useNullAsDefault } : {}),
    ...(parsed.asyncStackTraces !== undefined ? { asyncStackTraces: parsed.asyncStackTraces } : {}),
  };
}

function normalizeBackend(
  b: { type: string } | undefined,
  baseDir: string,
  path: string,
): BackendConfig | undefined {
  return b === undefined ? undefined : normalizeSection(b, { baseDir, path });
}

/**
 * Validates a config object (already parsed from JSON). Relative paths are
 * resolved against `baseDir`. Throws `ConfigError` naming the field.
 */
export function parseConfig(
  obj: unknown,
  baseDir: string,
  opts: ConfigOptions = {},
  file?: string,
): LoadedConfig {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new ConfigError('', `the config must be a JSON object, got ${describeType(obj)}`);
  }
  const withEnv = substituteEnv(obj);
  registerConfigSecrets(withEnv);
  const top = configSchema.safeParse(withEnv);
  if (!top.success) throw zodToConfigError(top.error, withEnv);
  const meta = parseMeta(top.data.meta, baseDir);
  const config: BlobShiftConfig = { meta };
  const oldCfg = normalizeBackend(top.data.old, baseDir, 'old');
  const newCfg = normalizeBackend(top.data.new, baseDir, 'new');
  if (oldCfg !== undefined) config.old = oldCfg;
  if (newCfg !== undefined) config.new = newCfg;
  if (top.data.queue !== undefined) config.queue = top.data.queue;
  if (opts.requireOld && config.old === undefined) {
    throw new ConfigError('old', 'is required for this command (the backend blobs are copied from)');
  }
  if (opts.requireNew && config.new === undefined) {
    throw new ConfigError('new', 'is required for this command (the backend blobs are copied to)');
  }
  return new Loaded(config, baseDir, file, opts);
}

/** 1-based line and column of a character offset. */
function lineColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  const column = offset - (before.lastIndexOf('\n') + 1) + 1;
  return { line, column };
}

/**
 * A small JSON syntax scanner: each step consumes one construct or throws the
 * offset (a number) where the text stops being JSON.
 */
class JsonScanner {
  readonly #text: string;
  #i = 0;

  constructor(text: string) {
    this.#text = text;
  }

  get offset(): number {
    return this.#i;
  }

  ws(): void {
    while (this.#i < this.#text.length && /\s/.test(this.#text[this.#i] as string)) this.#i++;
  }

  fail(): never {
    throw this.#i;
  }

  /** Consumes `ch` when it is the next character. */
  #eat(ch: string): boolean {
    if (this.#text[this.#i] !== ch) return false;
    this.#i++;
    return true;
  }

  value(): void {
    this.ws();
    const c = this.#text[this.#i];
    if (c === '{') this.#object();
    else if (c === '[') this.#array();
    else if (c === '"') this.#string();
    else this.#literal();
  }

  #object(): void {
    this.#i++;
    this.ws();
    if (this.#eat('}')) return;
    for (;;) {
      this.ws();
      if (this.#text[this.#i] !== '"') this.fail();
      this.#string();
      this.ws();
      if (!this.#eat(':')) this.fail();
      this.value();
      this.ws();
      if (this.#eat(',')) continue;
      if (this.#eat('}')) return;
      this.fail();
    }
  }

  #array(): void {
    this.#i++;
    this.ws();
    if (this.#eat(']')) return;
    for (;;) {
      this.value();
      this.ws();
      if (this.#eat(',')) continue;
      if (this.#eat(']')) return;
      this.fail();
    }
  }

  #string(): void {
    this.#i++;
    while (this.#i < this.#text.length) {
      const c = this.#text[this.#i] as string;
      if (c === '"') {
        this.#i++;
        return;
      }
      if (c === '\\') {
        this.#escape();
        continue;
      }
      if (c < ' ') this.fail();
      this.#i++;
    }
    this.fail();
  }

  /** A backslash escape inside a string, at the backslash. */
  #escape(): void {
    const n = this.#text[this.#i + 1];
    if (n === 'u') {
      if (!/^[0-9a-fA-F]{4}$/.test(this.#text.slice(this.#i + 2, this.#i + 6))) this.fail();
      this.#i += 6;
      return;
    }
    if (n !== undefined && '"\\/bfnrt'.includes(n)) {
      this.#i += 2;
      return;
    }
    this.fail();
  }

  #literal(): void {
    const lit = /^(true|false|null|-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?)/.exec(
      this.#text.slice(this.#i, this.#i + 400),
    );
    if (!lit) this.fail();
    this.#i += (lit as RegExpExecArray)[0].length;
  }
}

/** The offset of the first JSON syntax error (a small scanner, for messages without a position). */
export function jsonErrorOffset(text: string): number {
  const scanner = new JsonScanner(text);
  try {
    scanner.value();
    scanner.ws();
    if (scanner.offset < text.length) scanner.fail();
  } catch (at) {
    if (typeof at === 'number') return Math.min(at, text.length);
    throw at;
  }
  return text.length;
}

/** Parses JSON text; a syntax error becomes a `ConfigError` with line and column (and no quoted content). */
export function parseJsonText(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    const pos = /at position (\d+)/.exec(msg);
    const offset = pos ? Number(pos[1]) : jsonErrorOffset(text);
    const { line, column } = lineColumn(text, offset);
    // V8 quotes the text near the error; keep only its description.
    const why = msg
      .replace(/^(Unexpected token '.'|Unexpected token), .*$/s, '$1')
      .replace(/ in JSON at position \d+.*$/s, '')
      .replace(/^Unexpected end of JSON input$/, 'unexpected end of input');
    throw new ConfigError('', `${file}:${line}:${column}: not valid JSON: ${why}`, { cause: err });
  }
}

/**
 * Reads and validates a config file. A missing file is a `ConfigError` that
 * names it and says `-c` chooses another; invalid JSON gives line and column.
 */
export async function loadConfig(file: string, opts: ConfigOptions = {}): Promise<LoadedConfig> {
  const abs = resolve(file);
  let text: string;
  try {
    text = await readFile(abs, 'utf8');
  } catch (err) {
    if (isErrnoException(err, 'ENOENT')) {
      throw new ConfigError('', `config file ${abs} not found (use -c FILE to choose another)`, {
        cause: err,
      });
    }
    const code = isErrnoException(err) ? err.code : undefined;
    throw new ConfigError('', `cannot read config file ${abs}${code ? ` (${code})` : ''}`, { cause: err });
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const obj = parseJsonText(text, abs);
  return parseConfig(obj, dirname(abs), opts, abs);
}

// ---------------------------------------------------------------------------
// Builders

/** What `MetaDB.open` takes from the `meta` section besides the knex config. */
export function metaOpenOptions(m: MetaConfig): MetaOpenOptions {
  return {
    table: m.table,
    ...(m.columns !== undefined ? { columns: m.columns } : {}),
    ...(m.runsTable !== undefined ? { runsTable: m.runsTable } : {}),
    ...(m.client === 'pg' && m.schema !== undefined ? { schema: m.schema } : {}),
  };
}

class Loaded implements LoadedConfig {
  readonly file: string | undefined;
  readonly baseDir: string;
  readonly config: BlobShiftConfig;
  readonly #opts: ConfigOptions;
  #old: Promise<BlobDB | undefined> | undefined;
  #new: Promise<BlobDB | undefined> | undefined;
  #db: Promise<BlobDB> | undefined;

  constructor(config: BlobShiftConfig, baseDir: string, file: string | undefined, opts: ConfigOptions) {
    this.config = config;
    this.baseDir = baseDir;
    this.file = file;
    this.#opts = opts;
  }

  knexConfig(): Record<string, unknown> {
    const m = this.config.meta;
    const out: Record<string, unknown> = { client: m.client };
    if (m.client === 'better-sqlite3') {
      out.connection = {
        filename: m.connection.filename,
        ...(this.#opts.sqliteMustExist ? { options: { fileMustExist: true } } : {}),
      };
    } else {
      out.connection = typeof m.connection === 'string' ? m.connection : { ...m.connection };
    }
    if (m.client === 'pg' && m.searchPath !== undefined) out.searchPath = m.searchPath;
    if (m.pool !== undefined) out.pool = { ...m.pool };
    if (m.acquireConnectionTimeout !== undefined) out.acquireConnectionTimeout = m.acquireConnectionTimeout;
    if (m.useNullAsDefault !== undefined) out.useNullAsDefault = m.useNullAsDefault;
    if (m.asyncStackTraces !== undefined) out.asyncStackTraces = m.asyncStackTraces;
    return out;
  }

  async openMeta(): Promise<MetaDB> {
    const m = this.config.meta;
    return MetaDB.open(this.knexConfig(), metaOpenOptions(m));
  }

  buildOld(): Promise<BlobDB | undefined> {
    const cfg = this.config.old;
    this.#old ??= cfg === undefined ? Promise.resolve(undefined) : createBackend(cfg);
    return this.#old;
  }

  buildNew(): Promise<BlobDB | undefined> {
    const cfg = this.config.new;
    this.#new ??= cfg === undefined ? Promise.resolve(undefined) : createBackend(cfg);
    return this.#new;
  }

  buildDb(): Promise<BlobDB> {
    this.#db ??= (async () => {
      const [oldDb, newDb] = await Promise.all([this.buildOld(), this.buildNew()]);
      if (oldDb !== undefined && newDb !== undefined) {
        return new MigratingBlobDB(newDb, oldDb);
      }
      const one = newDb ?? oldDb;
      if (one === undefined) {
        throw new ConfigError('new', 'no backend is configured: add "new" (and "old" during a migration)');
      }
      return one;
    })();
    return this.#db;
  }
}

// ---------------------------------------------------------------------------
// Describing and comparing backends (each backend's own, through the registry)

export { describeBackend, sameLocation } from '../backends/registry.js';
