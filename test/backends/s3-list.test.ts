/** S3BlobDB: listing (reserved objects, the prefix, byte order, paging) and bulkDelete, on the servers and on a fake endpoint. */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { expect } from 'chai';
import { S3BlobDB } from '../../lib/backends/s3/index.js';
import { BackendError, InvalidKeyError } from '../../lib/contract/errors.js';
import { listKeys, rejectionOf } from '../conformance/blobdb.suite.js';
import { describeS3Topic, rawKeys } from '../support/s3-bench.js';
import { countRequests, createBucket, deleteBucket } from '../support/s3rver.js';

describeS3Topic({
  specifics: ({ server, bucket, make }) => {
    it('never lists reserved objects, and hides the prefix', async () => {
      const db = make({ prefix: 'tenant' });
      await db.put('a/b', '1');
      await server()
        .admin()
        .send(new PutObjectCommand({ Bucket: bucket(), Key: 'tenant/a/.blobshift-tmp-1', Body: 'x' }));
      await server()
        .admin()
        .send(new PutObjectCommand({ Bucket: bucket(), Key: 'tenant/.blobshift-probe-x', Body: 'x' }));
      await server()
        .admin()
        .send(new PutObjectCommand({ Bucket: bucket(), Key: 'outside', Body: 'x' }));
      expect(await listKeys(db)).to.deep.equal(['a/b']);
      expect(await listKeys(db, { prefix: 'a/' })).to.deep.equal(['a/b']);
      expect(db.prefix).to.equal('tenant/');
      expect((await rawKeys(server().admin(), bucket())).sort()).to.deep.equal(
        ['outside', 'tenant/.blobshift-probe-x', 'tenant/a/.blobshift-tmp-1', 'tenant/a/b'].sort(),
      );
    });

    it('refuses a key that would pass 1024 bytes under the prefix with InvalidKeyError', async () => {
      const db = make({ prefix: 'p'.repeat(30) });
      const key = `${'k'.repeat(200)}/`.repeat(4) + 'k'.repeat(200); // 1004 bytes: valid alone
      const err = await rejectionOf(db.put(key, 'x'));
      expect(err).to.be.instanceOf(InvalidKeyError);
      expect((err as InvalidKeyError).reason).to.match(/1035 bytes; S3 allows 1024/);
      const res = await db.bulkDelete([key]);
      expect(res.errors[0]?.error).to.be.instanceOf(InvalidKeyError);
    });

    it('bulkDelete sends 1000 keys a request', async function () {
      this.timeout(120_000);
      const db = make();
      const keys = Array.from({ length: 1005 }, (_, i) => `d/${String(i).padStart(4, '0')}`);
      for (let i = 0; i < keys.length; i += 50) {
        await Promise.all(keys.slice(i, i + 50).map((key) => db.put(key, 'x')));
      }
      const counter = countRequests(db.client);
      const res = await db.bulkDelete([...keys, 'never-was']);
      expect(res.errors).to.deep.equal([]);
      expect(counter.invocations('DeleteObjectsCommand')).to.equal(2);
      expect(await listKeys(db)).to.deep.equal([]);
    });
  },
  s3rver: ({ server, admin }) => {
    it('sorts a misordered listing that fits one page (s3rver walks directories)', async () => {
      const bucket = await createBucket(admin());
      const db = new S3BlobDB({ bucket, clientConfig: server.clientConfig() });
      for (const key of ['a/a', 'a-c', 'a0', 'a']) await db.put(key, key);
      const raw = await rawKeys(admin(), bucket);
      expect(raw, 's3rver itself lists out of byte order').to.not.deep.equal(['a', 'a-c', 'a/a', 'a0']);
      expect(await listKeys(db)).to.deep.equal(['a', 'a-c', 'a/a', 'a0']);
      expect(await listKeys(db, { startAfter: 'a-c' })).to.deep.equal(['a/a', 'a0']);
      await db.close();
      await deleteBucket(admin(), bucket);
    });
  },
  more: () => {
    describe('against a fake S3 endpoint (listing order and per-key delete errors)', () => {
      let fake: Server;
      let endpoint: string;
      let pages: Record<string, { keys: string[]; next?: string; truncated?: boolean }>;
      const listXml = (keys: string[], next: string | undefined, truncated: boolean): string =>
        '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
        `<Name>b</Name><KeyCount>${keys.length}</KeyCount><MaxKeys>1000</MaxKeys>` +
        `<IsTruncated>${truncated ? 'true' : 'false'}</IsTruncated>` +
        (next ? `<NextContinuationToken>${next}</NextContinuationToken>` : '') +
        keys
          .map(
            (k) =>
              `<Contents><Key>${k}</Key><Size>1</Size><ETag>"e"</ETag><LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents>`,
          )
          .join('') +
        '</ListBucketResult>';

      before(async () => {
        fake = createServer((req: IncomingMessage, res: ServerResponse) => {
          const url = new URL(req.url ?? '/', 'http://x');
          req.resume();
          req.on('end', () => {
            res.setHeader('content-type', 'application/xml');
            if (req.method === 'GET' && url.searchParams.get('list-type') === '2') {
              const page = pages[url.searchParams.get('continuation-token') ?? 'first'] ?? { keys: [] };
              res.end(listXml(page.keys, page.next, page.truncated ?? page.next !== undefined));
            } else if (req.method === 'POST' && url.searchParams.has('delete')) {
              res.end(
                '<?xml version="1.0" encoding="UTF-8"?><DeleteResult>' +
                  '<Error><Key>pre/locked</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>' +
                  '<Error><Key>pre/gone</Key><Code>NoSuchKey</Code><Message>no such key</Message></Error>' +
                  '</DeleteResult>',
              );
            } else {
              res.statusCode = 501;
              res.end();
            }
          });
        });
        fake.listen(0, '127.0.0.1');
        await once(fake, 'listening');
        endpoint = `http://127.0.0.1:${(fake.address() as AddressInfo).port}`;
      });
      after(async () => {
        fake.closeAllConnections();
        await new Promise((r) => fake.close(r));
      });

      const fakeDb = (prefix?: string): S3BlobDB =>
        new S3BlobDB({
          bucket: 'b',
          ...(prefix ? { prefix } : {}),
          clientConfig: {
            endpoint,
            region: 'us-east-1',
            forcePathStyle: true,
            maxAttempts: 1,
            credentials: { accessKeyId: 'AKIDFAKE', secretAccessKey: 'fake-secret-fake' },
            requestChecksumCalculation: 'WHEN_REQUIRED',
            responseChecksumValidation: 'WHEN_REQUIRED',
          },
        });

      it('a paged listing whose page is out of byte order is a BackendError naming the server', async () => {
        pages = { first: { keys: ['a', 'c', 'b'], next: 't2' }, t2: { keys: ['d'] } };
        const db = fakeDb();
        const err = await rejectionOf(listKeys(db));
        expect(err).to.be.instanceOf(BackendError);
        expect((err as Error).message).to.include(endpoint);
        expect((err as Error).message).to.include('out of S3 byte order');
        expect((err as Error).message).to.include('"b" came after "c"');
        await db.close();
      });

      it('a page that starts before the previous page ended is a BackendError, after yielding the good page', async () => {
        pages = { first: { keys: ['a', 'c'], next: 't2' }, t2: { keys: ['b', 'd'] } };
        const db = fakeDb();
        const seen: string[] = [];
        const err = await rejectionOf(
          (async () => {
            for await (const info of db.list()) seen.push(info.key);
          })(),
        );
        expect(seen).to.deep.equal(['a', 'c']);
        expect(err).to.be.instanceOf(BackendError);
        expect((err as Error).message).to.match(/out of S3 byte order: "b" came after "c" \(page 2\)/);
        await db.close();
      });

      it('a truncated listing without a continuation token is a BackendError, not an endless loop', async () => {
        pages = { first: { keys: ['a'], truncated: true } };
        const db = fakeDb();
        const err = await rejectionOf(listKeys(db));
        expect(err).to.be.instanceOf(BackendError);
        expect((err as Error).message).to.include('without a continuation token');
        await db.close();
      });

      it('a misordered listing that fits one page is sorted (nothing can be skipped)', async () => {
        pages = { first: { keys: ['b', 'a/x', 'a-y', 'a'] } };
        const db = fakeDb();
        expect(await listKeys(db)).to.deep.equal(['a', 'a-y', 'a/x', 'b']);
        expect(await listKeys(db, { startAfter: 'a-y' })).to.deep.equal(['a/x', 'b']);
        await db.close();
      });

      it('a server that answers 501 to If-None-Match has no conditional writes (the probe says so)', async () => {
        const db = fakeDb();
        const caps = await db.probeCapabilities();
        expect(caps.conditionalWrites).to.equal(false);
        expect(caps.conditional).to.deep.equal({ put: false, multipartComplete: false, copy: false });
        await db.close();
      });

      it('bulkDelete returns per-key server errors without the prefix, and ignores NoSuchKey', async () => {
        const db = fakeDb('pre');
        const res = await db.bulkDelete(['locked', 'gone', 'fine', '../bad']);
        expect(res.errors.map((e) => e.key).sort()).to.deep.equal(['../bad', 'locked']);
        const locked = res.errors.find((e) => e.key === 'locked');
        expect(locked?.error).to.be.instanceOf(BackendError);
        expect(locked?.error.message).to.include('AccessDenied');
        expect(res.errors.find((e) => e.key === '../bad')?.error).to.be.instanceOf(InvalidKeyError);
        await db.close();
      });
    });
  },
});
