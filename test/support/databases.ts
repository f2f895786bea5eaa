/**
 * The metadata databases the suites run on: SQLite always (a file in the
 * test's directory), MariaDB when BLOBSHIFT_TEST_MYSQL is set, PostgreSQL
 * when BLOBSHIFT_TEST_PG is set. Each opens blobshift's own tables under a
 * unique name (the servers are shared) and drops them afterwards.
 */
import { join } from 'node:path';
import type { Knex } from 'knex';
import type { MetaOpenOptions } from '../../lib/contract/meta.js';
import { createKnex, MetaDB } from '../../lib/meta/index.js';
import { announce, MYSQL_URL, PG_URL, uniqueName } from './env.js';

export interface MetaDatabase {
  /** `SQLite`, `MariaDB` or `PostgreSQL`, for test titles. */
  name: string;
  dialect: 'sqlite' | 'mysql' | 'pg';
  /** The knex config of this database (`dir` holds the SQLite file). */
  knexConfig(dir: string): Knex.Config;
  /** The `meta` section of a CLI config file for `table` (SQLite: `./meta.sqlite` beside it). */
  configSection(table: string): Record<string, unknown>;
  /** Opens blobshift's tables under a unique name (or `opts.table`); `drop` removes them. */
  open(dir: string, opts?: MetaOpenOptions): Promise<OpenedMeta>;
}

export interface OpenedMeta {
  meta: MetaDB;
  /** Closes `meta` if still open and drops the tables it created. */
  drop(): Promise<void>;
}

/** Drops blobshift's four tables for `table`. */
export async function dropOwnTables(config: Knex.Config, table: string): Promise<void> {
  const k = await createKnex(config);
  try {
    for (const t of [`${table}_runs`, table, `${table}_migrations`, `${table}_migrations_lock`]) {
      await k.schema.dropTableIfExists(t);
    }
  } finally {
    await k.destroy();
  }
}

function server(
  name: string,
  dialect: 'mysql' | 'pg',
  client: string,
  url: string,
  prefix: string,
): MetaDatabase {
  const config = (): Knex.Config => ({ client, connection: url });
  return {
    name,
    dialect,
    knexConfig: config,
    configSection: (table) => ({ client, connection: url, table }),
    async open(_dir, opts = {}) {
      const table = opts.table ?? uniqueName(prefix);
      const meta = await MetaDB.open(config(), { ...opts, table });
      return {
        meta,
        async drop() {
          await meta.close();
          if (!opts.columns) await dropOwnTables(config(), table);
        },
      };
    },
  };
}

const sqlite: MetaDatabase = {
  name: 'SQLite',
  dialect: 'sqlite',
  knexConfig: (dir) => ({ client: 'better-sqlite3', connection: { filename: join(dir, 'meta.sqlite') } }),
  configSection: (table) => ({ client: 'better-sqlite3', connection: { filename: './meta.sqlite' }, table }),
  async open(dir, opts = {}) {
    const meta = await MetaDB.open(sqlite.knexConfig(dir), opts);
    return { meta, drop: () => meta.close() };
  },
};

/** SQLite, then MariaDB and PostgreSQL where their variable is set. */
export const META_DATABASES: MetaDatabase[] = [sqlite];
export const SQLITE = sqlite;
export const MARIADB: MetaDatabase | undefined = MYSQL_URL
  ? server('MariaDB', 'mysql', 'mysql2', MYSQL_URL, 'bs_')
  : undefined;
export const POSTGRES: MetaDatabase | undefined = PG_URL
  ? server('PostgreSQL', 'pg', 'pg', PG_URL, 'bs_')
  : undefined;
if (MARIADB) META_DATABASES.push(MARIADB);
if (POSTGRES) META_DATABASES.push(POSTGRES);

/** Says once which databases a suite leaves out. */
export function announceDatabases(what: string): void {
  if (!MARIADB) announce('BLOBSHIFT_TEST_MYSQL', `MariaDB (${what})`);
  if (!POSTGRES) announce('BLOBSHIFT_TEST_PG', `PostgreSQL (${what})`);
}
