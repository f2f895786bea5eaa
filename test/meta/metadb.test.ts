/**
 * The MetaDB suite: one function composing the topics in ./metadb/, run on SQLite (a temporary file), on
 * MariaDB/MySQL when BLOBSHIFT_TEST_MYSQL is set and on PostgreSQL when
 * BLOBSHIFT_TEST_PG is set.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import type { Knex } from 'knex';
import { ConfigError } from '../../lib/contract/errors.js';
import { createKnex, MetaDB, parseMysqlUrl } from '../../lib/meta/index.js';
import { keyProblem, readSize, toKey } from '../../lib/meta/values.js';
import { announce, MYSQL_URL, PG_URL, uniqueName } from '../support/env.js';
import { type Target, useMetaDB } from './metadb/context.js';
import { collect, PG_CI_COLLATION, row, sampleRun } from './metadb/helpers.js';
import { mappedTableTests } from './metadb/mapped.js';
import { messyTableTests } from './metadb/messy.js';
import { lookupTests, rowTests } from './metadb/rows.js';
import { runStateTests } from './metadb/runs.js';
import { schemaTests } from './metadb/schema.js';
import { walkTests } from './metadb/walks.js';

function describeMetaDB(name: string, target: Target): void {
  describe(`MetaDB on ${name}`, function () {
    this.timeout(60_000);
    const db = useMetaDB(target);
    for (const topic of [
      rowTests,
      walkTests,
      lookupTests,
      schemaTests,
      mappedTableTests,
      messyTableTests,
      runStateTests,
    ]) {
      topic(db);
    }
  });
}

// SQLite: a temporary file per run.
{
  let dir = '';
  describeMetaDB('SQLite', {
    dialect: 'sqlite',
    config: () => ({ client: 'better-sqlite3', connection: { filename: join(dir, 'meta.sqlite') } }),
    async freshDatabase() {
      const file = join(dir, `${uniqueName('fresh')}.sqlite`);
      return {
        config: { client: 'better-sqlite3', connection: { filename: file } },
        drop: () => rm(file, { force: true }),
      };
    },
    async setup() {
      dir = await mkdtemp(join(tmpdir(), 'blobshift-meta-'));
    },
    async teardown() {
      await rm(dir, { recursive: true, force: true });
    },
  });

  describe('MetaDB on SQLite: connection settings', () => {
    let sdir = '';
    before(async () => {
      sdir = await mkdtemp(join(tmpdir(), 'blobshift-meta-'));
    });
    after(async () => {
      await rm(sdir, { recursive: true, force: true });
    });

    it('uses WAL, a busy timeout and foreign keys on every connection', async () => {
      const meta = await MetaDB.open({ client: 'sqlite3', connection: { filename: join(sdir, 'w.sqlite') } });
      try {
        const [mode] = (await meta.knex.raw('PRAGMA journal_mode')) as { journal_mode: string }[];
        expect(mode?.journal_mode).to.equal('wal');
        const [busy] = (await meta.knex.raw('PRAGMA busy_timeout')) as { timeout: number }[];
        expect(busy?.timeout).to.equal(10_000);
        const [fk] = (await meta.knex.raw('PRAGMA foreign_keys')) as { foreign_keys: number }[];
        expect(fk?.foreign_keys).to.equal(1);
      } finally {
        await meta.close();
      }
    });

    it('lets two connections share the file (an app and a backfill)', async () => {
      const file = join(sdir, 'shared.sqlite');
      const app = await MetaDB.open({ client: 'better-sqlite3', connection: { filename: file } });
      const tool = await MetaDB.open({ client: 'better-sqlite3', connection: { filename: file } });
      try {
        await Promise.all(Array.from({ length: 50 }, (_, i) => app.add(row(`s/${i}`))));
        const seen = (await collect(tool.walk({ chunkSize: 20 }))).flat();
        expect(seen.length).to.equal(50);
      } finally {
        await app.close();
        await tool.close();
      }
    });

    it('with fileMustExist, refuses a missing file with a ConfigError naming the field', async () => {
      const file = join(sdir, 'typo.sqlite');
      const err = await MetaDB.open({
        client: 'better-sqlite3',
        connection: { filename: file, options: { fileMustExist: true } } as Knex.Config['connection'],
      }).catch((e: unknown) => e);
      expect(err).to.be.instanceOf(ConfigError);
      expect((err as ConfigError).path).to.equal('meta.connection.filename');
      expect((err as Error).message).to.include('does not exist');
    });

    it('refuses unsupported clients', async () => {
      const err = await MetaDB.open({ client: 'mssql', connection: 'mssql://x@127.0.0.1/db' }).catch(
        (e: unknown) => e,
      );
      expect(err).to.be.instanceOf(ConfigError);
      expect((err as ConfigError).path).to.equal('meta.client');
    });

    it('parses mysql URLs', () => {
      expect(
        parseMysqlUrl('mysql://app:p%40ss@db.example:3307/blobs?ssl=true&connectTimeout=5000'),
      ).to.deep.equal({
        host: 'db.example',
        port: 3307,
        user: 'app',
        password: 'p@ss',
        database: 'blobs',
        ssl: true,
        connectTimeout: 5000,
      });
    });
  });
}

if (MYSQL_URL) {
  const url = MYSQL_URL;
  const databases: string[] = [];
  describeMetaDB('MariaDB', {
    dialect: 'mysql',
    config: () => ({ client: 'mysql2', connection: url }),
    async freshDatabase() {
      const db = uniqueName('blobshift_');
      const k = await createKnex({ client: 'mysql2', connection: url });
      try {
        await k.raw(`CREATE DATABASE \`${db}\` CHARACTER SET utf8mb4`);
      } finally {
        await k.destroy();
      }
      databases.push(db);
      return {
        config: { client: 'mysql2', connection: { ...parseMysqlUrl(url), database: db } },
        async drop() {
          const d = await createKnex({ client: 'mysql2', connection: url });
          try {
            await d.raw(`DROP DATABASE IF EXISTS \`${db}\``);
          } finally {
            await d.destroy();
          }
        },
      };
    },
    async setup() {},
    async teardown() {},
  });
} else {
  announce('BLOBSHIFT_TEST_MYSQL', 'MetaDB on MariaDB/MySQL');
}

/** Runs `fn` with a knex on the PostgreSQL test server, destroyed afterwards. */
async function withPg<T>(url: string, fn: (k: Knex) => Promise<T>): Promise<T> {
  const k = await createKnex({ client: 'pg', connection: url, pool: { min: 0, max: 2 } });
  try {
    return await fn(k);
  } finally {
    await k.destroy();
  }
}

/** A URL for another database on the same PostgreSQL server. */
function pgUrlFor(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

if (PG_URL) {
  const url = PG_URL;
  describeMetaDB('PostgreSQL', {
    dialect: 'pg',
    config: () => ({ client: 'pg', connection: url }),
    async freshDatabase() {
      const db = uniqueName('blobshift_');
      await withPg(url, (k) => k.raw(`CREATE DATABASE "${db}"`));
      return {
        config: { client: 'pg', connection: pgUrlFor(url, db) },
        drop: () => withPg(url, (k) => k.raw(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`)),
      };
    },
    async setup() {
      await withPg(url, (k) =>
        k
          .raw(
            `CREATE COLLATION IF NOT EXISTS "${PG_CI_COLLATION}" (provider = icu, locale = 'und-u-ks-level2', deterministic = false)`,
          )
          // Another test process may create it at the same moment.
          .catch((err: unknown) => {
            if (!/already exists|duplicate key/.test(String(err))) throw err;
          }),
      );
    },
    async teardown() {},
  });

  describe('MetaDB on PostgreSQL: schemas, connection settings, types', function () {
    this.timeout(60_000);
    let k: Knex;
    const schemas: string[] = [];

    before(async () => {
      k = await createKnex({ client: 'pg', connection: url, pool: { min: 0, max: 4 } });
    });
    after(async () => {
      for (const s of schemas) await k.raw('DROP SCHEMA IF EXISTS ?? CASCADE', [s]);
      await k.destroy();
    });

    async function newSchema(): Promise<string> {
      const schema = uniqueName('bs_schema_');
      await k.raw('CREATE SCHEMA ??', [schema]);
      schemas.push(schema);
      return schema;
    }

    async function tablesIn(schema: string): Promise<string[]> {
      const r = (await k.raw(
        'SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1',
        [schema],
      )) as { rows: { table_name: string }[] };
      return r.rows.map((x) => x.table_name);
    }

    it('keeps every table in the named schema, whatever the search_path; the same name elsewhere is another table', async () => {
      const [a, b] = [await newSchema(), await newSchema()];
      const one = await MetaDB.open({ client: 'pg', connection: url }, { schema: a });
      const two = await MetaDB.open({ client: 'pg', connection: url, searchPath: [b] }, { schema: b });
      try {
        expect(one.schema).to.equal(a);
        await one.add(row('in/a'));
        await two.add(row('in/b'));
        await two.add(row('in/b2'));
        expect(await tablesIn(a)).to.deep.equal([
          'blob_meta',
          'blob_meta_migrations',
          'blob_meta_migrations_lock',
          'blob_meta_runs',
        ]);
        expect(await tablesIn(b)).to.deep.equal(await tablesIn(a));
        expect((await one.get('in/a'))?.key).to.equal('in/a');
        expect(await one.get('in/b')).to.equal(undefined);
        expect(await two.count()).to.equal(2);
        await one.saveRun(sampleRun('default', ''));
        expect(await two.getRun('default', '')).to.equal(undefined);
        const again = await MetaDB.open({ client: 'pg', connection: url }, { schema: a, create: false });
        expect((await again.estimate()).count).to.equal(1);
        await again.close();
      } finally {
        await one.close();
        await two.close();
      }
      // Nothing landed in the connection's own schema.
      const pub = (await k.raw('SELECT current_schema() AS s')) as { rows: { s: string }[] };
      expect(await tablesIn(pub.rows[0]?.s as string)).to.not.include.members(['blob_meta_migrations_lock']);
    });

    it("without a schema, uses knex's searchPath (the first schema of the connection's search_path)", async () => {
      const s = await newSchema();
      const meta = await MetaDB.open(
        { client: 'pg', connection: url, searchPath: [s, 'public'] },
        { table: 'sp' },
      );
      try {
        expect(meta.schema).to.equal(undefined);
        await meta.add(row('sp/1'));
        expect(await tablesIn(s)).to.include.members(['sp', 'sp_runs', 'sp_migrations']);
      } finally {
        await meta.close();
      }
    });

    it('maps an app table in a named schema, with its run state beside it', async () => {
      const s = await newSchema();
      await k.schema.withSchema(s).createTable('attachments', (t) => {
        t.bigIncrements('id').primary();
        t.text('storage_key').notNullable();
        t.bigInteger('byte_size').notNullable();
      });
      await k('attachments')
        .withSchema(s)
        .insert([
          { storage_key: 'x/1', byte_size: 3 },
          { storage_key: 'x/2', byte_size: 4 },
        ]);
      const meta = await MetaDB.open(
        { client: 'pg', connection: url },
        { schema: s, table: 'attachments', columns: { id: 'id', key: 'storage_key', size: 'byte_size' } },
      );
      try {
        expect(
          (await collect(meta.walk({ chunkSize: 1 }))).flat().map((m) => [m.key, m.contentLength]),
        ).to.deep.equal([
          ['x/1', 3],
          ['x/2', 4],
        ]);
        expect(await meta.estimate()).to.deep.equal({
          count: 2,
          bytes: 7,
          byType: { '': { count: 2, bytes: 7 } },
        });
        expect(await tablesIn(s)).to.include('blobshift_meta_runs');
      } finally {
        await meta.close();
      }
      const missing = await MetaDB.open(
        { client: 'pg', connection: url },
        { schema: s, table: 'Attachments', columns: { id: 'id', key: 'storage_key', size: 'byte_size' } },
      ).catch((e: unknown) => e);
      expect(missing).to.be.instanceOf(ConfigError);
      expect((missing as Error).message).to.include('is it attachments?');
    });

    it('refuses a schema that does not exist, and the schema option on other databases', async () => {
      const name = uniqueName('nope_');
      const err = await MetaDB.open({ client: 'pg', connection: url }, { schema: name }).catch(
        (e: unknown) => e,
      );
      expect(err).to.be.instanceOf(ConfigError);
      expect((err as ConfigError).path).to.equal('meta.schema');
      expect((err as Error).message).to.include(`CREATE SCHEMA "${name}"`);
      const other = await MetaDB.open(
        { client: 'better-sqlite3', connection: { filename: ':memory:' } },
        { schema: 'x' },
      ).catch((e: unknown) => e);
      expect((other as ConfigError).path).to.equal('meta.schema');
    });

    it('creates the key column as text in the "C" collation and the id as a bigint identity', async () => {
      const s = await newSchema();
      const meta = await MetaDB.open({ client: 'pg', connection: url }, { schema: s });
      try {
        const cols = (await k.raw(
          'SELECT column_name, data_type, collation_name, column_default FROM information_schema.columns WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position',
          [s, 'blob_meta'],
        )) as {
          rows: {
            column_name: string;
            data_type: string;
            collation_name: string | null;
            column_default: string | null;
          }[];
        };
        const byName = new Map(cols.rows.map((c) => [c.column_name, c]));
        expect(byName.get('key')).to.include({ data_type: 'text', collation_name: 'C' });
        expect(byName.get('id')?.data_type).to.equal('bigint');
        expect(byName.get('id')?.column_default).to.match(/^nextval/);
        expect(byName.get('created_on')?.data_type).to.equal('timestamp with time zone');
        // Keys sort as S3 lists them: by UTF-8 bytes.
        const keys = ['a', 'B', 'a/b', 'a-c', 'é', 'z', 'Z', '😀', '\uFFFD'];
        for (const key of keys) await meta.add(row(key));
        const sorted = (await k(`${s}.blob_meta`).select('key').orderBy('key')) as { key: string }[];
        expect(sorted.map((r) => r.key)).to.deep.equal(
          [...keys].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y))),
        );
      } finally {
        await meta.close();
      }
    });

    it('names its connections "blobshift" in pg_stat_activity unless the URL names them', async () => {
      const seen = async (config: Knex.Config): Promise<string[]> => {
        const meta = await MetaDB.open(config, { table: uniqueName('an') });
        try {
          const r = (await meta.knex.raw(
            'SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()',
          )) as {
            rows: { application_name: string }[];
          };
          return r.rows.map((x) => x.application_name);
        } finally {
          for (const t of ['_runs', '_migrations', '_migrations_lock', '']) {
            await meta.knex.schema.dropTableIfExists(`${meta.table}${t}`);
          }
          await meta.close();
        }
      };
      expect(await seen({ client: 'pg', connection: url })).to.deep.equal(['blobshift']);
      const named = new URL(url);
      named.searchParams.set('application_name', 'my-backfill');
      expect(await seen({ client: 'postgresql', connection: named.toString() })).to.deep.equal([
        'my-backfill',
      ]);
    });

    it("reads an app table's timestamp without time zone as UTC, whatever the process's zone", async () => {
      const s = await newSchema();
      await k.schema.withSchema(s).createTable('files', (t) => {
        t.increments('id').primary();
        t.text('path').notNullable();
        t.integer('size').notNullable();
        t.specificType('made', 'timestamp without time zone').notNullable();
        t.specificType('gone', 'timestamp with time zone').nullable();
      });
      await k.raw(
        `INSERT INTO ??.files (path, size, made, gone) VALUES ('f', 1, '2024-02-29 12:34:56.789', '2030-01-01 00:00:00+02')`,
        [s],
      );
      const meta = await MetaDB.open(
        { client: 'pg', connection: url },
        {
          schema: s,
          table: 'files',
          columns: { id: 'id', key: 'path', size: 'size', createdOn: 'made', expiresOn: 'gone' },
        },
      );
      try {
        const got = await meta.get('f');
        expect(got?.createdOn.toISOString()).to.equal('2024-02-29T12:34:56.789Z');
        expect(got?.expiresOn?.toISOString()).to.equal('2029-12-31T22:00:00.000Z');
      } finally {
        await meta.close();
      }
    });

    it("refuses blobshift's own table in a database that is not UTF8", async () => {
      const db = uniqueName('bs_ascii_');
      await k.raw(
        `CREATE DATABASE "${db}" ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'`,
      );
      try {
        const err = await MetaDB.open({ client: 'pg', connection: pgUrlFor(url, db) }).catch(
          (e: unknown) => e,
        );
        expect(err).to.be.instanceOf(ConfigError);
        expect((err as Error).message).to.match(/encoding is SQL_ASCII.*ENCODING 'UTF8'/);
      } finally {
        await k.raw(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
      }
    });
  });
} else {
  announce('BLOBSHIFT_TEST_PG', 'MetaDB on PostgreSQL');
}

describe('metadata values: keys and sizes read strictly', () => {
  it('reads a NULL key as empty text, never as "null"', () => {
    expect(toKey(null)).to.equal('');
    expect(toKey(undefined)).to.equal('');
    expect(toKey(Buffer.from('a/ü'))).to.equal('a/ü');
    expect(keyProblem(null)).to.equal('the key is NULL');
    expect(keyProblem('')).to.equal('the key is empty');
    expect(keyProblem(Buffer.alloc(0))).to.equal('the key is empty');
    expect(keyProblem('a')).to.equal(undefined);
    // A bad key is judged where it is used, not here.
    expect(keyProblem('../x')).to.equal(undefined);
  });

  it('takes safe non-negative integers as numbers, bigints or digit-only text', () => {
    for (const [value, size] of [
      [0, 0],
      [5, 5],
      [5.0, 5],
      [Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
      [7n, 7],
      ['0', 0],
      ['00012', 12],
      ['9007199254740991', Number.MAX_SAFE_INTEGER],
      [Buffer.from('42'), 42],
    ] as [unknown, number][]) {
      expect(readSize(value), String(value)).to.deep.equal({ size });
    }
  });

  it('refuses NULL, blank, signed, fractional, hex, exponent and out-of-range sizes, saying why', () => {
    for (const [value, why] of [
      [null, 'the size is NULL'],
      [undefined, 'the size is NULL'],
      ['', 'the size is empty'],
      ['  ', 'the size is blank'],
      ['0x5', 'the size "0x5" is not a non-negative integer'],
      ['5e0', 'the size "5e0" is not a non-negative integer'],
      [' 5', 'the size " 5" is not a non-negative integer'],
      ['5 ', 'the size "5 " is not a non-negative integer'],
      ['-1', 'the size "-1" is not a non-negative integer'],
      ['+5', 'the size "+5" is not a non-negative integer'],
      ['5.5', 'the size "5.5" is not a non-negative integer'],
      ['5.0', 'the size "5.0" is not a non-negative integer'],
      [-1, 'the size -1 is not a non-negative integer'],
      [5.5, 'the size 5.5 is not a non-negative integer'],
      [Number.NaN, 'the size NaN is not a non-negative integer'],
      [Number.POSITIVE_INFINITY, 'the size Infinity is not a non-negative integer'],
      [-3n, 'the size -3 is not a non-negative integer'],
      [2 ** 60, `the size ${2 ** 60} is beyond the safe integer range (2^53)`],
      [2n ** 60n, `the size ${2n ** 60n} is beyond the safe integer range (2^53)`],
      ['9007199254740993', 'the size "9007199254740993" is beyond the safe integer range (2^53)'],
      [true, 'the size true (boolean) is not a non-negative integer'],
      ['x'.repeat(100), `the size "${'x'.repeat(40)}…" is not a non-negative integer`],
    ] as [unknown, string][]) {
      const got = readSize(value);
      expect(got.invalid, String(value)).to.equal(why);
      expect(got.size, String(value)).to.be.NaN;
    }
  });
});
