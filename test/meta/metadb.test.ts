/**
 * The MetaDB suite: one function, run on SQLite (a temporary file), on
 * MariaDB/MySQL when BLOBSHIFT_TEST_MYSQL is set and on PostgreSQL when
 * BLOBSHIFT_TEST_PG is set.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import fc from 'fast-check';
import type { Knex } from 'knex';
import { BlobShiftError, ConfigError, PreflightError, ReadOnlyError } from '../../lib/contract/errors.js';
import type { ColumnMap, MetaOpenOptions, NewBlobMeta, RunState } from '../../lib/contract/meta.js';
import type { BlobMeta } from '../../lib/contract/types.js';
import { createKnex, emptyCounts, MetaDB, parseMysqlUrl } from '../../lib/meta/index.js';
import { keyProblem, readSize, toKey } from '../../lib/meta/values.js';
import { announce, MYSQL_URL, PG_URL, uniqueName } from '../support/env.js';

/** A case-insensitive collation the PostgreSQL suite creates (ICU, non-deterministic). */
const PG_CI_COLLATION = 'blobshift_test_ci';

interface Target {
  dialect: 'sqlite' | 'mysql' | 'pg';
  /** A knex config for the database the suite runs in. */
  config(): Knex.Config;
  /** A config for a fresh, empty database (dropped by `dropDatabase`). */
  freshDatabase(): Promise<{ config: Knex.Config; drop(): Promise<void> }>;
  setup(): Promise<void>;
  teardown(): Promise<void>;
}

const TYPES = ['attachment', 'image', 'avatar', 'export'];

function row(key: string, over: Partial<NewBlobMeta> = {}): NewBlobMeta {
  return { key, parentId: 'case-1', type: 'attachment', contentLength: 10, ...over };
}

async function collect(it: AsyncIterable<BlobMeta[]>): Promise<BlobMeta[][]> {
  const chunks: BlobMeta[][] = [];
  for await (const c of it) chunks.push(c);
  return chunks;
}

async function walkIds(meta: MetaDB, opts: Parameters<MetaDB['walk']>[0]): Promise<number[]> {
  return (await collect(meta.walk(opts))).flat().map((m) => m.id);
}

/** A text key column that compares case-insensitively, as apps' columns often do. */
function caseInsensitiveColumn(
  t: Knex.CreateTableBuilder,
  dialect: Target['dialect'],
  column: string,
): Knex.ColumnBuilder {
  if (dialect === 'sqlite') return t.specificType(column, 'TEXT COLLATE NOCASE');
  if (dialect === 'pg') return t.specificType(column, `varchar(255) COLLATE "${PG_CI_COLLATION}"`);
  return t.string(column, 255).collate('utf8mb4_general_ci');
}

function describeMetaDB(name: string, target: Target): void {
  describe(`MetaDB on ${name}`, function () {
    this.timeout(60_000);
    let raw: Knex;
    const opened: MetaDB[] = [];
    const tables: string[] = [];

    before(async () => {
      await target.setup();
      raw = await createKnex(target.config());
    });
    after(async () => {
      await raw.destroy();
      await target.teardown();
    });
    afterEach(async () => {
      for (const m of opened.splice(0)) await m.close();
      for (const t of tables.splice(0).reverse()) await raw.schema.dropTableIfExists(t);
    });

    /** Registers blobshift's tables for `table` to be dropped after the test. */
    function track(table: string): void {
      tables.push(table, `${table}_runs`, `${table}_migrations`, `${table}_migrations_lock`);
    }

    async function open(opts: MetaOpenOptions = {}, knexOrConfig?: Knex | Knex.Config): Promise<MetaDB> {
      const table = opts.table ?? uniqueName('bm');
      if (!opts.columns) track(table);
      const meta = await MetaDB.open(knexOrConfig ?? target.config(), { ...opts, table });
      opened.push(meta);
      return meta;
    }

    it('adds, gets and deletes rows, with ids as numbers and dates as Dates', async () => {
      const meta = await open();
      expect(meta.readOnly).to.equal(false);
      expect(meta.dialect).to.equal(target.dialect);
      const createdOn = new Date('2024-02-29T12:34:56.789Z');
      const expiresOn = new Date('2030-01-01T00:00:00.001Z');
      const added = await meta.add({
        key: 'cases/1/report.pdf',
        parentId: 'case-1',
        type: 'attachment',
        name: 'report.pdf',
        contentLength: 12345,
        contentType: 'application/pdf',
        sha256: 'a'.repeat(64),
        createdOn,
        expiresOn,
      });
      expect(added.id).to.be.a('number').and.greaterThan(0);
      const got = await meta.get('cases/1/report.pdf');
      expect(got).to.deep.equal({
        id: added.id,
        key: 'cases/1/report.pdf',
        parentId: 'case-1',
        type: 'attachment',
        name: 'report.pdf',
        contentLength: 12345,
        contentType: 'application/pdf',
        sha256: 'a'.repeat(64),
        createdOn,
        expiresOn,
      });
      expect(got?.createdOn).to.be.instanceOf(Date);
      const minimal = await meta.add(row('k2'));
      expect(minimal.id).to.be.greaterThan(added.id);
      const gotMinimal = await meta.get('k2');
      expect(gotMinimal?.name).to.equal('');
      expect(gotMinimal?.contentType).to.equal(null);
      expect(gotMinimal?.sha256).to.equal(null);
      expect(gotMinimal?.expiresOn).to.equal(null);
      expect(gotMinimal?.createdOn.getTime()).to.be.closeTo(Date.now(), 60_000);

      expect(await meta.get('missing')).to.equal(undefined);
      expect(await meta.delete('cases/1/report.pdf')).to.equal(true);
      expect(await meta.delete('cases/1/report.pdf')).to.equal(false);
      expect(await meta.get('cases/1/report.pdf')).to.equal(undefined);
      expect(await meta.get('k2')).to.deep.equal(gotMinimal);
    });

    it('refuses a second add of a key, invalid keys and bad rows', async () => {
      const meta = await open();
      await meta.add(row('dup'));
      const err = await meta.add(row('dup')).catch((e: unknown) => e);
      expect(err).to.be.instanceOf(BlobShiftError);
      expect((err as Error).message).to.match(/already exists.*upsert/);
      for (const bad of ['', '/abs', 'a//b', 'a/../b', 'nul\u0000']) {
        const e = await meta.add(row(bad)).catch((x: unknown) => x);
        expect(e, JSON.stringify(bad)).to.have.property('code', 'E_INVALID_KEY');
      }
      const neg = await meta.add(row('neg', { contentLength: -1 })).catch((e: unknown) => e);
      expect(neg).to.be.instanceOf(BlobShiftError);
      const sha = await meta.add(row('sha', { sha256: 'XYZ' })).catch((e: unknown) => e);
      expect(sha).to.be.instanceOf(BlobShiftError);
      expect((await meta.estimate()).count).to.equal(1);
    });

    it('upserts by key, keeping the id and the creation date unless given', async () => {
      const meta = await open();
      const first = await meta.upsert(row('u/1', { contentLength: 5, sha256: '1'.repeat(64) }));
      await meta.add(row('u/2'));
      const second = await meta.upsert(
        row('u/1', {
          contentLength: 7,
          sha256: '2'.repeat(64),
          type: 'image',
          name: 'n',
          contentType: 'image/png',
        }),
      );
      expect(second.id).to.equal(first.id);
      expect(second.contentLength).to.equal(7);
      expect(second.sha256).to.equal('2'.repeat(64));
      expect(second.type).to.equal('image');
      expect(second.contentType).to.equal('image/png');
      expect(second.createdOn.getTime()).to.equal(first.createdOn.getTime());
      const when = new Date('2020-05-05T05:05:05.005Z');
      const third = await meta.upsert(row('u/1', { createdOn: when }));
      expect(third.id).to.equal(first.id);
      expect(third.createdOn.getTime()).to.equal(when.getTime());
      expect(await meta.get('u/1')).to.deep.equal(third);
      expect((await meta.estimate()).count).to.equal(2);
    });

    it('keeps keys that differ only in case or trailing space distinct', async () => {
      const meta = await open();
      const keys = ['a/File', 'a/file', 'a/FILE', 'a/file ', 'a/file  ', 'a/fïle', 'a/fi\u0308le'];
      const ids = new Map<string, number>();
      for (const [i, k] of keys.entries()) ids.set(k, (await meta.add(row(k, { contentLength: i }))).id);
      expect(new Set(ids.values()).size).to.equal(keys.length);
      for (const [i, k] of keys.entries()) {
        const got = await meta.get(k);
        expect(got?.key, JSON.stringify(k)).to.equal(k);
        expect(got?.contentLength).to.equal(i);
      }
      expect(await meta.get('a/fILE')).to.equal(undefined);
      expect(await meta.get('a/file   ')).to.equal(undefined);
      const ref = await meta.referenced(['a/file', 'a/file ', 'a/fIle', 'A/file']);
      expect([...ref].sort()).to.deep.equal(['a/file', 'a/file ']);
      await meta.upsert(row('a/file ', { contentLength: 99 }));
      expect((await meta.get('a/file'))?.contentLength).to.equal(1);
      expect((await meta.get('a/file '))?.contentLength).to.equal(99);
      expect(await meta.delete('a/FILE')).to.equal(true);
      expect((await meta.get('a/File'))?.key).to.equal('a/File');
    });

    it('round-trips unicode keys, names and types', async () => {
      const meta = await open();
      const items = [
        { key: 'ünïcødé/日本語/ファイル.txt', name: 'Résumé – 履歴書 😀.pdf', type: 'pièce-jointe' },
        { key: 'emoji/😀/🧪', name: '🧪'.repeat(50), type: '画像' },
        { key: 'rtl/שלום/مرحبا', name: 'שלום', type: 'attachment' },
      ];
      for (const it of items) await meta.add(row(it.key, { name: it.name, type: it.type }));
      for (const it of items) {
        const got = await meta.get(it.key);
        expect(got?.name).to.equal(it.name);
        expect(got?.type).to.equal(it.type);
      }
      const walked = (await collect(meta.walk({ chunkSize: 2, types: ['画像', 'pièce-jointe'] }))).flat();
      expect(walked.map((m) => m.key)).to.deep.equal([items[0]?.key, items[1]?.key]);
      expect(await meta.referenced(items.map((i) => i.key))).to.deep.equal(new Set(items.map((i) => i.key)));
      const est = await meta.estimate();
      expect(Object.keys(est.byType).sort()).to.deep.equal(['attachment', 'pièce-jointe', '画像'].sort());
    });

    describe('walks', () => {
      let meta: MetaDB;
      let all: BlobMeta[];

      before(async () => {
        const table = uniqueName('bmw');
        meta = await MetaDB.open(target.config(), { table });
        const rows: NewBlobMeta[] = [];
        for (let i = 0; i < 437; i++) {
          rows.push({
            key: `walk/${i.toString(36)}/${uniqueName('k')}`,
            parentId: `p${i % 13}`,
            type: TYPES[(i * 7919) % 5 === 4 ? 0 : (i * 31) % 4] as string,
            contentLength: (i * 104729) % 100_000,
          });
        }
        expect(await meta.addMany(rows)).to.equal(437);
        // Delete a few to leave gaps in the id sequence.
        for (const r of rows.filter((_, i) => i % 17 === 3)) await meta.delete(r.key);
        all = (await collect(meta.walk({ chunkSize: 1000 }))).flat();
      });
      after(async () => {
        const table = meta.table;
        await meta.close();
        for (const t of [`${table}_runs`, table, `${table}_migrations`, `${table}_migrations_lock`]) {
          await raw.schema.dropTableIfExists(t);
        }
      });

      it('yields every row once, in ascending id order, in chunks of chunkSize', async () => {
        expect(all.length).to.equal(437 - 26);
        const chunks = await collect(meta.walk({ chunkSize: 50 }));
        expect(chunks.map((c) => c.length)).to.deep.equal([50, 50, 50, 50, 50, 50, 50, 50, 11]);
        const ids = chunks.flat().map((m) => m.id);
        expect(ids).to.deep.equal(all.map((m) => m.id));
        expect(ids).to.deep.equal([...ids].sort((a, b) => a - b));
        expect(new Set(ids).size).to.equal(ids.length);
      });

      it('resumes after an id', async () => {
        const mid = all[200] as BlobMeta;
        const rest = await walkIds(meta, { chunkSize: 33, afterId: mid.id });
        expect(rest).to.deep.equal(all.slice(201).map((m) => m.id));
        expect(
          await walkIds(meta, { chunkSize: 10, afterId: (all[all.length - 1] as BlobMeta).id }),
        ).to.deep.equal([]);
      });

      it('type filters and shards cover every matching row exactly once', async () => {
        await fc.assert(
          fc.asyncProperty(
            fc.subarray(TYPES.concat('nonexistent')),
            fc.integer({ min: 1, max: 7 }),
            fc.integer({ min: 1, max: 120 }),
            fc.integer({ min: 0, max: 400 }),
            async (types, count, chunkSize, skip) => {
              const afterId = skip === 0 ? 0 : (all[Math.min(skip, all.length - 1)] as BlobMeta).id;
              const expected = all
                .filter((m) => (types.length === 0 || types.includes(m.type)) && m.id > afterId)
                .map((m) => m.id);
              const union: number[] = [];
              for (let index = 0; index < count; index++) {
                const chunks = await collect(
                  meta.walk({ chunkSize, types, shard: { index, count }, afterId }),
                );
                for (const c of chunks) {
                  expect(c.length).to.be.within(1, chunkSize);
                  for (const m of c) {
                    expect(m.id % count).to.equal(index);
                    if (types.length > 0) expect(types).to.include(m.type);
                  }
                }
                const ids = chunks.flat().map((m) => m.id);
                expect(ids).to.deep.equal([...ids].sort((a, b) => a - b));
                union.push(...ids);
              }
              expect(new Set(union).size).to.equal(union.length); // disjoint
              expect(union.sort((a, b) => a - b)).to.deep.equal(expected); // complete
            },
          ),
          { numRuns: 20 },
        );
      });

      it('merges per-type cursors into full chunks in id order', async () => {
        const types = ['image', 'attachment'];
        const chunks = await collect(meta.walk({ chunkSize: 16, types }));
        const expected = all.filter((m) => types.includes(m.type));
        expect(chunks.slice(0, -1).every((c) => c.length === 16)).to.equal(true);
        expect(chunks.flat()).to.deep.equal(expected);
        expect(await walkIds(meta, { chunkSize: 16, types: ['image', 'image', 'attachment'] })).to.deep.equal(
          expected.map((m) => m.id),
        );
      });

      it('walks id ranges (after exclusive, upTo inclusive)', async () => {
        const a = (all[40] as BlobMeta).id;
        const b = (all[90] as BlobMeta).id;
        expect(await walkIds(meta, { chunkSize: 7, idRange: { after: a, upTo: b } })).to.deep.equal(
          all.slice(41, 91).map((m) => m.id),
        );
        expect(
          await walkIds(meta, { chunkSize: 7, idRange: { after: a, upTo: b }, types: ['avatar', 'export'] }),
        ).to.deep.equal(
          all
            .slice(41, 91)
            .filter((m) => ['avatar', 'export'].includes(m.type))
            .map((m) => m.id),
        );
        // A resume point inside the range wins over the range's start.
        const c = (all[60] as BlobMeta).id;
        expect(
          await walkIds(meta, { chunkSize: 5, idRange: { after: a, upTo: b }, afterId: c }),
        ).to.deep.equal(all.slice(61, 91).map((m) => m.id));
        expect(await walkIds(meta, { chunkSize: 5, idRange: { after: b, upTo: a } })).to.deep.equal([]);
      });

      it('refuses bad chunk sizes and shards', async () => {
        for (const opts of [
          { chunkSize: 0 },
          { chunkSize: 1.5 },
          { chunkSize: 10, shard: { index: 3, count: 3 } },
          { chunkSize: 10, shard: { index: -1, count: 3 } },
          { chunkSize: 10, shard: { index: 0, count: 0 } },
        ]) {
          const err = await collect(meta.walk(opts)).catch((e: unknown) => e);
          expect(err, JSON.stringify(opts)).to.be.instanceOf(ConfigError);
        }
      });

      it('estimates counts and bytes per type', async () => {
        const est = await meta.estimate();
        expect(est.count).to.equal(all.length);
        expect(est.bytes).to.equal(all.reduce((s, m) => s + m.contentLength, 0));
        for (const t of TYPES) {
          const rows = all.filter((m) => m.type === t);
          expect(est.byType[t], t).to.deep.equal({
            count: rows.length,
            bytes: rows.reduce((s, m) => s + m.contentLength, 0),
          });
        }
        const some = await meta.estimate({ types: ['image', 'avatar', 'nothing'] });
        const rows = all.filter((m) => m.type === 'image' || m.type === 'avatar');
        expect(some.count).to.equal(rows.length);
        expect(some.bytes).to.equal(rows.reduce((s, m) => s + m.contentLength, 0));
        expect(some.byType.nothing).to.deep.equal({ count: 0, bytes: 0 });
        expect(Object.keys(some.byType).sort()).to.deep.equal(['avatar', 'image', 'nothing']);
      });

      it('reports the highest id, within types', async () => {
        expect(await meta.maxId()).to.equal((all[all.length - 1] as BlobMeta).id);
        const images = all.filter((m) => m.type === 'image');
        expect(await meta.maxId({ types: ['image'] })).to.equal((images[images.length - 1] as BlobMeta).id);
        expect(await meta.maxId({ types: ['nothing'] })).to.equal(0);
      });
    });

    it('answers referenced() for more than 1000 keys with one query per 1000', async () => {
      const k = await createKnex(target.config());
      try {
        const meta = await open({}, k);
        const present: NewBlobMeta[] = [];
        for (let i = 0; i < 1300; i++) present.push(row(`ref/${i}`, { contentLength: i }));
        await meta.addMany(present);
        const asked: string[] = [];
        for (let i = 0; i < 2500; i++) asked.push(i % 2 === 0 ? `ref/${i}` : `absent/${i}`);
        asked.push('ref/0', 'ref/0'); // duplicates count once
        let queries = 0;
        const onQuery = (q: { sql: string }) => {
          if (/select/i.test(q.sql)) queries++;
        };
        k.on('query', onQuery);
        const found = await meta.referenced(asked);
        k.off('query', onQuery);
        expect(queries).to.equal(3);
        const expected = asked.filter((key) => key.startsWith('ref/') && Number(key.slice(4)) < 1300);
        expect(found).to.deep.equal(new Set(expected));
        expect(await meta.referenced([])).to.deep.equal(new Set());
        await meta.close(); // a passed-in knex stays open
        expect(await k.raw('select 1')).to.not.equal(undefined);
      } finally {
        await k.destroy();
      }
    });

    it('reads 64-bit ids beyond 2^32 as numbers', async () => {
      const meta = await open();
      const big = 2 ** 40 + 7;
      await raw(meta.table).insert({
        id: big,
        key: meta.dialect === 'mysql' ? Buffer.from('big') : 'big',
        parent_id: '',
        type: 'attachment',
        name: '',
        content_length: 2 ** 35,
        created_on: new Date(),
      });
      if (meta.dialect === 'pg') {
        // A PostgreSQL sequence does not follow an id inserted by hand (blobshift never does that).
        await raw.raw(`SELECT setval(pg_get_serial_sequence(?, 'id'), ?)`, [meta.table, big]);
      }
      const got = await meta.get('big');
      expect(got?.id).to.equal(big);
      expect(got?.contentLength).to.equal(2 ** 35);
      expect(await meta.maxId()).to.equal(big);
      const next = await meta.add(row('after-big'));
      expect(next.id).to.equal(big + 1);
      expect(await walkIds(meta, { chunkSize: 10, shard: { index: big % 5, count: 5 } })).to.deep.equal([
        big,
      ]);
      expect((await meta.estimate()).bytes).to.equal(2 ** 35 + 10);
    });

    it('a second open changes nothing', async () => {
      const table = uniqueName('bm');
      const first = await open({ table });
      await first.add(row('keep/me'));
      const before = await raw(`${table}_migrations`).select('name', 'batch');
      const second = await open({ table });
      const third = await MetaDB.open(target.config(), { table, create: false });
      opened.push(third);
      expect(await raw(`${table}_migrations`).select('name', 'batch')).to.deep.equal(before);
      expect(before.map((r: { name: string }) => r.name)).to.deep.equal(['001_blob_meta']);
      expect((await second.get('keep/me'))?.key).to.equal('keep/me');
      expect((await third.estimate()).count).to.equal(1);
      const lock = await raw(`${table}_migrations_lock`).select('is_locked');
      expect(lock.map((r: { is_locked: unknown }) => Number(r.is_locked))).to.deep.equal([0]);
    });

    const serverIt = target.dialect === 'sqlite' ? () => undefined : it;
    // Server databases only: better-sqlite3 is synchronous, so one SQLite
    // connection's busy wait would block every other connection of this test
    // process (separate processes wait on each other, not on themselves).
    serverIt(
      'several processes opening a fresh table at once all open it; the migration lock keeps one row',
      async () => {
        const table = uniqueName('bmr');
        track(table);
        // knex's own lock chatter ("knex migrate:unlock") is not for blobshift's users.
        const printed: string[] = [];
        const streams = [process.stdout, process.stderr];
        const writes = streams.map((st) => st.write);
        for (const st of streams) {
          const write = st.write;
          st.write = ((chunk: unknown, ...rest: unknown[]) => {
            printed.push(String(chunk));
            return (write as (...a: unknown[]) => boolean).call(st, chunk, ...rest);
          }) as typeof st.write;
        }
        let results: PromiseSettledResult<MetaDB>[];
        try {
          results = await Promise.allSettled(
            Array.from({ length: 6 }, () => MetaDB.open(target.config(), { table })),
          );
        } finally {
          streams.forEach((st, i) => {
            st.write = writes[i] as typeof st.write;
          });
        }
        expect(printed.join('')).to.not.match(/migrate:unlock|Can't take lock/);
        for (const r of results) if (r.status === 'fulfilled') opened.push(r.value);
        const failed = results.flatMap((r) => (r.status === 'rejected' ? [String(r.reason)] : []));
        expect(failed).to.deep.equal([]);
        const lock = (await raw(`${table}_migrations_lock`).select('is_locked')) as { is_locked: unknown }[];
        expect(lock.map((r) => Number(r.is_locked))).to.deep.equal([0]);
        expect(
          ((await raw(`${table}_migrations`).select('name')) as { name: string }[]).map((r) => r.name),
        ).to.deep.equal(['001_blob_meta']);
        // And a later open still works (two lock rows made every later migration fail).
        await open({ table });
      },
    );

    it('create: false refuses a missing schema', async () => {
      const err = await MetaDB.open(target.config(), { table: uniqueName('none'), create: false }).catch(
        (e: unknown) => e,
      );
      expect(err).to.be.instanceOf(PreflightError);
      expect((err as Error).message).to.match(/does not exist/);
    });

    it('refuses invalid table names', async () => {
      for (const table of ['', 'a-b', '1abc', 'drop table x;', 'a'.repeat(49), 'x`y']) {
        const err = await MetaDB.open(target.config(), { table }).catch((e: unknown) => e);
        expect(err, table).to.be.instanceOf(ConfigError);
        expect((err as ConfigError).path).to.equal('meta.table');
      }
    });

    it('refuses a foreign table that has the name but not the shape', async () => {
      const table = uniqueName('foreign');
      track(table);
      await raw.schema.createTable(table, (t) => {
        t.increments('id');
        t.string('something');
      });
      const err = await MetaDB.open(target.config(), { table }).catch((e: unknown) => e);
      expect(err).to.be.instanceOf(PreflightError);
      expect((err as Error).message).to.match(/not a blobshift metadata table/);
    });

    it('reports a stale migration lock with the SQL that clears it, then opens once cleared', async () => {
      const table = uniqueName('bml');
      track(table);
      const lock = `${table}_migrations_lock`;
      await raw.schema.createTable(lock, (t) => {
        t.increments('index').primary();
        t.integer('is_locked');
      });
      await raw(lock).insert({ is_locked: 1 });
      const t0 = Date.now();
      const err = await MetaDB.open(target.config(), { table }).catch((e: unknown) => e);
      expect(err).to.be.instanceOf(PreflightError);
      expect((err as Error).message).to.include(`UPDATE ${lock} SET is_locked = 0`);
      expect(Date.now() - t0).to.be.below(15_000);
      expect(await raw.schema.hasTable(table)).to.equal(false);
      await raw.raw(`UPDATE ${lock} SET is_locked = 0`);
      const meta = await open({ table });
      await meta.add(row('after-lock'));
      expect((await meta.get('after-lock'))?.key).to.equal('after-lock');
    });

    it('leaves an app table and its own knex_migrations untouched', async () => {
      const fresh = await target.freshDatabase();
      const k = await createKnex(fresh.config);
      try {
        await k.schema.createTable('knex_migrations', (t) => {
          t.increments();
          t.string('name');
          t.integer('batch');
          t.timestamp('migration_time');
        });
        await k.schema.createTable('knex_migrations_lock', (t) => {
          t.increments('index').primary();
          t.integer('is_locked');
        });
        await k('knex_migrations').insert([
          { name: '20200101_app_init.js', batch: 1, migration_time: new Date('2020-01-01T00:00:00Z') },
          { name: '20210101_app_more.js', batch: 2, migration_time: new Date('2021-01-01T00:00:00Z') },
        ]);
        // The app is mid-migration: its lock is held. Ours is a different table.
        await k('knex_migrations_lock').insert({ is_locked: 1 });
        const beforeRows = await k('knex_migrations').select('*').orderBy('id');
        const beforeCols = Object.keys(await k('knex_migrations').columnInfo()).sort();

        const meta = await MetaDB.open(k, { table: 'blob_meta' });
        await meta.add(row('x'));
        await meta.close();
        const again = await MetaDB.open(fresh.config, {});
        expect((await again.get('x'))?.key).to.equal('x');
        await again.close();

        expect(await k('knex_migrations').select('*').orderBy('id')).to.deep.equal(beforeRows);
        expect(Object.keys(await k('knex_migrations').columnInfo()).sort()).to.deep.equal(beforeCols);
        const lockRows = await k('knex_migrations_lock').select('is_locked');
        expect(lockRows.map((r: { is_locked: unknown }) => Number(r.is_locked))).to.deep.equal([1]);
        expect(
          (await k('blob_meta_migrations').select('name')).map((r: { name: string }) => r.name),
        ).to.deep.equal(['001_blob_meta']);
      } finally {
        await k.destroy();
        await fresh.drop();
      }
    });

    describe("an app's own mapped table", () => {
      let appTable: string;
      let runsTable: string;
      let columns: ColumnMap;
      const appRows = [
        { path: 'files/a.txt', bytes: 10, kind: 'doc', owner: 'u1', mime: 'text/plain' },
        { path: 'files/b.png', bytes: 2000, kind: 'img', owner: 'u1', mime: 'image/png' },
        { path: 'files/B.png', bytes: 3000, kind: 'img', owner: 'u2', mime: null },
        { path: 'files/ü.bin', bytes: 5, kind: 'doc', owner: 'u3', mime: null },
      ];

      beforeEach(async () => {
        appTable = uniqueName('app');
        runsTable = uniqueName('runs');
        tables.push(appTable, runsTable, `${runsTable}_migrations`, `${runsTable}_migrations_lock`);
        await raw.schema.createTable(appTable, (t) => {
          if (target.dialect === 'mysql') {
            t.charset('utf8mb4');
            t.collate('utf8mb4_bin');
          }
          t.bigIncrements('file_id').primary();
          t.string('path', 512).notNullable().unique();
          t.bigInteger('bytes').notNullable();
          t.string('kind', 32).notNullable();
          t.string('owner', 64).notNullable();
          t.string('mime', 64).nullable();
        });
        await raw(appTable).insert(appRows);
        columns = {
          id: 'file_id',
          key: 'path',
          size: 'bytes',
          type: 'kind',
          parentId: 'owner',
          contentType: 'mime',
        };
      });

      it('walks, estimates and answers referenced/get/maxId, with defaults for unmapped columns', async () => {
        const meta = await open({ table: appTable, columns, runsTable });
        expect(meta.readOnly).to.equal(true);
        const walked = (await collect(meta.walk({ chunkSize: 3 }))).flat();
        expect(walked.map((m) => m.key)).to.deep.equal(appRows.map((r) => r.path));
        expect(walked[0]).to.deep.equal({
          id: walked[0]?.id,
          key: 'files/a.txt',
          parentId: 'u1',
          type: 'doc',
          name: '',
          contentLength: 10,
          contentType: 'text/plain',
          sha256: null,
          createdOn: new Date(0),
          expiresOn: null,
        });
        expect(
          (await collect(meta.walk({ chunkSize: 10, types: ['img'] }))).flat().map((m) => m.key),
        ).to.deep.equal(['files/b.png', 'files/B.png']);
        expect(await meta.estimate()).to.deep.equal({
          count: 4,
          bytes: 5015,
          byType: { doc: { count: 2, bytes: 15 }, img: { count: 2, bytes: 5000 } },
        });
        expect(await meta.referenced(['files/a.txt', 'files/A.txt', 'files/ü.bin', 'nope'])).to.deep.equal(
          new Set(['files/a.txt', 'files/ü.bin']),
        );
        expect((await meta.get('files/B.png'))?.contentLength).to.equal(3000);
        expect(await meta.maxId()).to.equal(walked[3]?.id);
      });

      it('works with only id, key and size mapped', async () => {
        const meta = await open({
          table: appTable,
          columns: { id: 'file_id', key: 'path', size: 'bytes' },
          runsTable,
        });
        const est = await meta.estimate();
        expect(est).to.deep.equal({ count: 4, bytes: 5015, byType: { '': { count: 4, bytes: 5015 } } });
        const walked = (await collect(meta.walk({ chunkSize: 10 }))).flat();
        expect(walked.map((m) => [m.type, m.parentId, m.contentType])).to.deep.equal(
          appRows.map(() => ['', '', null]),
        );
        const err = await collect(meta.walk({ chunkSize: 10, types: ['doc'] })).catch((e: unknown) => e);
        expect(err).to.be.instanceOf(ConfigError);
        expect((err as ConfigError).path).to.equal('meta.columns.type');
      });

      it('refuses writes with ReadOnlyError and leaves the table as it was', async () => {
        const meta = await open({ table: appTable, columns, runsTable });
        for (const attempt of [
          () => meta.add(row('files/new')),
          () => meta.upsert(row('files/a.txt')),
          () => meta.delete('files/a.txt'),
          () => meta.addMany([row('files/new')]),
          () => meta.deleteMany(['files/a.txt']),
        ]) {
          const err = await attempt().catch((e: unknown) => e);
          expect(err).to.be.instanceOf(ReadOnlyError);
          expect((err as Error).message).to.include(appTable);
        }
        expect(await raw(appTable).count({ n: '*' }).first()).to.satisfy(
          (r: { n: unknown }) => Number(r.n) === 4,
        );
      });

      it('keeps run state in its own table', async () => {
        const meta = await open({ table: appTable, columns, runsTable });
        expect(meta.runsTable).to.equal(runsTable);
        const state = sampleRun('mapped', '');
        await meta.saveRun(state);
        expect(await meta.getRun('mapped', '')).to.deep.equal(state);
        expect(await raw.schema.hasTable(`${appTable}_runs`)).to.equal(false);
      });

      it('stays byte-exact on a case-insensitive key column', async () => {
        const ci = uniqueName('appci');
        tables.push(ci);
        await raw.schema.createTable(ci, (t) => {
          t.increments('id').primary();
          caseInsensitiveColumn(t, target.dialect, 'path').notNullable();
          t.integer('bytes').notNullable();
        });
        await raw(ci).insert([
          { path: 'Docs/Readme.md', bytes: 1 },
          { path: 'docs/other.md', bytes: 2 },
        ]);
        const meta = await open({ table: ci, columns: { id: 'id', key: 'path', size: 'bytes' }, runsTable });
        // The database matches both spellings; MetaDB keeps the exact one only.
        const counted = (await raw(ci).where('path', 'docs/readme.md').count({ n: '*' })) as { n: unknown }[];
        expect(Number(counted[0]?.n)).to.equal(1);
        expect(await meta.get('docs/readme.md')).to.equal(undefined);
        expect((await meta.get('Docs/Readme.md'))?.contentLength).to.equal(1);
        expect(await meta.referenced(['docs/readme.md', 'DOCS/OTHER.MD', 'docs/other.md'])).to.deep.equal(
          new Set(['docs/other.md']),
        );
      });

      it('names a missing column or table in a ConfigError', async () => {
        const bad = await MetaDB.open(target.config(), {
          table: appTable,
          columns: { ...columns, size: 'size_bytes' },
          runsTable,
        }).catch((e: unknown) => e);
        expect(bad).to.be.instanceOf(ConfigError);
        expect((bad as ConfigError).path).to.equal('meta.columns.size');
        expect((bad as Error).message).to.include('size_bytes');
        const noTable = await MetaDB.open(target.config(), {
          table: uniqueName('missing'),
          columns,
          runsTable,
        }).catch((e: unknown) => e);
        expect(noTable).to.be.instanceOf(ConfigError);
        expect((noTable as ConfigError).path).to.equal('meta.table');
        const badName = await MetaDB.open(target.config(), {
          table: appTable,
          columns: { ...columns, key: 'path; drop table x' },
          runsTable,
        }).catch((e: unknown) => e);
        expect((badName as ConfigError).path).to.equal('meta.columns.key');
      });
    });

    describe('messy app tables', () => {
      let runsTable: string;

      beforeEach(() => {
        runsTable = uniqueName('runs');
        tables.push(runsTable, `${runsTable}_migrations`, `${runsTable}_migrations_lock`);
      });

      /** Creates an app table (dropped after the test). */
      async function appTable(build: (t: Knex.CreateTableBuilder) => void): Promise<string> {
        const table = uniqueName('messy');
        tables.push(table);
        await raw.schema.createTable(table, (t) => {
          if (target.dialect === 'mysql') {
            t.charset('utf8mb4');
            t.collate('utf8mb4_bin');
          }
          build(t);
        });
        return table;
      }

      it('reads NULL, blank and non-integer sizes, and NULL or empty keys, as invalid rows, in id order', async () => {
        const table = await appTable((t) => {
          t.bigIncrements('id').primary();
          t.string('path', 255).nullable();
          t.string('bytes', 64).nullable();
          t.string('kind', 32).notNullable();
        });
        const rows: [string | null, string | null, string | undefined][] = [
          ['ok/1', '5', undefined],
          ['s/null', null, 'the size is NULL'],
          ['s/empty', '', 'the size is empty'],
          ['s/blank', '   ', 'the size is blank'],
          ['s/hex', '0x5', 'the size "0x5" is not a non-negative integer'],
          ['s/exp', '5e0', 'the size "5e0" is not a non-negative integer'],
          ['s/space', ' 5', 'the size " 5" is not a non-negative integer'],
          ['s/neg', '-1', 'the size "-1" is not a non-negative integer'],
          ['s/frac', '5.5', 'the size "5.5" is not a non-negative integer'],
          [
            's/huge',
            '9007199254740993',
            'the size "9007199254740993" is beyond the safe integer range (2^53)',
          ],
          [null, '7', 'the key is NULL'],
          ['', '8', 'the key is empty'],
          [null, null, 'the key is NULL; the size is NULL'],
          ['ok/2', '0', undefined],
        ];
        await raw(table).insert(
          rows.map(([path, bytes], i) => ({ path, bytes, kind: i % 2 ? 'odd' : 'even' })),
        );
        const meta = await open({
          table,
          columns: { id: 'id', key: 'path', size: 'bytes', type: 'kind' },
          runsTable,
        });
        const walked = (await collect(meta.walk({ chunkSize: 4 }))).flat();
        expect(walked.map((m) => m.id)).to.deep.equal(walked.map((m) => m.id).sort((a, b) => a - b));
        expect(walked.map((m) => [m.key, m.invalid])).to.deep.equal(rows.map(([p, , why]) => [p ?? '', why]));
        for (const [i, m] of walked.entries()) {
          const [, bytes, why] = rows[i] as [string | null, string | null, string | undefined];
          if (why === undefined) {
            expect(m).to.not.have.property('invalid');
            expect(m.contentLength).to.equal(Number(bytes));
          } else if (why.includes('size')) {
            expect(m.contentLength, why).to.be.NaN;
          } else {
            expect(m.contentLength, why).to.equal(Number(bytes));
          }
        }
        const hex = await meta.get('s/hex');
        expect(hex?.invalid).to.equal('the size "0x5" is not a non-negative integer');
        expect(hex?.contentLength).to.be.NaN;
        expect(await meta.get('ok/1')).to.not.have.property('invalid');
        // The estimate counts every row and sums the sizes a walk can use.
        const est = await meta.estimate();
        expect(est.count).to.equal(rows.length);
        expect(est.bytes).to.equal(5 + 7 + 8 + 0);
        expect(await meta.count()).to.equal(rows.length);
        expect(await meta.count({ types: ['odd'] })).to.equal(7);
        expect(await meta.count({ upToId: (walked[4] as BlobMeta).id })).to.equal(5);
        expect(await meta.count({ types: ['even'], upToId: (walked[4] as BlobMeta).id })).to.equal(3);
      });

      it('reads a NULL size in an integer column as invalid, not 0', async () => {
        const table = await appTable((t) => {
          t.increments('id').primary();
          t.string('path', 255).notNullable();
          t.bigInteger('bytes').nullable();
        });
        await raw(table).insert([
          { path: 'a', bytes: 5 },
          { path: 'b', bytes: null },
          { path: 'c', bytes: -3 },
        ]);
        const meta = await open({ table, columns: { id: 'id', key: 'path', size: 'bytes' }, runsTable });
        const walked = (await collect(meta.walk({ chunkSize: 10 }))).flat();
        expect(walked.map((m) => [m.key, m.contentLength, m.invalid])).to.deep.equal([
          ['a', 5, undefined],
          ['b', Number.NaN, 'the size is NULL'],
          ['c', Number.NaN, 'the size -3 is not a non-negative integer'],
        ]);
      });

      it('reports duplicate keys byte for byte, ignoring NULL keys; counts NULL-id rows it cannot walk', async () => {
        const table = await appTable((t) => {
          t.integer('row_id').nullable();
          caseInsensitiveColumn(t, target.dialect, 'path').nullable();
          t.integer('bytes').notNullable();
          t.string('kind', 8).notNullable();
        });
        const rows: [number | null, string | null, string][] = [
          [1, 'a', 'x'],
          [2, 'A', 'x'],
          [3, 'a', 'x'],
          [4, 'b ', 'x'],
          [5, 'b', 'x'],
          [6, null, 'x'],
          [7, null, 'x'],
          [8, 'd', 'y'],
          [null, 'lost', 'x'],
          [9, 'c', 'x'],
          [10, 'd', 'z'],
          [11, 'a', 'y'],
        ];
        await raw(table).insert(rows.map(([row_id, path, kind]) => ({ row_id, path, bytes: 1, kind })));
        const meta = await open({
          table,
          columns: { id: 'row_id', key: 'path', size: 'bytes', type: 'kind' },
          runsTable,
        });
        expect(await meta.duplicateKeys()).to.deep.equal({
          count: 2,
          samples: [
            { key: 'a', ids: [1, 3, 11] },
            { key: 'd', ids: [8, 10] },
          ],
        });
        expect(await meta.duplicateKeys({ limit: 1 })).to.deep.equal({
          count: 2,
          samples: [{ key: 'a', ids: [1, 3, 11] }],
        });
        expect(await meta.duplicateKeys({ types: ['x'] })).to.deep.equal({
          count: 1,
          samples: [{ key: 'a', ids: [1, 3] }],
        });
        expect(await meta.duplicateKeys({ types: ['y', 'z'] })).to.deep.equal({
          count: 1,
          samples: [{ key: 'd', ids: [8, 10] }],
        });
        expect(await meta.duplicateKeys({ types: ['z'] })).to.deep.equal({ count: 0, samples: [] });
        // NULL keys are walked (marked), a NULL id is not: the count has it, so a cross-check sees it.
        const walked = (await collect(meta.walk({ chunkSize: 5 }))).flat();
        expect(walked.map((m) => m.id)).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        expect(
          walked.filter((m) => m.invalid !== undefined).map((m) => [m.id, m.key, m.invalid]),
        ).to.deep.equal([
          [6, '', 'the key is NULL'],
          [7, '', 'the key is NULL'],
        ]);
        expect(await meta.count()).to.equal(12);
        expect(await meta.count({ upToId: 5 })).to.equal(6);
        expect(await meta.count({ upToId: 5, types: ['y'] })).to.equal(0);
        const lost = await meta.get('lost');
        expect(lost?.invalid).to.equal('the id is NULL');
      });

      it("answers duplicateKeys on blobshift's own table without a query", async () => {
        const k = await createKnex(target.config());
        try {
          const meta = await open({}, k);
          await meta.add(row('only/once'));
          let queries = 0;
          const onQuery = () => {
            queries++;
          };
          k.on('query', onQuery);
          expect(await meta.duplicateKeys()).to.deep.equal({ count: 0, samples: [] });
          expect(await meta.duplicateKeys({ types: ['attachment'] })).to.deep.equal({
            count: 0,
            samples: [],
          });
          k.off('query', onQuery);
          expect(queries).to.equal(0);
          expect(await meta.count()).to.equal(1);
          expect(await meta.count({ types: ['image'] })).to.equal(0);
        } finally {
          for (const m of opened.splice(0)) await m.close();
          await k.destroy();
        }
      });

      it('refuses an id column that is not an integer, saying what to do', async () => {
        const cases: {
          what: string;
          build: (t: Knex.CreateTableBuilder) => void;
          ids: unknown[];
          shows: RegExp;
        }[] = [
          {
            what: 'VARCHAR holding numbers',
            build: (t) => t.string('id', 20).notNullable(),
            ids: ['1', '2', '10', '9'],
            shows: /VARCHAR\(20\)/,
          },
          {
            what: 'REAL',
            build: (t) =>
              t.specificType(
                'id',
                { sqlite: 'REAL', mysql: 'DOUBLE', pg: 'DOUBLE PRECISION' }[target.dialect],
              ),
            ids: [1, 2.5],
            shows: /REAL|DOUBLE/,
          },
          {
            what: 'TEXT',
            build: (t) => t.text('id'),
            ids: ['1', '2'],
            shows: /TEXT/,
          },
        ];
        if (target.dialect === 'pg') {
          cases.push(
            {
              what: 'UUID primary key',
              build: (t) => t.uuid('id').primary().defaultTo(raw.raw('gen_random_uuid()')),
              ids: ['7f1e4c5a-1111-4e6b-9a3c-000000000001', '0a1e4c5a-2222-4e6b-9a3c-000000000002'],
              shows: /is UUID, not an integer column: UUIDs have no order new rows follow/,
            },
            {
              what: 'NUMERIC',
              build: (t) => t.specificType('id', 'NUMERIC'),
              ids: [1, 2],
              shows: /NUMERIC/,
            },
          );
        } else if (target.dialect === 'sqlite') {
          cases.push(
            {
              what: 'NUMERIC holding a fraction',
              build: (t) => t.specificType('id', 'NUMERIC'),
              ids: [1, 2.5],
              shows: /NUMERIC holding a real value \(2\.5\)/,
            },
            {
              what: 'no declared type, holding text',
              build: (t) => t.specificType('id', ''),
              ids: [1, 'x7'],
              shows: /no declared type holding a text value \("x7"\)/,
            },
            {
              what: 'INTEGER holding stray text',
              build: (t) => t.integer('id'),
              ids: [1, 'abc'],
              shows: /INTEGER holding a text value \("abc"\)/,
            },
          );
        } else {
          cases.push({
            what: 'DECIMAL',
            build: (t) => t.decimal('id', 20, 0),
            ids: [1, 2],
            shows: /DECIMAL/,
          });
        }
        for (const c of cases) {
          const table = await appTable((t) => {
            c.build(t);
            t.string('path', 255);
            t.integer('bytes');
          });
          await raw(table).insert(c.ids.map((id, i) => ({ id, path: `p/${i}`, bytes: 1 })));
          const err = await MetaDB.open(target.config(), {
            table,
            columns: { id: 'id', key: 'path', size: 'bytes' },
            runsTable,
          }).catch((e: unknown) => e);
          expect(err, c.what).to.be.instanceOf(ConfigError);
          expect((err as ConfigError).path, c.what).to.equal('meta.columns.id');
          const message = (err as Error).message;
          expect(message, c.what).to.include(`column "id" of table ${table}`);
          expect(message, c.what).to.match(c.shows);
          expect(message, c.what).to.include('Map an integer auto-increment column as meta.columns.id');
          if (target.dialect === 'sqlite') expect(message, c.what).to.include('INTEGER PRIMARY KEY');
          else if (target.dialect === 'pg') {
            expect(message, c.what).to.include(
              `ALTER TABLE "${table}" ADD COLUMN blobshift_id BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE`,
            );
          } else
            expect(message, c.what).to.include(`ALTER TABLE \`${table}\` ADD COLUMN blobshift_id BIGINT`);
          if (target.dialect !== 'sqlite') {
            // The statement the message gives works, and the table can then be mapped.
            const statement = /(ALTER TABLE .*? UNIQUE)/.exec(message)?.[1] as string;
            await raw.raw(statement);
            const meta = await open({
              table,
              columns: { id: 'blobshift_id', key: 'path', size: 'bytes' },
              runsTable,
            });
            const walked = (await collect(meta.walk({ chunkSize: 1 }))).flat();
            expect(walked.map((m) => m.key).sort(), c.what).to.deep.equal(
              c.ids.map((_, i) => `p/${i}`).sort(),
            );
            await raw(table).insert({
              path: 'p/new',
              bytes: 1,
              ...(c.what === 'UUID primary key' ? {} : { id: 99 }),
            });
            const after = await walkIds(meta, { chunkSize: 10, afterId: (walked.at(-1) as BlobMeta).id });
            expect(after.length, c.what).to.equal(1);
          }
        }
      });

      it('accepts integer id columns of every width, signed or not', async () => {
        const builds: ((t: Knex.CreateTableBuilder) => void)[] = [
          (t) => t.increments('id').primary(),
          (t) => t.bigIncrements('id').primary(),
          (t) => t.specificType('id', 'SMALLINT'),
        ];
        if (target.dialect === 'pg') {
          builds.push(
            (t) => t.bigInteger('id'),
            (t) => t.specificType('id', 'SERIAL'),
            (t) => t.specificType('id', 'BIGINT GENERATED ALWAYS AS IDENTITY'),
            (t) => t.specificType('id', 'INTEGER GENERATED BY DEFAULT AS IDENTITY'),
          );
        } else {
          builds.push(
            (t) => t.specificType('id', target.dialect === 'sqlite' ? 'MEDIUMINT' : 'MEDIUMINT UNSIGNED'),
            (t) => t.bigInteger('id').unsigned(),
          );
        }
        if (target.dialect === 'sqlite') {
          // Where SQLite's values decide: integers in a NUMERIC column, or in one with no declared type.
          builds.push(
            (t) => t.specificType('id', 'NUMERIC'),
            (t) => t.specificType('id', ''),
          );
        }
        for (const build of builds) {
          const table = await appTable((t) => {
            build(t);
            t.string('path', 255);
            t.integer('bytes');
          });
          const rows = [
            { id: 1, path: 'p/1', bytes: 1 },
            { id: 2, path: 'p/2', bytes: 2 },
          ];
          // A column GENERATED ALWAYS AS IDENTITY takes no ids from the app: it numbers them 1, 2 itself.
          await raw(table)
            .insert(rows)
            .catch(() => raw(table).insert(rows.map(({ path, bytes }) => ({ path, bytes }))));
          const meta = await open({ table, columns: { id: 'id', key: 'path', size: 'bytes' }, runsTable });
          expect((await collect(meta.walk({ chunkSize: 10 }))).flat().map((m) => m.id)).to.deep.equal([1, 2]);
        }
      });
    });

    it('round-trips run state', async () => {
      const meta = await open();
      expect(await meta.getRun('default', '')).to.equal(undefined);
      expect(await meta.listRuns()).to.deep.equal([]);
      const a = sampleRun('default', '');
      const b = sampleRun('default', '1/4');
      const c = sampleRun('alpha', '');
      await meta.saveRun(a);
      await meta.saveRun(b);
      await meta.saveRun(c);
      expect(await meta.getRun('default', '')).to.deep.equal(a);
      expect(await meta.getRun('default', '1/4')).to.deep.equal(b);
      const updated: RunState = {
        ...a,
        status: 'completed',
        lowWaterMark: 2 ** 40,
        counts: { ...a.counts, copied: 5, bytes: 2 ** 45 },
        logs: [...a.logs, 'backfill-default-20260102T000000Z.jsonl'],
        attempts: 2,
        exitCode: 0,
        finishedAt: new Date('2026-01-02T03:04:05.678Z'),
        extra: { done: [[1, 100]], note: 'ünï' },
      };
      await meta.saveRun(updated);
      expect(await meta.getRun('default', '')).to.deep.equal(updated);
      expect((await meta.listRuns()).map((r) => [r.name, r.shard])).to.deep.equal([
        ['alpha', ''],
        ['default', ''],
        ['default', '1/4'],
      ]);
      expect(await meta.deleteRun('default', '1/4')).to.equal(true);
      expect(await meta.deleteRun('default', '1/4')).to.equal(false);
      expect(await meta.getRun('default', '1/4')).to.equal(undefined);
    });
  });
}

function sampleRun(name: string, shard: string): RunState {
  return {
    name,
    shard,
    status: 'running',
    lowWaterMark: 42,
    counts: { ...emptyCounts(), total: 100, copied: 40, present: 2 },
    logs: [`backfill-${name}-20260101T000000Z.jsonl`],
    options: { types: ['attachment'], concurrency: 16, shard },
    attempts: 1,
    exitCode: null,
    startedAt: new Date('2026-01-01T00:00:00.123Z'),
    updatedAt: new Date('2026-01-01T00:05:00.456Z'),
    finishedAt: null,
    extra: {},
  };
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
