/**
 * blobshift's own metadata schema, kept by knex migrations from an in-code
 * migration source. The version table is `<table>_migrations` (and knex's
 * lock table `<table>_migrations_lock`), never knex's default
 * `knex_migrations`, which the application's own migrations may own. On
 * PostgreSQL every table may live in a named schema (`meta.schema`): each
 * function here takes it and names it in every statement.
 */
import type { Knex } from 'knex';
import { ConfigError, errorMessage, PreflightError } from '../contract/errors.js';

/** SQL identifiers blobshift accepts for table and column names. */
export const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * The longest table name accepted: PostgreSQL identifiers stop at 63 bytes
 * (MySQL's at 64) and blobshift derives `<table>_migrations_lock` from it.
 */
export const MAX_TABLE_NAME = 63 - '_migrations_lock'.length;

/** Throws `ConfigError` (naming `path`) unless `name` is a plain SQL identifier that fits. */
export function validateIdentifier(path: string, name: unknown, max = 64): string {
  if (typeof name !== 'string' || !IDENTIFIER.test(name)) {
    throw new ConfigError(
      path,
      `${JSON.stringify(name)} is not a valid SQL name: use letters, digits and "_", not starting with a digit`,
    );
  }
  if (name.length > max) {
    throw new ConfigError(path, `"${name}" is ${name.length} characters long; the limit is ${max}`);
  }
  return name;
}

export type Dialect = 'sqlite' | 'mysql' | 'pg';

/** The clients blobshift opens, for messages. */
export const SUPPORTED_CLIENTS = 'better-sqlite3 (SQLite), mysql2 (MySQL/MariaDB) or pg (PostgreSQL)';

/** Which of blobshift's dialects a knex instance speaks; `ConfigError` for others. */
export function dialectOf(knex: Knex): Dialect {
  const client = knex.client as { dialect?: string; driverName?: string; config?: { client?: unknown } };
  const name = String(client.dialect ?? client.driverName ?? client.config?.client ?? '');
  if (name === 'sqlite3' || name === 'better-sqlite3' || name === 'sqlite') return 'sqlite';
  if (name === 'mysql' || name === 'mysql2') return 'mysql';
  if (name === 'postgresql' || name === 'postgres' || name === 'pg') return 'pg';
  throw new ConfigError(
    'meta.client',
    `the database client "${name}" is not supported; use ${SUPPORTED_CLIENTS}`,
  );
}

/** The schema builder, in `schema` when one is named (PostgreSQL). */
export function schemaBuilder(knex: Knex, schema: string | undefined): Knex.SchemaBuilder {
  return schema === undefined ? knex.schema : knex.schema.withSchema(schema);
}

/** A query on `table`, in `schema` when one is named (PostgreSQL). */
export function tableQuery(knex: Knex, table: string, schema: string | undefined): Knex.QueryBuilder {
  return schema === undefined ? knex(table) : knex(table).withSchema(schema);
}

/** `schema.table` or `table`, for messages and SQL shown to the user (PostgreSQL quoting). */
export function qualified(table: string, schema: string | undefined): string {
  return schema === undefined ? table : `${schema}.${table}`;
}

/** Names derived from the metadata table's name, and the schema that holds them (PostgreSQL). */
export interface TableNames {
  blobs: string;
  runs: string;
  migrations: string;
  lock: string;
  schema?: string | undefined;
}

export function ownTableNames(table: string, schema?: string): TableNames {
  return {
    blobs: table,
    runs: `${table}_runs`,
    migrations: `${table}_migrations`,
    lock: `${table}_migrations_lock`,
    schema,
  };
}

/** The run-state table for a mapped app table: it has its own migrations. */
export function runsOnlyTableNames(runsTable: string, schema?: string): Omit<TableNames, 'blobs'> {
  return {
    runs: runsTable,
    migrations: `${runsTable}_migrations`,
    lock: `${runsTable}_migrations_lock`,
    schema,
  };
}

interface InCodeMigration {
  name: string;
  up(knex: Knex): Promise<void>;
  down(knex: Knex): Promise<void>;
}

function mysqlTableOptions(t: Knex.CreateTableBuilder, dialect: Dialect): void {
  if (dialect !== 'mysql') return;
  t.engine('InnoDB');
  t.charset('utf8mb4');
  // Byte comparison everywhere: types and names never fold case, as on SQLite.
  t.collate('utf8mb4_bin');
}

// MySQL commits DDL at once, so a crash mid-migration can leave some tables
// created; each step skips a table that exists, so the rerun completes it.
// (PostgreSQL and SQLite run each migration in a transaction.)
async function createRunsTable(
  knex: Knex,
  runs: string,
  dialect: Dialect,
  schema: string | undefined,
): Promise<void> {
  if (await schemaBuilder(knex, schema).hasTable(runs)) return;
  await schemaBuilder(knex, schema).createTable(runs, (t) => {
    mysqlTableOptions(t, dialect);
    t.string('name', 255).notNullable();
    t.string('shard', 64).notNullable().defaultTo('');
    t.string('status', 32).notNullable();
    t.bigInteger('low_water_mark').notNullable().defaultTo(0);
    t.text('counts', 'mediumtext').notNullable();
    t.text('logs', 'mediumtext').notNullable();
    t.text('options', 'mediumtext').notNullable();
    t.integer('attempts').notNullable().defaultTo(0);
    t.integer('exit_code').nullable();
    t.datetime('started_at', { precision: 3 }).notNullable();
    t.datetime('updated_at', { precision: 3 }).notNullable();
    t.datetime('finished_at', { precision: 3 }).nullable();
    t.text('extra', 'longtext').notNullable();
    t.primary(['name', 'shard'], `${runs}_pkey`);
  });
}

/**
 * The key column of blobshift's own table: compared and ordered byte for
 * byte everywhere, as S3 lists. MySQL: VARBINARY (its text collations fold
 * case or pad spaces). PostgreSQL: text in the "C" collation (byte order and
 * byte equality for UTF-8; readable in psql, joinable with the app's text
 * columns; the database must be UTF8, checked at open). SQLite: TEXT, whose
 * default BINARY collation compares bytes.
 */
function keyColumn(t: Knex.CreateTableBuilder, dialect: Dialect): void {
  if (dialect === 'mysql') t.specificType('key', 'varbinary(1024)').notNullable();
  else if (dialect === 'pg') t.specificType('key', 'text COLLATE "C"').notNullable();
  else t.text('key').notNullable();
}

/** The migrations of blobshift's own schema, oldest first. Never reorder or edit a shipped one. */
export function ownMigrations(names: TableNames, dialect: Dialect): InCodeMigration[] {
  return [
    {
      name: '001_blob_meta',
      async up(knex) {
        if (await schemaBuilder(knex, names.schema).hasTable(names.blobs)) {
          await createRunsTable(knex, names.runs, dialect, names.schema);
          return;
        }
        await schemaBuilder(knex, names.schema).createTable(names.blobs, (t) => {
          mysqlTableOptions(t, dialect);
          t.bigIncrements('id').primary();
          keyColumn(t, dialect);
          t.string('parent_id', 255).notNullable().defaultTo('');
          t.string('type', 255).notNullable();
          t.string('name', 1024).notNullable().defaultTo('');
          t.bigInteger('content_length').notNullable();
          t.string('content_type', 255).nullable();
          t.specificType('sha256', 'char(64)').nullable();
          t.datetime('created_on', { precision: 3 }).notNullable();
          t.datetime('expires_on', { precision: 3 }).nullable();
          t.unique(['key'], { indexName: `${names.blobs}_key_unique` });
          t.index(['type', 'id'], `${names.blobs}_type_id`);
        });
        await createRunsTable(knex, names.runs, dialect, names.schema);
      },
      async down(knex) {
        await schemaBuilder(knex, names.schema).dropTableIfExists(names.runs);
        await schemaBuilder(knex, names.schema).dropTableIfExists(names.blobs);
      },
    },
  ];
}

/** The migrations of a run-state table kept beside an app's own (read-only) table. */
export function runsOnlyMigrations(names: Omit<TableNames, 'blobs'>, dialect: Dialect): InCodeMigration[] {
  return [
    {
      name: '001_runs',
      async up(knex) {
        await createRunsTable(knex, names.runs, dialect, names.schema);
      },
      async down(knex) {
        await schemaBuilder(knex, names.schema).dropTableIfExists(names.runs);
      },
    },
  ];
}

function migrationSource(migrations: InCodeMigration[]): Knex.MigrationSource<InCodeMigration> {
  return {
    getMigrations: async () => migrations,
    getMigrationName: (m) => m.name,
    getMigration: async (m) => ({ up: (k: Knex) => m.up(k), down: (k: Knex) => m.down(k) }),
  };
}

/** How long `ensureSchema` waits for a lock another process may hold before calling it stale. */
export const LOCK_GRACE_MS = 3000;

function staleLockError(lock: string, target: string, cause?: unknown): PreflightError {
  return new PreflightError(
    target,
    `the schema migration lock in ${lock} is held (is_locked = 1): a migration crashed or is still ` +
      `running. If no other blobshift process is migrating this database, clear it with: ` +
      `UPDATE ${lock} SET is_locked = 0`,
    { cause },
  );
}

async function lockHeld(knex: Knex, lock: string, schema: string | undefined): Promise<boolean> {
  if (!(await schemaBuilder(knex, schema).hasTable(lock))) return false;
  const rows: { is_locked: unknown }[] = await tableQuery(knex, lock, schema).select('is_locked');
  return rows.some((r) => Number(r.is_locked) === 1);
}

/**
 * Two processes that start on a fresh database at once may each find knex's
 * lock table empty and each insert its row. knex then takes the lock only
 * where exactly one row flips to locked, so with two rows every migration,
 * now and later, fails as "already locked". This keeps the first row (the
 * one any lock taken was taken on: later rows only come from that race) and
 * deletes the others.
 */
async function keepOneLockRow(knex: Knex, lock: string, schema: string | undefined): Promise<void> {
  if (!(await schemaBuilder(knex, schema).hasTable(lock))) return;
  const rows = (await tableQuery(knex, lock, schema).select('index').orderBy('index')) as {
    index: unknown;
  }[];
  const first = rows[0];
  if (first === undefined || rows.length === 1) return;
  await tableQuery(knex, lock, schema)
    .where('index', '>', first.index as number)
    .del();
}

/**
 * Two processes creating the same table at once: MySQL and SQLite say it
 * already exists; PostgreSQL may instead trip on a unique index of its
 * catalogue (of relations, or of types).
 */
function lostCreateRace(err: unknown): boolean {
  const text = errorMessage(err);
  return /already exists/i.test(text) || /pg_(class_relname|type_typname)_nsp_index/.test(text);
}

/**
 * Brings the schema to the latest version. A second call with nothing to do
 * changes nothing (and takes no lock). Fails fast with `PreflightError` when
 * migrations are pending and the migration lock stays held past a short grace
 * period (a crash left it): the message names the SQL that clears it.
 */
export async function ensureSchema(
  knex: Knex,
  names: Omit<TableNames, 'blobs'>,
  migrations: InCodeMigration[],
  target: string,
  graceMs = LOCK_GRACE_MS,
): Promise<void> {
  const config: Knex.MigratorConfig = {
    tableName: names.migrations,
    migrationSource: migrationSource(migrations),
    ...(names.schema !== undefined ? { schemaName: names.schema } : {}),
  };
  const lock = qualified(names.lock, names.schema);
  const deadline = Date.now() + graceMs;
  for (;;) {
    const listed = await pendingMigrations(knex, config, names, target, deadline);
    if (listed === 'retry') continue;
    if (listed.pending.length === 0) return;
    await keepOneLockRow(knex, names.lock, names.schema);
    if (await lockHeld(knex, names.lock, names.schema)) {
      if (Date.now() >= deadline) throw staleLockError(lock, target);
      await waitForLock();
      continue;
    }
    if (await migrateToLatest(knex, config, lock, target, deadline)) return;
  }
}

/** The pause between two looks at a held migration lock. */
function waitForLock(): Promise<void> {
  return new Promise((r) => setTimeout(r, 200));
}

/**
 * The migrations not yet applied, or `'retry'` when two processes opening a
 * fresh database raced to create the version tables (before the deadline).
 */
async function pendingMigrations(
  knex: Knex,
  config: Knex.MigratorConfig,
  names: Omit<TableNames, 'blobs'>,
  target: string,
  deadline: number,
): Promise<{ pending: unknown[] } | 'retry'> {
  try {
    const listed = (await knex.migrate.list(config)) as [unknown[], unknown[]];
    return { pending: listed[1] };
  } catch (err) {
    if (lostCreateRace(err) && Date.now() < deadline) return 'retry';
    throw new PreflightError(
      target,
      `cannot read the schema version from ${qualified(names.migrations, names.schema)}: ${errorMessage(err)}`,
      {
        cause: err,
      },
    );
  }
}

/**
 * Applies the pending migrations: true when done, false when the attempt is
 * to be retried (the lock was taken meanwhile, or a create race was lost).
 */
async function migrateToLatest(
  knex: Knex,
  config: Knex.MigratorConfig,
  lock: string,
  target: string,
  deadline: number,
): Promise<boolean> {
  try {
    await knex.migrate.latest(config);
    return true;
  } catch (err) {
    if (err instanceof Error && err.name === 'MigrationLocked') {
      // Another process took the lock between our check and our attempt.
      if (Date.now() >= deadline) throw staleLockError(lock, target, err);
      await waitForLock();
      return false;
    }
    if (lostCreateRace(err) && Date.now() < deadline) return false;
    throw new PreflightError(target, `creating or migrating the schema failed: ${errorMessage(err)}`, {
      cause: err,
    });
  }
}

/** The columns of blobshift's own blob table. */
export const OWN_BLOB_COLUMNS = [
  'id',
  'key',
  'parent_id',
  'type',
  'name',
  'content_length',
  'content_type',
  'sha256',
  'created_on',
  'expires_on',
] as const;

/** Refuses a table that has the name but not the shape of blobshift's blob table. */
export async function checkOwnColumns(
  knex: Knex,
  table: string,
  target: string,
  schema?: string,
): Promise<void> {
  const info = await tableQuery(knex, table, schema).columnInfo();
  const missing = OWN_BLOB_COLUMNS.filter((c) => !(c in info));
  if (missing.length > 0) {
    throw new PreflightError(
      target,
      `table ${qualified(table, schema)} exists but is not a blobshift metadata table (no column ${missing.join(', ')}); ` +
        'choose another meta.table, or map an app table read-only with meta.columns',
    );
  }
}

/** For `create: false`: the schema must already be there and current. */
export async function checkSchema(
  knex: Knex,
  names: Partial<TableNames> & Omit<TableNames, 'blobs'>,
  migrations: InCodeMigration[],
  target: string,
): Promise<void> {
  for (const t of [names.blobs, names.runs, names.migrations]) {
    if (t !== undefined && !(await schemaBuilder(knex, names.schema).hasTable(t))) {
      throw new PreflightError(
        target,
        `table ${qualified(t, names.schema)} does not exist (open with create: true to create the schema)`,
      );
    }
  }
  const done: { name: string }[] = await tableQuery(knex, names.migrations, names.schema).select('name');
  const have = new Set(done.map((r) => r.name));
  const missing = migrations.filter((m) => !have.has(m.name)).map((m) => m.name);
  if (missing.length > 0) {
    throw new PreflightError(
      target,
      `the schema is behind this version of blobshift (missing ${missing.join(', ')}); open with create: true to migrate it`,
    );
  }
}
