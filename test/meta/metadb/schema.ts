/** MetaDB suite: blobshift's own schema. */
import { expect } from 'chai';
import { ConfigError, PreflightError } from '../../../lib/contract/errors.js';
import { createKnex, MetaDB } from '../../../lib/meta/index.js';
import { uniqueName } from '../../support/env.js';
import type { MetaDBContext } from './context.js';
import { row } from './helpers.js';

/** blobshift's own schema: opening twice, concurrent opens, create: false, table names, foreign tables, a stale migration lock, an app's own migrations. */
export function schemaTests(db: MetaDBContext): void {
  const { target, open, track, opened } = db;
  it('a second open changes nothing', async () => {
    const table = uniqueName('bm');
    const first = await open({ table });
    await first.add(row('keep/me'));
    const before = await db.raw(`${table}_migrations`).select('name', 'batch');
    const second = await open({ table });
    const third = await MetaDB.open(target.config(), { table, create: false });
    opened.push(third);
    expect(await db.raw(`${table}_migrations`).select('name', 'batch')).to.deep.equal(before);
    expect(before.map((r: { name: string }) => r.name)).to.deep.equal(['001_blob_meta']);
    expect((await second.get('keep/me'))?.key).to.equal('keep/me');
    expect((await third.estimate()).count).to.equal(1);
    const lock = await db.raw(`${table}_migrations_lock`).select('is_locked');
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
      const lock = (await db.raw(`${table}_migrations_lock`).select('is_locked')) as { is_locked: unknown }[];
      expect(lock.map((r) => Number(r.is_locked))).to.deep.equal([0]);
      expect(
        ((await db.raw(`${table}_migrations`).select('name')) as { name: string }[]).map((r) => r.name),
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
    await db.raw.schema.createTable(table, (t) => {
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
    await db.raw.schema.createTable(lock, (t) => {
      t.increments('index').primary();
      t.integer('is_locked');
    });
    await db.raw(lock).insert({ is_locked: 1 });
    const t0 = Date.now();
    const err = await MetaDB.open(target.config(), { table }).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(PreflightError);
    expect((err as Error).message).to.include(`UPDATE ${lock} SET is_locked = 0`);
    expect(Date.now() - t0).to.be.below(15_000);
    expect(await db.raw.schema.hasTable(table)).to.equal(false);
    await db.raw.raw(`UPDATE ${lock} SET is_locked = 0`);
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
}
