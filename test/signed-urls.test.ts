import { join } from 'node:path';
import { expect } from 'chai';
import { MigratingBlobDB } from '../lib/app/migrating.js';
import { BlobStore } from '../lib/app/store.js';
import { FilesystemBlobDB } from '../lib/backends/fs/index.js';
import { MemoryBlobDB } from '../lib/backends/memory/index.js';
import { S3BlobDB, type S3ClientConfigLike } from '../lib/backends/s3/index.js';
import { readAll } from '../lib/contract/body.js';
import { InvalidFieldError, NotSupportedError } from '../lib/contract/errors.js';
import type { BlobDB } from '../lib/contract/types.js';
import { MetaDB } from '../lib/meta/index.js';
import { announce, RGW_ENDPOINT } from './support/env.js';
import { tempDirs } from './support/fs.js';
import { rejectionOf } from './support/promises.js';
import {
  countRequests,
  createBucket,
  deleteBucket,
  rgwClientConfig,
  type S3rverHandle,
  startS3rver,
} from './support/s3rver.js';
import { sleep } from './support/time.js';

const freshDir = tempDirs('blobshift-urls-');

interface Server {
  name: string;
  config(): Promise<S3ClientConfigLike>;
  /** The secret key, to check it never shows in a URL (s3rver's equals its key id, which URLs carry). */
  secret: string | undefined;
  /** Whether the server refuses an expired or altered signature (s3rver does not check expiry). */
  strict: boolean;
}

let s3rver: S3rverHandle | undefined;
after(async () => {
  await s3rver?.stop();
});

const servers: Server[] = [
  {
    name: 's3rver',
    async config() {
      s3rver ??= await startS3rver();
      return s3rver.clientConfig();
    },
    secret: undefined,
    strict: false,
  },
];
if (RGW_ENDPOINT) {
  servers.push({
    name: 'Ceph RGW',
    config: async () => rgwClientConfig(),
    secret: rgwClientConfig().credentials?.secretAccessKey ?? '',
    strict: true,
  });
} else {
  announce('BLOBSHIFT_TEST_RGW', 'Ceph RGW (presigned URLs)');
}

for (const server of servers) {
  describe(`presigned GET URLs on ${server.name}`, function () {
    this.timeout(30_000);
    let config: S3ClientConfigLike;
    let admin: S3BlobDB;
    const buckets: string[] = [];
    const dbs: BlobDB[] = [];

    before(async () => {
      config = await server.config();
      admin = new S3BlobDB({ bucket: 'unused', clientConfig: config });
    });
    after(async () => {
      for (const db of dbs.splice(0)) await db.close();
      for (const b of buckets.splice(0)) await deleteBucket(admin.client, b);
      await admin.close();
    });
    async function s3(prefix?: string): Promise<S3BlobDB> {
      const bucket = await createBucket(admin.client);
      buckets.push(bucket);
      const db = new S3BlobDB({ bucket, clientConfig: config, ...(prefix ? { prefix } : {}) });
      dbs.push(db);
      return db;
    }

    it('S3BlobDB: a URL a plain GET reads without credentials, with asked-for response headers', async () => {
      const db = await s3('under/a/prefix');
      await db.put('docs/report 1.pdf', 'the report', { contentType: 'application/pdf' });
      const url = await db.getSignedUrl('docs/report 1.pdf', {
        expiresIn: 120,
        responseContentDisposition: 'attachment; filename="report.pdf"',
      });
      expect(url).to.include('X-Amz-Signature=');
      expect(url).to.include('X-Amz-Expires=120');
      if (server.secret) expect(url).to.not.include(server.secret);
      const res = await fetch(url);
      expect(res.status).to.equal(200);
      expect(await res.text()).to.equal('the report');
      expect(res.headers.get('content-type')).to.equal('application/pdf');
      expect(res.headers.get('content-disposition')).to.equal('attachment; filename="report.pdf"');
      // Signing makes no request: a missing key gets a URL that answers 404.
      const missing = await db.getSignedUrl('docs/none');
      expect((await fetch(missing)).status).to.equal(404);
    });

    if (server.strict) {
      it('the URL stops working when it expires, and an altered one never works', async () => {
        const db = await s3();
        await db.put('k', 'v');
        const url = await db.getSignedUrl('k', { expiresIn: 1 });
        expect((await fetch(url.replace('/k?', '/k2?'))).status).to.equal(403);
        await sleep(2100);
        expect((await fetch(url)).status).to.equal(403);
      });
    }

    it('refuses an expiresIn outside 1 s to 7 days, and an invalid key', async () => {
      const db = await s3();
      for (const expiresIn of [0, -5, 1.5, 604_801, Number.NaN]) {
        const err = await rejectionOf(db.getSignedUrl('k', { expiresIn }));
        expect(err, String(expiresIn)).to.be.instanceOf(InvalidFieldError);
        expect(err).to.have.property('field', 'expiresIn');
      }
      expect(await rejectionOf(db.getSignedUrl('../k'))).to.have.property('code', 'E_INVALID_KEY');
    });

    it('MigratingBlobDB: the new backend’s URL when it has the blob (one HEAD), else the old one’s', async () => {
      const newDb = await s3();
      const oldDb = await s3();
      const db = new MigratingBlobDB(newDb, oldDb);
      await oldDb.put('both', 'old copy');
      await newDb.put('both', 'new copy');
      await oldDb.put('old-only', 'only in old');
      const counter = countRequests(newDb.client);
      try {
        const both = await db.getSignedUrl('both');
        expect(counter.byCommand()).to.deep.equal({ HeadObjectCommand: 1 });
        expect(await (await fetch(both)).text()).to.equal('new copy');
        const oldOnly = await db.getSignedUrl('old-only');
        expect(await (await fetch(oldOnly)).text()).to.equal('only in old');
        expect(oldOnly).to.include(oldDb.bucket);
      } finally {
        counter.remove();
      }
    });

    it('MigratingBlobDB over (S3, files): a blob not yet copied is NotSupportedError, naming the old backend', async () => {
      const newDb = await s3();
      const oldDb = new FilesystemBlobDB({ root: await freshDir() });
      const db = new MigratingBlobDB(newDb, oldDb);
      await oldDb.put('legacy', 'old bytes');
      await newDb.put('fresh', 'new bytes');
      expect(await (await fetch(await db.getSignedUrl('fresh'))).text()).to.equal('new bytes');
      const err = await rejectionOf(db.getSignedUrl('legacy'));
      expect(err).to.be.instanceOf(NotSupportedError);
      expect(err).to.have.property('code', 'E_NOT_SUPPORTED');
      expect((err as Error).message).to.match(
        /"legacy" is not in the new backend .*old backend cannot sign URLs.*getWithInfo/,
      );
    });

    it('BlobStore.getSignedUrl hands out the backend’s URL', async () => {
      const dir = await freshDir();
      const meta = await MetaDB.open({
        client: 'better-sqlite3',
        connection: { filename: join(dir, 'm.sqlite') },
      });
      try {
        const store = new BlobStore({ db: await s3(), meta });
        const row = await store.put('served from the bucket', {
          parentId: 'p',
          type: 't',
          contentType: 'text/plain',
        });
        const res = await fetch(await store.getSignedUrl(row.key, { expiresIn: 60 }));
        expect(await res.text()).to.equal('served from the bucket');
      } finally {
        await meta.close();
      }
    });
  });
}

describe('presigned URLs where the backend has none', () => {
  for (const [name, make] of [
    ['FilesystemBlobDB', async () => new FilesystemBlobDB({ root: await freshDir() })],
    ['MemoryBlobDB', async () => new MemoryBlobDB()],
  ] as const) {
    it(`${name} rejects NotSupportedError saying to serve the bytes through the app`, async () => {
      const db = await make();
      await db.put('k', 'v');
      const err = await rejectionOf(db.getSignedUrl('k'));
      expect(err).to.be.instanceOf(NotSupportedError);
      expect(err).to.have.property('code', 'E_NOT_SUPPORTED');
      expect((err as Error).message).to.include(name);
      expect((err as Error).message).to.include('getWithInfo');
      expect(await rejectionOf(db.getSignedUrl('/abs'))).to.have.property('code', 'E_INVALID_KEY');
    });
  }

  it('BlobStore: NotSupportedError for a backend without getSignedUrl at all; getWithInfo gives bytes, size and type', async () => {
    const dir = await freshDir();
    const meta = await MetaDB.open({
      client: 'better-sqlite3',
      connection: { filename: join(dir, 'm.sqlite') },
    });
    try {
      const inner = new FilesystemBlobDB({ root: await freshDir() });
      // A BlobDB of the app's own making that has no getSignedUrl.
      const bare: BlobDB = new Proxy(inner, {
        get(target, prop) {
          if (prop === 'getSignedUrl') return undefined;
          const v = Reflect.get(target, prop, target) as unknown;
          return typeof v === 'function' ? v.bind(target) : v;
        },
      });
      const store = new BlobStore({ db: bare, meta });
      const row = await store.put('download me', { parentId: 'p', type: 't', contentType: 'text/plain' });
      expect(await rejectionOf(store.getSignedUrl(row.key))).to.be.instanceOf(NotSupportedError);
      const { info, body } = await store.getWithInfo(row.key);
      expect(info).to.include({ size: 11, contentType: 'text/plain' });
      expect((await readAll(body)).toString()).to.equal('download me');
      expect(await rejectionOf(store.getWithInfo('no/such'))).to.have.property('code', 'E_BLOB_NOT_FOUND');
    } finally {
      await meta.close();
    }
  });
});
