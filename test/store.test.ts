import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { expect } from 'chai';
import { MigratingBlobDB } from '../lib/app/migrating.js';
import { BlobStore, ROW_LIMITS, randomKey } from '../lib/app/store.js';
import { FilesystemBlobDB } from '../lib/backends/fs/index.js';
import { MemoryBlobDB } from '../lib/backends/memory/index.js';
import { readAll } from '../lib/contract/body.js';
import { InvalidFieldError, MetadataError } from '../lib/contract/errors.js';
import type { MetaStore } from '../lib/contract/meta.js';
import type { BlobDB } from '../lib/contract/types.js';
import { createKnex, MetaDB } from '../lib/meta/index.js';
import { announceDatabases, META_DATABASES, type MetaDatabase, SQLITE } from './support/databases.js';
import { announce, MYSQL_URL, uniqueName } from './support/env.js';

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

    it('getWithInfo gives a download its bytes, size, content type and HTTP metadata in one call', async () => {
      const row = await store.put(chunked(['%PDF-', 'body']), {
        parentId: 'p',
        type: 'attachment',
        contentType: 'application/pdf',
        httpMeta: { contentDisposition: 'attachment; filename="a.pdf"' },
      });
      const { info, body } = await store.getWithInfo(row.key);
      expect(info).to.include({ key: row.key, size: 9, contentType: 'application/pdf' });
      expect(info.httpMeta?.contentDisposition).to.equal('attachment; filename="a.pdf"');
      expect((await readAll(body)).toString()).to.equal('%PDF-body');
      const err = await store.getWithInfo('no/such/key').catch((e: unknown) => e);
      expect(err).to.have.property('code', 'E_BLOB_NOT_FOUND');
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

    it('a failed row write removes the blob it wrote for a new key; a row that was there keeps its blob', async () => {
      const broken = new BlobStore({ db, meta: failing(meta, ['upsert']) });
      const err = await broken
        .put('written, never recorded', { parentId: 'p', type: 't', key: 'crash/new' })
        .catch((e: unknown) => e);
      expect(err).to.be.instanceOf(MetadataError);
      expect(err).to.have.property('code', 'E_METADATA');
      expect(err).to.have.property('key', 'crash/new');
      expect((err as Error).message).to.match(
        /could not write the metadata row of "crash\/new".*the blob written for it was removed$/,
      );
      expect((err as Error).cause).to.have.property('message', 'the database went away');
      expect(await db.exists('crash/new'), 'no orphan').to.equal(false);
      expect(await meta.get('crash/new')).to.equal(undefined);

      // Overwrite of a recorded blob: the old row stays and still has a blob.
      const before = await store.put('old content', { parentId: 'p', type: 't', key: 'crash/existing' });
      const err2 = await broken
        .put('new content', { parentId: 'p', type: 't', key: 'crash/existing' })
        .catch((e: unknown) => e);
      expect((err2 as Error).message).to.match(/a row references the key, so its blob stays$/);
      expect(await meta.get('crash/existing')).to.deep.equal(before);
      await expectNoRowWithoutBlob(meta, db);
    });

    it('a row write whose answer was lost (the row committed) keeps its blob', async () => {
      const lost = new Proxy(meta, {
        get(target, prop) {
          if (prop === 'upsert') {
            return async (m: Parameters<MetaDB['upsert']>[0]) => {
              await target.upsert(m);
              throw Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
            };
          }
          const v = Reflect.get(target, prop, target) as unknown;
          return typeof v === 'function' ? v.bind(target) : v;
        },
      });
      const err = await new BlobStore({ db, meta: lost })
        .put('committed', { parentId: 'p', type: 't', key: 'lost/answer' })
        .catch((e: unknown) => e);
      expect(err).to.have.property('code', 'E_METADATA');
      expect((err as Error).message).to.include('ECONNRESET');
      expect(await meta.get('lost/answer')).to.not.equal(undefined);
      expect((await readAll(await db.get('lost/answer'))).toString()).to.equal('committed');
    });

    it('checks every row field against its column before writing a byte', async () => {
      const cases: [string, Record<string, unknown>][] = [
        ['contentType', { contentType: `text/${'x'.repeat(251)}` }],
        ['contentType', { contentType: 'text/plain\r\nX-Injected: 1' }],
        ['contentType', { contentType: 'text/plaïn' }],
        ['parentId', { parentId: 'p'.repeat(256) }],
        ['parentId', { parentId: 42 }],
        ['type', { type: 'é'.repeat(256) }],
        ['type', { type: undefined }],
        ['name', { name: 'n'.repeat(1025) }],
        ['name', { name: 'a\u0000b' }],
        ['name', { name: 'half a pair \ud800' }],
        ['expiresOn', { expiresOn: new Date(Number.NaN) }],
        ['expiresOn', { expiresOn: new Date('+010000-01-01T00:00:00Z') }],
        ['expiresOn', { expiresOn: '2030-01-01' }],
        ['size', { size: -1 }],
      ];
      for (const [field, extra] of cases) {
        const key = `fields/${uniqueName()}`;
        const opts = { parentId: 'p', type: 't', key, ...extra } as unknown as Parameters<
          BlobStore['put']
        >[1];
        const err = await store.put(chunked(['some ', 'bytes']), opts).catch((e: unknown) => e);
        expect(err, `${field} ${JSON.stringify(extra)}`).to.be.instanceOf(InvalidFieldError);
        expect(err).to.have.property('code', 'E_INVALID_FIELD');
        expect(err).to.have.property('field', field);
        expect((err as Error).message).to.include(field);
        expect((err as Error).message).to.match(/nothing was stored$/);
        expect(await db.exists(key), `${field}: no blob`).to.equal(false);
      }
      const listed: string[] = [];
      for await (const info of db.list()) listed.push(info.key);
      expect(listed).to.deep.equal([]);
      expect((await meta.estimate()).count).to.equal(0);
    });

    it('stores fields exactly at their column widths (counted in characters)', async () => {
      const row = await store.put('fits', {
        parentId: 'ü'.repeat(ROW_LIMITS.parentId),
        type: '😀'.repeat(ROW_LIMITS.type),
        name: 'n'.repeat(ROW_LIMITS.name),
        contentType: `text/${'x'.repeat(ROW_LIMITS.contentType - 5)}`,
        expiresOn: new Date('9999-12-31T23:59:59.000Z'),
      });
      expect(await meta.get(row.key)).to.deep.equal(row);
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

if (MYSQL_URL) {
  const url = MYSQL_URL;
  describe('BlobStore row fields on MariaDB (the real column widths)', () => {
    let table: string;
    let meta: MetaDB;
    let root: string;
    let db: FilesystemBlobDB;
    let store: BlobStore;

    beforeEach(async () => {
      table = uniqueName('fields_');
      meta = await MetaDB.open({ client: 'mysql2', connection: url }, { table });
      root = await mkdtemp(join(tmpdir(), 'blobshift-fields-'));
      db = new FilesystemBlobDB({ root });
      store = new BlobStore({ db, meta });
    });
    afterEach(async () => {
      await meta.close();
      await rm(root, { recursive: true, force: true });
      const k = await createKnex({ client: 'mysql2', connection: url });
      try {
        for (const t of [table, `${table}_runs`, `${table}_migrations`, `${table}_migrations_lock`])
          await k.schema.dropTableIfExists(t);
      } finally {
        await k.destroy();
      }
    });

    it('ROW_LIMITS are the widths of the columns blobshift creates', async () => {
      const info = (await meta.knex(table).columnInfo()) as unknown as Record<string, { maxLength: unknown }>;
      expect({
        parentId: Number(info.parent_id?.maxLength),
        type: Number(info.type?.maxLength),
        name: Number(info.name?.maxLength),
        contentType: Number(info.content_type?.maxLength),
      }).to.deep.equal({ ...ROW_LIMITS });
    });

    it('a field at its width is stored; one character more is refused before the blob is written', async () => {
      const ok = await store.put('fits', {
        parentId: '😀'.repeat(ROW_LIMITS.parentId),
        type: 't',
        name: 'é'.repeat(ROW_LIMITS.name),
        contentType: `a/${'b'.repeat(ROW_LIMITS.contentType - 2)}`,
      });
      expect(await meta.get(ok.key)).to.deep.equal(ok);
      const err = await store
        .put('too long', { parentId: 'p', type: 't', key: 'long/ct', contentType: `a/${'b'.repeat(254)}` })
        .catch((e: unknown) => e);
      expect(err).to.have.property('code', 'E_INVALID_FIELD');
      expect(err).to.have.property('field', 'contentType');
      expect(await db.exists('long/ct')).to.equal(false);
    });

    it('a row the database refuses (a column narrower than blobshift made it) is a MetadataError naming the field, with no SQL, and no orphan', async () => {
      await meta.knex.raw('ALTER TABLE ?? MODIFY content_type VARCHAR(16) NULL', [table]);
      const secretish = 'application/x-customer-4711-invoice';
      const err = await store
        .put('bytes', { parentId: 'case-4711', type: 't', key: 'narrow/x', contentType: secretish })
        .catch((e: unknown) => e);
      expect(err).to.be.instanceOf(MetadataError);
      expect(err).to.have.property('field', 'contentType');
      const message = (err as Error).message;
      expect(message).to.include('contentType');
      expect(message).to.include('ER_DATA_TOO_LONG');
      expect(message).to.not.match(/insert|select|values|`/i);
      expect(message).to.not.include(secretish);
      expect(message).to.not.include('case-4711');
      expect(message).to.match(/the blob written for it was removed$/);
      expect(await db.exists('narrow/x')).to.equal(false);
      expect(await meta.get('narrow/x')).to.equal(undefined);
    });
  });
} else {
  announce('BLOBSHIFT_TEST_MYSQL', 'MariaDB (BlobStore row fields)');
}

describe('randomKey', () => {
  it('makes valid, distinct, fanned-out hex keys', () => {
    const keys = new Set(Array.from({ length: 2000 }, () => randomKey()));
    expect(keys.size).to.equal(2000);
    for (const k of keys) expect(k).to.match(/^([0-9a-f]{2})\/([0-9a-f]{2})\/\1\2[0-9a-f]{28}$/);
  });
});
