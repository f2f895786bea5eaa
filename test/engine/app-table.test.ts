/**
 * An app's own table, mapped with `columns`, as real apps have them: sizes
 * stored as text (NULL, blank, `0x5`, `5e0`), NULL keys, the same key on two
 * rows, a row with a NULL id. verify must say NOT SAFE and name each; backfill
 * fails those rows (never copies under a guessed key or size); cleanup-old
 * keeps whatever old holds under them.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import type { Knex } from 'knex';
import { FilesystemBlobDB } from '../../lib/backends/fs/index.js';
import { ConfigError } from '../../lib/contract/errors.js';
import { backfill } from '../../lib/engine/backfill.js';
import { cleanupOld } from '../../lib/engine/cleanup.js';
import { verify } from '../../lib/engine/verify.js';
import { createKnex, MetaDB } from '../../lib/meta/index.js';
import { announceDatabases, META_DATABASES } from '../support/databases.js';
import { uniqueName } from '../support/env.js';

interface Db {
  name: string;
  config(dir: string): Knex.Config;
}

const databases: Db[] = META_DATABASES.map((d) => ({
  name: d.name,
  config: (dir: string) => d.knexConfig(dir),
}));
announceDatabases("an app's own messy table");

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

for (const db of databases) {
  describe(`an app's own messy table (${db.name})`, function () {
    this.timeout(60_000);
    let dir: string;
    let knex: Knex;
    let table: string;
    let runsTable: string;
    let oldDb: FilesystemBlobDB;
    let newDb: FilesystemBlobDB;
    const opened: MetaDB[] = [];

    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'blobshift-app-'));
      knex = await createKnex(db.config(dir));
      table = uniqueName('att_');
      runsTable = uniqueName('runs_');
      await knex.schema.createTable(table, (t) => {
        // No primary key and nullable columns: the table as some apps really have it.
        t.bigInteger('id').nullable();
        t.string('storage_key', 255).nullable();
        t.string('byte_size', 32).nullable();
        t.string('kind', 32).notNullable();
        t.string('checksum', 64).nullable();
      });
      oldDb = new FilesystemBlobDB({ root: join(dir, 'old') });
      newDb = new FilesystemBlobDB({ root: join(dir, 'new') });
    });
    afterEach(async () => {
      for (const m of opened.splice(0)) await m.close();
      for (const t of [table, runsTable, `${runsTable}_migrations`, `${runsTable}_migrations_lock`]) {
        await knex.schema.dropTableIfExists(t);
      }
      await knex.destroy();
      await rm(dir, { recursive: true, force: true });
    });

    async function open(): Promise<MetaDB> {
      const meta = await MetaDB.open(db.config(dir), {
        table,
        runsTable,
        columns: { id: 'id', key: 'storage_key', size: 'byte_size', type: 'kind', sha256: 'checksum' },
      });
      opened.push(meta);
      return meta;
    }

    /** A good row whose blob is in old (and in new when migrated). */
    async function good(id: number, migrated: boolean): Promise<string> {
      const key = `blob/${id}`;
      const body = randomBytes(5 + id);
      await oldDb.put(key, body);
      if (migrated) await newDb.put(key, body);
      await knex(table).insert({
        id,
        storage_key: key,
        byte_size: String(body.length),
        kind: 'file',
        checksum: sha(body),
      });
      return key;
    }

    it('says NOT SAFE for NULL, blank and non-integer sizes, NULL keys, duplicate keys and rows the walk never visits', async () => {
      for (let id = 1; id <= 3; id++) await good(id, true);
      // 5 bytes in old and a 0-byte object in new: a NULL or blank size once read as 0 "verified" it.
      for (const [id, size] of [
        [10, null],
        [11, ''],
        [12, '0x5'],
        [13, '5e0'],
      ] as const) {
        await oldDb.put(`odd/${id}`, 'hello');
        await newDb.put(`odd/${id}`, '');
        await knex(table).insert({ id, storage_key: `odd/${id}`, byte_size: size, kind: 'file' });
      }
      await knex(table).insert({ id: 20, storage_key: null, byte_size: '3', kind: 'file' });
      // Two rows for one key.
      const dup = await good(30, true);
      await knex(table).insert({ id: 31, storage_key: dup, byte_size: '7', kind: 'file' });
      // A row with no id: no walk by id can reach it.
      await knex(table).insert({ id: null, storage_key: 'no/id', byte_size: '6', kind: 'file' });

      const meta = await open();
      const report = await verify({ meta, newDb, oldDb, logDir: join(dir, 'logs'), record: false });
      expect(report.safe).to.equal(false);
      expect(report.invalidRows).to.equal(5);
      expect(report.duplicateKeys).to.equal(1);
      expect(report.unvisitedRows).to.equal(1);
      expect(report.tableRows).to.equal(11);
      expect(report.verdict).to.match(/5 invalid rows/);
      expect(report.verdict).to.match(/1 keys held by more than one row/);
      expect(report.verdict).to.match(/1 rows never visited by the walk/);
      expect(report.samples.invalidRow).to.include.members([
        'id 10: the size is NULL',
        'id 20: the key is NULL',
      ]);
      expect(report.samples.duplicateKey?.[0]).to.equal(`${dup} (ids 30, 31)`);

      // backfill copies the good rows and fails the invalid ones, never guessing a key or a size.
      await newDb.bulkDelete(['blob/1', 'blob/2', 'blob/3']);
      const summary = await backfill({ meta, oldDb, newDb, logDir: join(dir, 'logs'), concurrency: 2 });
      expect(summary.failed).to.be.at.least(5);
      expect(summary.exitCode).to.equal(1);
      expect(await newDb.exists('blob/1')).to.equal(true);
      expect(await newDb.size('odd/10')).to.equal(0, 'the 0-byte object was not replaced');
      expect(await newDb.exists('null')).to.equal(false, 'a NULL key never becomes the key "null"');
    });

    it('refuses a text id column up front, saying what to do', async () => {
      const textIds = uniqueName('txt_');
      await knex.schema.createTable(textIds, (t) => {
        t.string('id', 20).notNullable();
        t.string('storage_key', 255).notNullable();
        t.bigInteger('byte_size').notNullable();
      });
      try {
        for (let i = 1; i <= 12; i++) {
          await knex(textIds).insert({ id: String(i), storage_key: `k/${i}`, byte_size: 1 });
        }
        const err = await MetaDB.open(db.config(dir), {
          table: textIds,
          runsTable,
          columns: { id: 'id', key: 'storage_key', size: 'byte_size' },
        }).then(
          (m) => {
            opened.push(m);
            return undefined;
          },
          (e: unknown) => e,
        );
        expect(err).to.be.instanceOf(ConfigError);
        expect((err as ConfigError).path).to.equal('meta.columns.id');
        expect((err as Error).message).to.match(/Map an integer auto-increment column as meta.columns.id/);
      } finally {
        await knex.schema.dropTableIfExists(textIds);
      }
    });

    it('cleanup-old keeps what old holds under a row that turned invalid after the verify', async () => {
      for (let id = 1; id <= 4; id++) await good(id, true);
      const meta = await open();
      const clean = await verify({ meta, newDb, oldDb, logDir: join(dir, 'logs') });
      expect(clean.verdict).to.equal('SAFE TO FLIP');
      expect(clean.tableRows).to.equal(4);
      await knex(table).where({ id: 2 }).update({ byte_size: null });
      const report = await cleanupOld({ meta, oldDb, newDb, yes: true, logDir: join(dir, 'logs') });
      expect(report.keptByReason['invalid metadata row']).to.equal(1);
      expect(report.deleted).to.equal(3);
      expect(await oldDb.exists('blob/2')).to.equal(true);
    });
  });
}
