/** MetaDB suite: an app's own mapped table. */
import { expect } from 'chai';
import { ConfigError, ReadOnlyError } from '../../../lib/contract/errors.js';
import type { ColumnMap } from '../../../lib/contract/meta.js';
import { MetaDB } from '../../../lib/meta/index.js';
import { uniqueName } from '../../support/env.js';
import type { MetaDBContext } from './context.js';
import { caseInsensitiveColumn, collect, row, sampleRun } from './helpers.js';

/** An app's own table, mapped by column: read-only, defaults for unmapped columns, a case-insensitive key column. */
export function mappedTableTests(db: MetaDBContext): void {
  const { target, open, tables } = db;
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
      await db.raw.schema.createTable(appTable, (t) => {
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
      await db.raw(appTable).insert(appRows);
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
      expect(await db.raw(appTable).count({ n: '*' }).first()).to.satisfy(
        (r: { n: unknown }) => Number(r.n) === 4,
      );
    });

    it('keeps run state in its own table', async () => {
      const meta = await open({ table: appTable, columns, runsTable });
      expect(meta.runsTable).to.equal(runsTable);
      const state = sampleRun('mapped', '');
      await meta.saveRun(state);
      expect(await meta.getRun('mapped', '')).to.deep.equal(state);
      expect(await db.raw.schema.hasTable(`${appTable}_runs`)).to.equal(false);
    });

    it('stays byte-exact on a case-insensitive key column', async () => {
      const ci = uniqueName('appci');
      tables.push(ci);
      await db.raw.schema.createTable(ci, (t) => {
        t.increments('id').primary();
        caseInsensitiveColumn(t, target.dialect, 'path').notNullable();
        t.integer('bytes').notNullable();
      });
      await db.raw(ci).insert([
        { path: 'Docs/Readme.md', bytes: 1 },
        { path: 'docs/other.md', bytes: 2 },
      ]);
      const meta = await open({ table: ci, columns: { id: 'id', key: 'path', size: 'bytes' }, runsTable });
      // The database matches both spellings; MetaDB keeps the exact one only.
      const counted = (await db.raw(ci).where('path', 'docs/readme.md').count({ n: '*' })) as {
        n: unknown;
      }[];
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
}
