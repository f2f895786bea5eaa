import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { expect } from 'chai';
import { FilesystemBlobDB } from '../lib/backends/fs.js';
import { MemoryBlobDB } from '../lib/backends/memory.js';
import { readAll } from '../lib/body.js';
import { MetaDB } from '../lib/meta/index.js';
import type { MetaStore } from '../lib/meta/types.js';
import { MigratingBlobDB } from '../lib/migrating.js';
import { BlobStore, randomKey } from '../lib/store.js';
import type { BlobDB } from '../lib/types.js';
import { announceDatabases, META_DATABASES, type MetaDatabase, SQLITE } from './support/databases.js';
import { uniqueName } from './support/env.js';

const sha = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');

/** A MetaStore that behaves like `meta` except for the methods given, which fail. */
function failing(meta: MetaDB, methods: (keyof MetaDB)[], message = 'the database went away'): MetaStore {
  return new Proxy(meta, {
    get(target, prop) {
      if ((methods as (string | symbol)[]).includes(prop)) {
        return async () => {
          throw new Error(message);
        };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

/** Every row has its blob. */
async function expectNoRowWithoutBlob(meta: MetaDB, db: BlobDB): Promise<void> {
  for await (const chunk of meta.walk({ chunkSize: 100 })) {
    for (const row of chunk) expect(await db.exists(row.key), row.key).to.equal(true);
  }
}

function chunked(parts: string[]): Readable {
  return Readable.from(parts.map((p) => Buffer.from(p)));
}

function describeBlobStore(
  name: string,
  makeDb: () => Promise<BlobDB>,
  database: MetaDatabase = SQLITE,
): void {
  describe(`BlobStore on ${name}${database === SQLITE ? '' : `, ${database.name} metadata`}`, () => {
    let dir: string;
    let meta: MetaDB;
    let dropMeta: () => Promise<void>;
    let db: BlobDB;
    let store: BlobStore;

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'blobshift-store-'));
    });
    after(async () => {
      await rm(dir, { recursive: true, force: true });
    });
    beforeEach(async () => {
      ({ meta, drop: dropMeta } = await database.open(dir, { table: uniqueName('bs') }));
      db = await makeDb();
      store = new BlobStore({ db, meta });
    });
    afterEach(async () => {
      await dropMeta();
      await db.close();
    });

    it('puts a buffer under a random key: blob and row together, with size and sha256', async () => {
      const row = await store.put(Buffer.from('hello blob'), {
        parentId: 'case-7',
        type: 'attachment',
        name: 'hello.txt',
        contentType: 'text/plain',
      });
      expect(row.key).to.match(/^([0-9a-f]{2})\/([0-9a-f]{2})\/\1\2[0-9a-f]{28}$/);
      expect(row).to.include({
        parentId: 'case-7',
        type: 'attachment',
        name: 'hello.txt',
        contentLength: 10,
        contentType: 'text/plain',
        sha256: sha('hello blob'),
      });
      expect(await meta.get(row.key)).to.deep.equal(row);
      expect(await store.row(row.key)).to.deep.equal(row);
      expect((await readAll(await store.get(row.key))).toString()).to.equal('hello blob');
      expect(await store.exists(row.key)).to.equal(true);
      expect(await store.size(row.key)).to.equal(10);
      const info = await store.stat(row.key);
      expect(info.size).to.equal(10);
      expect(info.contentType).to.equal('text/plain');
    });

    it('streams a body, hashing it on the way, and carries HTTP metadata', async () => {
      const parts = ['first chunk|', 'second|', 'ü-third'];
      const whole = parts.join('');
      const row = await store.put(chunked(parts), {
        parentId: 'p',
        type: 'export',
        key: 'exports/2026/report.csv',
        contentType: 'text/csv',
        httpMeta: { contentDisposition: 'attachment; filename="report.csv"', metadata: { origin: 'test' } },
        expiresOn: new Date('2030-01-01T00:00:00.000Z'),
      });
      expect(row.key).to.equal('exports/2026/report.csv');
      expect(row.contentLength).to.equal(Buffer.byteLength(whole));
      expect(row.sha256).to.equal(sha(whole));
      expect(row.expiresOn?.toISOString()).to.equal('2030-01-01T00:00:00.000Z');
      expect((await readAll(await db.get(row.key))).toString()).to.equal(whole);
      const info = await db.stat(row.key);
      expect(info.httpMeta?.contentDisposition).to.equal('attachment; filename="report.csv"');
      expect(info.httpMeta?.metadata).to.deep.equal({ origin: 'test' });
    });

    it('overwriting by key updates the row in place (same id, new size and sha256) and the blob', async () => {
      const first = await store.put('version one', { parentId: 'p', type: 'attachment', key: 'docs/a.txt' });
      const other = await store.put('other', { parentId: 'p', type: 'attachment', key: 'docs/b.txt' });
      const second = await store.put(chunked(['version ', 'two, longer']), {
        parentId: 'p2',
        type: 'attachment',
        key: 'docs/a.txt',
        name: 'a.txt',
      });
      expect(second.id).to.equal(first.id);
      expect(second.id).to.not.equal(other.id);
      expect(second.contentLength).to.equal(19);
      expect(second.sha256).to.equal(sha('version two, longer'));
      expect(second.parentId).to.equal('p2');
      expect(second.createdOn.getTime()).to.equal(first.createdOn.getTime());
      expect((await readAll(await store.get('docs/a.txt'))).toString()).to.equal('version two, longer');
      expect((await meta.estimate()).count).to.equal(2);
    });

    it('deletes the row and the blob; a second delete is a no-op', async () => {
      const row = await store.put('bytes', { parentId: 'p', type: 't' });
      expect(await store.delete(row.key)).to.equal(true);
      expect(await meta.get(row.key)).to.equal(undefined);
      expect(await db.exists(row.key)).to.equal(false);
      expect(await store.delete(row.key)).to.equal(false);
      // An orphan blob (no row) is removed too, and a row whose blob is gone.
      await db.put('orphan/x', 'o');
      expect(await store.delete('orphan/x')).to.equal(true);
      expect(await db.exists('orphan/x')).to.equal(false);
      await meta.add({ key: 'rowonly/x', parentId: 'p', type: 't', contentLength: 1 });
      expect(await store.delete('rowonly/x')).to.equal(true);
      expect(await meta.get('rowonly/x')).to.equal(undefined);
    });

    it('a crash between blob and row leaves an unreferenced blob, never a row without a blob', async () => {
      const broken = new BlobStore({ db, meta: failing(meta, ['upsert']) });
      const err = await broken
        .put('written, never recorded', { parentId: 'p', type: 't', key: 'crash/new' })
        .catch((e: unknown) => e);
      expect((err as Error).message).to.equal('the database went away');
      expect(await db.exists('crash/new')).to.equal(true);
      expect(await meta.get('crash/new')).to.equal(undefined);
      expect(await meta.referenced(['crash/new'])).to.deep.equal(new Set());

      // Overwrite of a recorded blob: the old row stays and still has a blob.
      const before = await store.put('old content', { parentId: 'p', type: 't', key: 'crash/existing' });
      await broken
        .put('new content', { parentId: 'p', type: 't', key: 'crash/existing' })
        .catch(() => undefined);
      expect(await meta.get('crash/existing')).to.deep.equal(before);
      await expectNoRowWithoutBlob(meta, db);
    });

    it('a body that fails mid-stream writes neither blob nor row', async () => {
      const body = new Readable({
        read() {
          this.push(Buffer.from('partial'));
          this.destroy(new Error('client hung up'));
        },
      });
      const err = await store
        .put(body, { parentId: 'p', type: 't', key: 'broken/body' })
        .catch((e: unknown) => e);
      expect(err).to.be.instanceOf(Error);
      expect(await db.exists('broken/body')).to.equal(false);
      expect(await meta.get('broken/body')).to.equal(undefined);
    });

    it('a size that does not match the body fails before anything is recorded', async () => {
      for (const body of [Buffer.from('12345'), chunked(['12', '345'])]) {
        const key = `sized/${uniqueName()}`;
        const err = await store
          .put(body, { parentId: 'p', type: 't', key, size: 4 })
          .catch((e: unknown) => e);
        expect(err).to.have.property('code', 'E_SIZE_MISMATCH');
        expect(await db.exists(key)).to.equal(false);
        expect(await meta.get(key)).to.equal(undefined);
      }
      const ok = await store.put(chunked(['12', '345']), { parentId: 'p', type: 't', size: 5 });
      expect(ok.contentLength).to.equal(5);
    });

    it('refuses an invalid key before writing anything', async () => {
      for (const key of ['', '/abs', 'a/../b', 'a//b']) {
        const err = await store.put('x', { parentId: 'p', type: 't', key }).catch((e: unknown) => e);
        expect(err, key).to.have.property('code', 'E_INVALID_KEY');
      }
      expect((await meta.estimate()).count).to.equal(0);
      const listed: string[] = [];
      for await (const info of db.list()) listed.push(info.key);
      expect(listed).to.deep.equal([]);
    });

    it('bulkDelete removes rows then blobs; keys whose row delete fails keep their blob', async () => {
      const keys: string[] = [];
      for (let i = 0; i < 12; i++)
        keys.push((await store.put(`blob ${i}`, { parentId: 'p', type: 't' })).key);
      const result = await store.bulkDelete([...keys.slice(0, 8), 'never/existed', keys[0] as string]);
      expect(result.errors).to.deep.equal([]);
      for (const k of keys.slice(0, 8)) {
        expect(await meta.get(k)).to.equal(undefined);
        expect(await db.exists(k)).to.equal(false);
      }
      const broken = new BlobStore({ db, meta: failing(meta, ['deleteMany', 'delete']) });
      const failed = await broken.bulkDelete(keys.slice(8));
      expect(failed.errors.map((e) => e.key).sort()).to.deep.equal(keys.slice(8).sort());
      await expectNoRowWithoutBlob(meta, db);
      expect((await meta.estimate()).count).to.equal(4);
    });

    it('refuses to put through a read-only (mapped) metadata table, before writing the blob', async () => {
      const readOnly = new Proxy(meta, {
        get(target, prop) {
          if (prop === 'readOnly') return true;
          const v = Reflect.get(target, prop, target) as unknown;
          return typeof v === 'function' ? v.bind(target) : v;
        },
      });
      const ro = new BlobStore({ db, meta: readOnly });
      const err = await ro.put('x', { parentId: 'p', type: 't', key: 'ro/x' }).catch((e: unknown) => e);
      expect(err).to.have.property('code', 'E_READ_ONLY');
      expect(await db.exists('ro/x')).to.equal(false);
    });
  });
}

describeBlobStore('MemoryBlobDB', async () => new MemoryBlobDB());
for (const database of META_DATABASES.filter((d) => d !== SQLITE)) {
  describeBlobStore('MemoryBlobDB', async () => new MemoryBlobDB(), database);
}
announceDatabases('BlobStore');

{
  const roots: string[] = [];
  describeBlobStore('FilesystemBlobDB', async () => {
    const root = await mkdtemp(join(tmpdir(), 'blobshift-store-fs-'));
    roots.push(root);
    return new FilesystemBlobDB({ root });
  });
  after(async () => {
    for (const root of roots.splice(0)) await rm(root, { recursive: true, force: true });
  });
}

describe('BlobStore on MigratingBlobDB', () => {
  let dir: string;
  let meta: MetaDB;
  let oldDb: MemoryBlobDB;
  let newDb: MemoryBlobDB;
  let store: BlobStore;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'blobshift-store-'));
    meta = await MetaDB.open({ client: 'better-sqlite3', connection: { filename: join(dir, 'm.sqlite') } });
    oldDb = new MemoryBlobDB();
    newDb = new MemoryBlobDB();
    store = new BlobStore({ db: new MigratingBlobDB(newDb, oldDb), meta });
  });
  afterEach(async () => {
    await meta.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('puts into the new backend only, reads old blobs through', async () => {
    const row = await store.put('fresh', { parentId: 'p', type: 't' });
    expect(await newDb.exists(row.key)).to.equal(true);
    expect(await oldDb.exists(row.key)).to.equal(false);
    await oldDb.put('legacy/a', 'from before');
    await meta.add({ key: 'legacy/a', parentId: 'p', type: 't', contentLength: 11 });
    expect((await readAll(await store.get('legacy/a'))).toString()).to.equal('from before');
  });

  it('deletes the row, then the blob in both backends', async () => {
    await oldDb.put('both/a', 'old copy');
    await newDb.put('both/a', 'old copy');
    await meta.add({ key: 'both/a', parentId: 'p', type: 't', contentLength: 8 });
    expect(await store.delete('both/a')).to.equal(true);
    expect(await meta.get('both/a')).to.equal(undefined);
    expect(await oldDb.exists('both/a')).to.equal(false);
    expect(await newDb.exists('both/a')).to.equal(false);
    await oldDb.put('both/b', 'x');
    await meta.add({ key: 'both/b', parentId: 'p', type: 't', contentLength: 1 });
    const result = await store.bulkDelete(['both/b']);
    expect(result.errors).to.deep.equal([]);
    expect(await oldDb.exists('both/b')).to.equal(false);
  });
});

describe('randomKey', () => {
  it('makes valid, distinct, fanned-out hex keys', () => {
    const keys = new Set(Array.from({ length: 2000 }, () => randomKey()));
    expect(keys.size).to.equal(2000);
    for (const k of keys) expect(k).to.match(/^([0-9a-f]{2})\/([0-9a-f]{2})\/\1\2[0-9a-f]{28}$/);
  });
});
