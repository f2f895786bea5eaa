/** MetaDB suite: messy app tables. */
import { expect } from 'chai';
import type { Knex } from 'knex';
import { ConfigError } from '../../../lib/contract/errors.js';
import type { BlobMeta } from '../../../lib/contract/types.js';
import { createKnex, MetaDB } from '../../../lib/meta/index.js';
import { uniqueName } from '../../support/env.js';
import type { MetaDBContext } from './context.js';
import { caseInsensitiveColumn, collect, row, walkIds } from './helpers.js';

/** Messy app tables: invalid sizes and keys, duplicate keys, NULL ids, id columns of every width. */
export function messyTableTests(db: MetaDBContext): void {
  const { target, open, opened, tables } = db;
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
      await db.raw.schema.createTable(table, (t) => {
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
        ['s/huge', '9007199254740993', 'the size "9007199254740993" is beyond the safe integer range (2^53)'],
        [null, '7', 'the key is NULL'],
        ['', '8', 'the key is empty'],
        [null, null, 'the key is NULL; the size is NULL'],
        ['ok/2', '0', undefined],
      ];
      await db
        .raw(table)
        .insert(rows.map(([path, bytes], i) => ({ path, bytes, kind: i % 2 ? 'odd' : 'even' })));
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
      await db.raw(table).insert([
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
      await db.raw(table).insert(rows.map(([row_id, path, kind]) => ({ row_id, path, bytes: 1, kind })));
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
            t.specificType('id', { sqlite: 'REAL', mysql: 'DOUBLE', pg: 'DOUBLE PRECISION' }[target.dialect]),
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
            build: (t) => t.uuid('id').primary().defaultTo(db.raw.raw('gen_random_uuid()')),
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
        await db.raw(table).insert(c.ids.map((id, i) => ({ id, path: `p/${i}`, bytes: 1 })));
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
        } else expect(message, c.what).to.include(`ALTER TABLE \`${table}\` ADD COLUMN blobshift_id BIGINT`);
        if (target.dialect !== 'sqlite') {
          // The statement the message gives works, and the table can then be mapped.
          const statement = /(ALTER TABLE .*? UNIQUE)/.exec(message)?.[1] as string;
          await db.raw.raw(statement);
          const meta = await open({
            table,
            columns: { id: 'blobshift_id', key: 'path', size: 'bytes' },
            runsTable,
          });
          const walked = (await collect(meta.walk({ chunkSize: 1 }))).flat();
          expect(walked.map((m) => m.key).sort(), c.what).to.deep.equal(c.ids.map((_, i) => `p/${i}`).sort());
          await db.raw(table).insert({
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
        await db
          .raw(table)
          .insert(rows)
          .catch(() => db.raw(table).insert(rows.map(({ path, bytes }) => ({ path, bytes }))));
        const meta = await open({ table, columns: { id: 'id', key: 'path', size: 'bytes' }, runsTable });
        expect((await collect(meta.walk({ chunkSize: 10 }))).flat().map((m) => m.id)).to.deep.equal([1, 2]);
      }
    });
  });
}
