import { createServer, get } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { GetObjectAclCommand } from '@aws-sdk/client-s3';
import { expect } from 'chai';
import { FilesystemBlobDB } from '../lib/backends/fs/index.js';
import { S3BlobDB, type S3BlobDBOptions, type S3ClientConfigLike } from '../lib/backends/s3/index.js';
import { readAll } from '../lib/contract/body.js';
import type { BlobDB, HttpMeta } from '../lib/contract/types.js';
import { backfill } from '../lib/engine/backfill.js';
import { MetaDB } from '../lib/meta/index.js';
import { announce, RGW_ENDPOINT } from './support/env.js';
import { tempDirs } from './support/fs.js';
import {
  countRequests,
  createBucket,
  deleteBucket,
  type RequestCounter,
  rgwClientConfig,
  type S3rverHandle,
  startS3rver,
} from './support/s3rver.js';

const freshDir = tempDirs('blobshift-carry-');

/** The blobs of every case: each kind of metadata alone, all together, and none. */
const BLOBS: { key: string; body: string; contentType?: string; httpMeta?: HttpMeta }[] = [
  {
    key: 'media/poster.jpg',
    body: 'jpeg bytes',
    contentType: 'image/jpeg',
    httpMeta: { cacheControl: 'public, max-age=31536000, immutable' },
  },
  {
    key: 'media/invoice.pdf',
    body: 'pdf bytes',
    contentType: 'application/pdf',
    httpMeta: { contentDisposition: 'attachment; filename="invoice 17.pdf"' },
  },
  {
    key: 'media/app.js.gz',
    body: 'gzipped bytes',
    contentType: 'application/javascript',
    httpMeta: { contentEncoding: 'gzip', contentLanguage: 'de-CH' },
  },
  {
    key: 'media/all.txt',
    body: 'everything',
    contentType: 'text/plain; charset=utf-8',
    httpMeta: {
      cacheControl: 'no-cache',
      contentDisposition: 'inline',
      contentEncoding: 'identity',
      contentLanguage: 'en',
      metadata: { origin: 'upload', 'case-id': '17' },
    },
  },
  { key: 'media/bare.bin', body: 'no metadata at all' },
];

let s3rver: S3rverHandle | undefined;
let s3rver2: S3rverHandle | undefined;
after(async () => {
  await s3rver?.stop();
  await s3rver2?.stop();
});

interface Made {
  db: BlobDB;
  /** Requests of the S3 client, when it is one. */
  counter?: RequestCounter;
  drop(): Promise<void>;
}

async function s3On(config: S3ClientConfigLike, opts: Partial<S3BlobDBOptions> = {}): Promise<Made> {
  const admin = new S3BlobDB({ bucket: 'unused', clientConfig: config });
  const bucket = await createBucket(admin.client);
  const db = new S3BlobDB({ bucket, clientConfig: config, ...opts });
  const counter = countRequests(db.client);
  return {
    db,
    counter,
    async drop() {
      counter.remove();
      await db.close();
      await deleteBucket(admin.client, bucket);
      await admin.close();
    },
  };
}

async function files(): Promise<Made> {
  const db = new FilesystemBlobDB({ root: await freshDir() });
  return { db, drop: () => db.close() };
}

async function s3rverConfig(): Promise<S3ClientConfigLike> {
  s3rver ??= await startS3rver();
  return s3rver.clientConfig();
}

/** Seeds old with the blobs and their rows, backfills, and resolves the new backend's view. */
async function migrate(oldDb: BlobDB, newDb: BlobDB): Promise<void> {
  const dir = await freshDir();
  const meta = await MetaDB.open({
    client: 'better-sqlite3',
    connection: { filename: join(dir, 'm.sqlite') },
  });
  try {
    for (const b of BLOBS) {
      await oldDb.put(b.key, b.body, {
        ...(b.contentType ? { contentType: b.contentType } : {}),
        ...(b.httpMeta ? { httpMeta: b.httpMeta } : {}),
      });
      await meta.add({
        key: b.key,
        parentId: 'p',
        type: 't',
        contentLength: Buffer.byteLength(b.body),
        contentType: b.contentType ?? null,
      });
    }
    const summary = await backfill({ meta, oldDb, newDb, logDir: join(dir, 'logs'), concurrency: 4 });
    expect(summary).to.include({ exitCode: 0, copied: BLOBS.length, failed: 0 });
  } finally {
    await meta.close();
  }
}

async function expectCarried(newDb: BlobDB, what: string): Promise<void> {
  for (const b of BLOBS) {
    const info = await newDb.stat(b.key);
    if (b.contentType === undefined) {
      // None given: S3 stores (and a copy out of it carries) its default.
      expect([undefined, 'application/octet-stream'], `${what}: ${b.key} content type`).to.include(
        info.contentType,
      );
    } else {
      expect(info.contentType, `${what}: ${b.key} content type`).to.equal(b.contentType);
    }
    const { acl: _acl, ...meta } = info.httpMeta ?? {};
    expect(Object.keys(meta).length > 0 ? meta : undefined, `${what}: ${b.key} HTTP metadata`).to.deep.equal(
      b.httpMeta,
    );
    expect((await readAll(await newDb.get(b.key))).toString(), `${what}: ${b.key} bytes`).to.equal(b.body);
  }
}

/** Whether the new backend's client wrote `key` with `command` (the probe's own requests aside). */
function wentBy(counter: RequestCounter | undefined, command: string, key: string): boolean {
  const path = `/${key.split('/').map(encodeURIComponent).join('/')}`;
  return (counter?.requests ?? []).some((r) => r.command === command && r.path.endsWith(path));
}

interface Pairing {
  name: string;
  /** The command that must have moved the bytes (on the new backend's client). */
  via?: 'CopyObjectCommand' | 'PutObjectCommand';
  make(): Promise<{ oldSide: Made; newSide: Made }>;
}

const pairings: Pairing[] = [
  {
    name: 'files → S3 (s3rver)',
    via: 'PutObjectCommand',
    make: async () => ({ oldSide: await files(), newSide: await s3On(await s3rverConfig()) }),
  },
  {
    name: 'S3 (s3rver) → files',
    make: async () => ({ oldSide: await s3On(await s3rverConfig()), newSide: await files() }),
  },
  {
    name: 'S3 → S3 on one s3rver (server-side CopyObject)',
    via: 'CopyObjectCommand',
    make: async () => {
      const config = await s3rverConfig();
      return { oldSide: await s3On(config), newSide: await s3On(config) };
    },
  },
  {
    name: 'S3 → S3 across two s3rvers (streamed)',
    via: 'PutObjectCommand',
    make: async () => {
      s3rver2 ??= await startS3rver();
      return { oldSide: await s3On(await s3rverConfig()), newSide: await s3On(s3rver2.clientConfig()) };
    },
  },
];
if (RGW_ENDPOINT) {
  pairings.push(
    {
      name: 'files → S3 (RGW)',
      via: 'PutObjectCommand',
      make: async () => ({ oldSide: await files(), newSide: await s3On(rgwClientConfig()) }),
    },
    {
      name: 'S3 (RGW) → files',
      make: async () => ({ oldSide: await s3On(rgwClientConfig()), newSide: await files() }),
    },
    {
      name: 'S3 → S3 on RGW',
      make: async () => ({ oldSide: await s3On(rgwClientConfig()), newSide: await s3On(rgwClientConfig()) }),
    },
    {
      name: 'S3 (s3rver) → S3 (RGW), streamed',
      via: 'PutObjectCommand',
      make: async () => ({
        oldSide: await s3On(await s3rverConfig()),
        newSide: await s3On(rgwClientConfig()),
      }),
    },
  );
} else {
  announce('BLOBSHIFT_TEST_RGW', 'Ceph RGW (metadata and ACLs carried by copies)');
}

describe('a copy carries content type and HTTP metadata', function () {
  this.timeout(60_000);
  for (const p of pairings) {
    it(p.name, async () => {
      const { oldSide, newSide } = await p.make();
      try {
        await migrate(oldSide.db, newSide.db);
        if (p.via)
          for (const b of BLOBS)
            expect(wentBy(newSide.counter, p.via, b.key), `${b.key} by ${p.via}`).to.equal(true);
        await expectCarried(newSide.db, p.name);
      } finally {
        await oldSide.drop();
        await newSide.drop();
      }
    });
  }
});

if (RGW_ENDPOINT) {
  const ALL_USERS = 'http://acs.amazonaws.com/groups/global/AllUsers';

  /** Whether an object's ACL lets everyone read it, and whether an anonymous GET does. */
  async function publicRead(db: S3BlobDB, key: string): Promise<{ grant: boolean; anonymous: number }> {
    const acl = await db.client.send(new GetObjectAclCommand({ Bucket: db.bucket, Key: db.prefix + key }));
    const grant = (acl.Grants ?? []).some((g) => g.Grantee?.URI === ALL_USERS && g.Permission === 'READ');
    // A plain GET without credentials (node:http: fetch would un-gzip a Content-Encoding: gzip body).
    const anonymous = await new Promise<number>((resolve, reject) => {
      get(`${RGW_ENDPOINT}/${db.bucket}/${db.prefix}${key}`, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      }).on('error', reject);
    });
    return { grant, anonymous };
  }

  describe('a copy carries public-read ACLs (RGW)', function () {
    this.timeout(60_000);

    it('acl: "public-read" on the new backend makes every copied blob public', async () => {
      const oldSide = await files();
      const newSide = await s3On(rgwClientConfig(), { acl: 'public-read' });
      try {
        await migrate(oldSide.db, newSide.db);
        const db = newSide.db as S3BlobDB;
        for (const b of BLOBS)
          expect(await publicRead(db, b.key), b.key).to.deep.equal({ grant: true, anonymous: 200 });
        await expectCarried(db, 'with acl');
      } finally {
        await oldSide.drop();
        await newSide.drop();
      }
    });

    /** A public and a private blob in a source read with readAcl. */
    async function aclSource(): Promise<Made> {
      const side = await s3On(rgwClientConfig(), { readAcl: true });
      const db = side.db as S3BlobDB;
      await db.put('pub/a.jpg', 'public bytes', {
        contentType: 'image/jpeg',
        httpMeta: { acl: 'public-read' },
      });
      await db.put('priv/b.pdf', 'private bytes', { contentType: 'application/pdf' });
      expect((await db.stat('pub/a.jpg')).httpMeta?.acl).to.equal('public-read');
      expect((await db.stat('priv/b.pdf')).httpMeta?.acl).to.equal(undefined);
      return side;
    }

    async function expectAclsCarried(newDb: S3BlobDB): Promise<void> {
      expect(await publicRead(newDb, 'pub/a.jpg')).to.deep.equal({ grant: true, anonymous: 200 });
      expect(await publicRead(newDb, 'priv/b.pdf')).to.deep.equal({ grant: false, anonymous: 403 });
      expect((await newDb.stat('pub/a.jpg')).contentType).to.equal('image/jpeg');
    }

    it('readAcl on the source: the backfill carries its public-read, and only that (streamed)', async () => {
      const oldSide = await aclSource();
      // The same RGW by another host name: another endpoint, so the bytes stream through the copy.
      const newSide = await s3On({
        ...rgwClientConfig(),
        endpoint: (RGW_ENDPOINT as string).replace('127.0.0.1', 'localhost'),
      });
      try {
        const dir = await freshDir();
        const meta = await MetaDB.open({
          client: 'better-sqlite3',
          connection: { filename: join(dir, 'm.sqlite') },
        });
        try {
          await meta.add({ key: 'pub/a.jpg', parentId: 'p', type: 't', contentLength: 12 });
          await meta.add({ key: 'priv/b.pdf', parentId: 'p', type: 't', contentLength: 13 });
          const summary = await backfill({
            meta,
            oldDb: oldSide.db,
            newDb: newSide.db,
            logDir: join(dir, 'logs'),
          });
          expect(summary).to.include({ exitCode: 0, copied: 2 });
        } finally {
          await meta.close();
        }
        for (const key of ['pub/a.jpg', 'priv/b.pdf'])
          expect(wentBy(newSide.counter, 'PutObjectCommand', key), key).to.equal(true);
        await expectAclsCarried(newSide.db as S3BlobDB);
      } finally {
        await oldSide.drop();
        await newSide.drop();
      }
    });

    it('readAcl on the source: a server-side copyFrom carries its public-read, and only that', async () => {
      // The backfill copies server-side only where CopyObject keeps no-overwrite (not this RGW):
      // copyFrom with the source's info, as the copy path calls it, shows CopyObject takes the ACL.
      const oldSide = await aclSource();
      const newSide = await s3On(rgwClientConfig());
      try {
        const newDb = newSide.db as S3BlobDB;
        for (const key of ['pub/a.jpg', 'priv/b.pdf']) {
          const info = await oldSide.db.stat(key);
          await newDb.copyFrom(oldSide.db, key, {
            size: info.size,
            ...(info.contentType ? { contentType: info.contentType } : {}),
            ...(info.httpMeta ? { httpMeta: info.httpMeta } : {}),
            ...(info.etag ? { sourceEtag: info.etag } : {}),
          });
          expect(wentBy(newSide.counter, 'CopyObjectCommand', key), key).to.equal(true);
        }
        await expectAclsCarried(newDb);
      } finally {
        await oldSide.drop();
        await newSide.drop();
      }
    });

    it('through files and back: the ACL read from S3 rides in the sidecar', async () => {
      const first = await s3On(rgwClientConfig(), { readAcl: true });
      const middle = await files();
      try {
        const s3db = first.db as S3BlobDB;
        await s3db.put('x/pub', 'p', { httpMeta: { acl: 'public-read', cacheControl: 'max-age=60' } });
        const { info, body } = await s3db.getWithInfo('x/pub');
        expect(info.httpMeta).to.deep.equal({ acl: 'public-read', cacheControl: 'max-age=60' });
        await middle.db.put('x/pub', body, { ...(info.httpMeta ? { httpMeta: info.httpMeta } : {}) });
        expect((await middle.db.stat('x/pub')).httpMeta?.acl).to.equal('public-read');
      } finally {
        await first.drop();
        await middle.drop();
      }
    });
  });
}

describe('S3BlobDB acl options', () => {
  it('refuses an ACL that is not a canned one', () => {
    expect(() => new S3BlobDB({ bucket: 'b', acl: 'public' as never })).to.throw(
      /acl: "public" is not a canned ACL/,
    );
  });

  it('a bucket with ACLs disabled: the error says to drop the acl and use a bucket policy', async () => {
    // What S3 answers a PutObject with x-amz-acl on a bucket whose Object Ownership is
    // "bucket owner enforced" (neither s3rver nor RGW can be set up that way).
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(400, { 'content-type': 'application/xml' });
        res.end(
          '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessControlListNotSupported</Code>' +
            '<Message>The bucket does not allow ACLs</Message><RequestId>1</RequestId></Error>',
        );
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    const db = new S3BlobDB({
      bucket: 'owner-enforced',
      acl: 'public-read',
      clientConfig: {
        endpoint: `http://127.0.0.1:${port}`,
        region: 'us-east-1',
        forcePathStyle: true,
        credentials: { accessKeyId: 'k', secretAccessKey: 's' },
        maxAttempts: 1,
      },
    });
    try {
      const err = await db.put('k', 'v').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).to.have.property('code', 'E_BACKEND');
      expect((err as Error).message).to.include('AccessControlListNotSupported');
      expect((err as Error).message).to.include('the bucket has ACLs disabled');
    } finally {
      await db.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
