/** S3BlobDB: the client and the request path: the lean path against the SDK, sockets, retries, clock skew, redirects, credentials, close(). */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { expect } from 'chai';
import { S3BlobDB, type S3ClientConfigLike } from '../../lib/backends/s3/index.js';
import { getWithInfo, readAll } from '../../lib/contract/body.js';
import { BackendError } from '../../lib/contract/errors.js';
import type { PutOptions } from '../../lib/contract/types.js';
import { getBytes, rejectionOf } from '../conformance/blobdb.suite.js';
import { startFaultProxy } from '../support/fault-proxy.js';
import { describeS3Topic, errorTexts, startInterceptor, useS3rver } from '../support/s3-bench.js';
import { countRequests, createBucket, deleteBucket } from '../support/s3rver.js';

describeS3Topic({
  specifics: ({ server, bucket, make }) => {
    for (const requestPath of ['lean', 'sdk'] as const) {
      it(`getWithInfo of an answer without Content-Length (a proxy that re-chunks) takes the size from a HEAD (${requestPath} path)`, async () => {
        const endpoint = server().config().endpoint as string;
        // The proxy drops the GET answer's length: node then sends it chunked.
        const proxy = await startInterceptor(endpoint, (req) =>
          // An object GET (the SDK adds `?x-id=GetObject`; listings have `list-type`).
          req.method === 'GET' && !(req.url ?? '').includes('list-type')
            ? {
                rewrite: (h) => {
                  delete h['content-length'];
                },
              }
            : undefined,
        );
        try {
          const db = make({ clientConfig: { ...server().config(), endpoint: proxy.endpoint }, requestPath });
          const bytes = randomBytes(70_000);
          await db.put('chunked', bytes, { contentType: 'image/png' });
          const counter = countRequests(db.client);
          const { info, body } = await getWithInfo(db, 'chunked');
          expect(info).to.include({ key: 'chunked', size: bytes.length, contentType: 'image/png' });
          expect((await readAll(body)).equals(bytes)).to.equal(true);
          expect(counter.count('HeadObjectCommand')).to.equal(1);
        } finally {
          await proxy.stop();
        }
      });
    }

    it('close() destroys a client it built, and leaves a passed-in client usable', async () => {
      const client = server().admin();
      const borrowed = new S3BlobDB({ bucket: bucket(), client });
      await borrowed.put('c', 'x');
      await borrowed.close();
      const head = await client.send(new HeadObjectCommand({ Bucket: bucket(), Key: 'c' }));
      expect(head.ContentLength).to.equal(1);
      const owned = make();
      await owned.close();
      expect(await rejectionOf(owned.exists('c'))).to.be.instanceOf(BackendError);
    });
  },
  s3rver: ({ server, admin }) => {
    it('honours maxSockets: at most that many connections under 16 concurrent puts', async () => {
      const bucket = await createBucket(admin());
      const connectionsFor = async (maxSockets: number): Promise<number> => {
        const db = new S3BlobDB({ bucket, clientConfig: server.clientConfig(), maxSockets });
        let connections = 0;
        const onConnection = (): void => {
          connections++;
        };
        server.httpServer.on('connection', onConnection);
        try {
          await Promise.all(
            Array.from({ length: 16 }, (_, i) => db.put(`s/${i}`, Buffer.alloc(64 * 1024, i))),
          );
        } finally {
          server.httpServer.off('connection', onConnection);
          await db.close();
        }
        return connections;
      };
      const two = await connectionsFor(2);
      expect(two).to.be.within(1, 2);
      const many = await connectionsFor(16);
      expect(many, 'without the limit the same load opens more sockets').to.be.above(2);
      await deleteBucket(admin(), bucket);
    });
  },
  more: () => {
    describe('the lean request path (PutObject, HeadObject, GetObject, DeleteObject without the SDK middleware)', () => {
      const { server, admin } = useS3rver();
      let bucket: string;
      beforeEach(async () => {
        bucket = await createBucket(admin());
      });
      afterEach(async () => {
        await deleteBucket(admin(), bucket).catch(() => {});
      });

      /** One request as a fake S3 saw it: method, path, status answered, and its signing scope. */
      interface FakeSeen {
        method: string;
        path: string;
        status: number;
        accessKeyId: string;
        region: string;
        amzDate: string;
        token: string | undefined;
      }

      /**
       * A fake S3 on 127.0.0.1 for what no real server does on demand: it answers
       * every PUT (ETag) and HEAD (8 bytes) unless `refuse` says otherwise.
       */
      async function startFakeS3(
        clockAheadMs: number,
        refuse: (
          seen: Omit<FakeSeen, 'status'>,
        ) => { status: number; headers?: Record<string, string>; body?: string } | undefined,
      ): Promise<{ endpoint: string; seen: FakeSeen[]; stop(): Promise<void> }> {
        const seen: FakeSeen[] = [];
        const fake = createServer((req, res) => {
          req.resume();
          req.on('end', () => {
            const auth = /Credential=([^/]+)\/\d{8}\/([^/]+)\//.exec(req.headers.authorization ?? '');
            const request = {
              method: req.method ?? '',
              path: req.url ?? '',
              accessKeyId: auth?.[1] ?? '',
              region: auth?.[2] ?? '',
              amzDate: String(req.headers['x-amz-date'] ?? ''),
              token: req.headers['x-amz-security-token'] as string | undefined,
            };
            const refusal = refuse(request);
            const status = refusal?.status ?? 200;
            seen.push({ ...request, status });
            const body = refusal?.body ?? '';
            res.writeHead(status, {
              date: new Date(Date.now() + clockAheadMs).toUTCString(),
              'content-length': String(req.method === 'HEAD' && !refusal ? 8 : Buffer.byteLength(body)),
              etag: '"fake"',
              ...(refusal ? { 'content-type': 'application/xml' } : {}),
              ...refusal?.headers,
            });
            res.end(req.method === 'HEAD' ? undefined : body);
          });
        });
        fake.listen(0, '127.0.0.1');
        await once(fake, 'listening');
        return {
          endpoint: `http://127.0.0.1:${(fake.address() as AddressInfo).port}`,
          seen,
          async stop() {
            fake.closeAllConnections();
            await new Promise((r) => fake.close(r));
          },
        };
      }

      const fakeConfig = (endpoint: string): S3ClientConfigLike => ({
        endpoint,
        region: 'us-east-1',
        forcePathStyle: true,
        credentials: { accessKeyId: 'AKIDLEAN', secretAccessKey: 'lean-secret-never-shown' },
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      });

      it('is taken for a client the backend builds; requestPath "sdk" and a passed-in client go through the SDK', async () => {
        const lean = new S3BlobDB({ bucket, clientConfig: server.clientConfig() });
        const sdk = new S3BlobDB({ bucket, clientConfig: server.clientConfig(), requestPath: 'sdk' });
        const client = server.client();
        const passed = new S3BlobDB({ bucket, client });
        expect(await lean.usesLeanPath()).to.equal(true);
        expect(await sdk.usesLeanPath()).to.equal(false);
        expect(await passed.usesLeanPath()).to.equal(false);
        // The lean requests reach the server as the SDK's: one PUT, HEAD, GET and DELETE each.
        const counter = countRequests(lean.client);
        await lean.put('k', 'x');
        await lean.stat('k');
        await getBytes(lean, 'k');
        await lean.delete('k');
        expect(counter.byCommand()).to.deep.equal({
          PutObjectCommand: 1,
          HeadObjectCommand: 2,
          GetObjectCommand: 1,
          DeleteObjectCommand: 1,
        });
        for (const db of [lean, sdk, passed]) await db.close();
        client.destroy();
      });

      it('releases the socket of every answer, bodiless refusals included (200 HEADs of missing keys on 2 sockets)', async () => {
        const db = new S3BlobDB({
          bucket,
          clientConfig: { ...server.clientConfig(), maxAttempts: 1 },
          maxSockets: 2,
          connectionTimeoutMs: 2000,
        });
        expect(await db.usesLeanPath()).to.equal(true);
        const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => db.exists(`missing/${i}`)));
        expect(answers.every((a) => a === false)).to.equal(true);
        await db.close();
      });

      it('sends what the SDK sends for a put (headers, metadata, CRC32 under WHEN_SUPPORTED) and reads back the same info', async () => {
        for (const mode of ['WHEN_REQUIRED', 'WHEN_SUPPORTED'] as const) {
          const config = { ...server.clientConfig(), requestChecksumCalculation: mode };
          const lean = new S3BlobDB({ bucket, clientConfig: config });
          const sdk = new S3BlobDB({ bucket, clientConfig: config, requestPath: 'sdk' });
          const opts: PutOptions = {
            contentType: 'text/plain; charset=utf-8',
            overwrite: false,
            httpMeta: {
              cacheControl: 'max-age=60',
              contentDisposition: 'attachment; filename="a.txt"',
              contentEncoding: 'identity',
              contentLanguage: 'en',
              metadata: { origin: 'lean-test', Mixed: 'Case' },
            },
          };
          const body = randomBytes(3000);
          const sent: Record<string, string>[] = [];
          for (const [db, key] of [
            [lean, `${mode}/lean`],
            [sdk, `${mode}/sdk`],
          ] as const) {
            const counter = countRequests(db.client);
            await db.put(key, body, opts);
            // The last PutObject: the conditional-write probe comes first.
            const put = counter.requests.filter((r) => r.command === 'PutObjectCommand').at(-1);
            counter.remove();
            const wanted = Object.entries(put?.headers ?? {}).filter(
              ([h]) =>
                h.startsWith('content-') ||
                h.startsWith('x-amz-meta-') ||
                h.startsWith('x-amz-checksum') ||
                h === 'x-amz-sdk-checksum-algorithm' ||
                h === 'x-amz-content-sha256' ||
                h === 'if-none-match' ||
                h === 'cache-control',
            );
            sent.push(Object.fromEntries(wanted));
          }
          expect(sent[0], mode).to.deep.equal(sent[1]);
          if (mode === 'WHEN_SUPPORTED') expect(sent[0]).to.have.property('x-amz-checksum-crc32');
          const [a, b] = [await lean.stat(`${mode}/sdk`), await sdk.stat(`${mode}/lean`)];
          expect({ ...a, key: '', lastModified: undefined }).to.deep.equal({
            ...b,
            key: '',
            lastModified: undefined,
          });
          expect((await getBytes(lean, `${mode}/sdk`)).equals(body)).to.equal(true);
          await lean.close();
          await sdk.close();
        }
      });

      it('maps not-found and refused requests to the same errors as the SDK path', async () => {
        // A fake S3 that refuses everything as a wrong secret is refused (s3rver takes any secret).
        const fake = await startFakeS3(0, ({ method }) => ({
          status: 403,
          ...(method === 'HEAD'
            ? {}
            : {
                body: '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error>',
              }),
        }));
        const outcome = async (requestPath: 'lean' | 'sdk') => {
          const db = new S3BlobDB({ bucket, clientConfig: server.clientConfig(), requestPath });
          const bad = new S3BlobDB({
            bucket: 'b',
            clientConfig: { ...fakeConfig(fake.endpoint), maxAttempts: 1 },
            requestPath,
          });
          const out: unknown[] = [];
          for (const err of [
            await rejectionOf(db.get('missing')),
            await rejectionOf(db.stat('missing')),
            await rejectionOf(bad.put('k', 'x')),
            await rejectionOf(bad.stat('k')),
            await rejectionOf(bad.get('k')),
            await rejectionOf(bad.delete('k')),
          ]) {
            const cause = (err as Error).cause as
              | { name?: string; $metadata?: { httpStatusCode?: number } }
              | undefined;
            for (const text of errorTexts(err)) expect(text).to.not.include('lean-secret-never-shown');
            out.push([
              (err as Error).constructor.name,
              cause?.name,
              cause?.$metadata?.httpStatusCode,
              (err as Error).message,
            ]);
          }
          out.push(await db.exists('missing'), await db.delete('missing'));
          await db.close();
          await bad.close();
          return out;
        };
        try {
          const lean = await outcome('lean');
          expect(lean).to.deep.equal(await outcome('sdk'));
          expect((lean[0] as unknown[]).slice(0, 3)).to.deep.equal(['BlobNotFoundError', 'NoSuchKey', 404]);
          expect((lean[1] as unknown[]).slice(0, 3)).to.deep.equal([
            'BlobNotFoundError',
            undefined,
            undefined,
          ]);
          expect((lean[2] as unknown[]).slice(0, 3)).to.deep.equal([
            'BackendError',
            'SignatureDoesNotMatch',
            403,
          ]);
          expect((lean[3] as unknown[])[2]).to.equal(403);
        } finally {
          await fake.stop();
        }
      });

      it("retries 503 SlowDown with the client's retry strategy, and gives up after maxAttempts with the SDK's error", async () => {
        let slowdowns = 2;
        const proxy = await startFaultProxy({
          target: server.endpoint,
          rules: [
            {
              rate: 1,
              kinds: ['slowdown'],
              match: ({ method, path }) =>
                (method === 'PUT' && path === `/${bucket}/slow` && slowdowns-- > 0) ||
                (method === 'HEAD' && path === `/${bucket}/always`),
            },
          ],
        });
        try {
          const db = new S3BlobDB({
            bucket,
            clientConfig: { ...server.clientConfig(), endpoint: proxy.endpoint },
          });
          expect(await db.usesLeanPath()).to.equal(true);
          await db.put('slow', 'eventually');
          expect(proxy.count('PUT', (p) => p === `/${bucket}/slow`)).to.equal(3);
          expect(proxy.faults('slowdown')).to.equal(2);
          expect((await getBytes(db, 'slow')).toString()).to.equal('eventually');
          const err = await rejectionOf(db.stat('always'));
          expect(err).to.be.instanceOf(BackendError);
          const cause = (err as Error).cause as {
            $metadata?: { httpStatusCode?: number; attempts?: number };
          };
          expect(cause.$metadata?.httpStatusCode).to.equal(503);
          expect(cause.$metadata?.attempts).to.equal(3);
          expect((cause.$metadata as { totalRetryDelay?: number }).totalRetryDelay).to.be.greaterThan(0);
          expect(proxy.count('HEAD', (p) => p === `/${bucket}/always`)).to.equal(3);
          await db.close();
        } finally {
          await proxy.stop();
        }
      });

      for (const requestPath of ['lean', 'sdk'] as const) {
        it(`corrects the clock after RequestTimeTooSkewed and retries (${requestPath} path)`, async () => {
          // This server's clock runs two hours ahead; it refuses requests dated more than 15 minutes off.
          const ahead = 2 * 3600_000;
          const fake = await startFakeS3(ahead, ({ amzDate }) => {
            const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate);
            const signed = m ? Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!) : 0;
            const serverNow = Date.now() + ahead;
            if (Math.abs(serverNow - signed) <= 15 * 60_000) return undefined;
            return {
              status: 403,
              body: `<?xml version="1.0" encoding="UTF-8"?><Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the request time and the current time is too large.</Message><ServerTime>${new Date(serverNow).toISOString()}</ServerTime></Error>`,
            };
          });
          try {
            const db = new S3BlobDB({ bucket: 'b', clientConfig: fakeConfig(fake.endpoint), requestPath });
            await db.put('k', 'x');
            expect(fake.seen.map((r) => r.status)).to.deep.equal([403, 200]);
            // The offset sticks: the next request is dated right the first time.
            const head = await db.stat('k');
            expect(head.size).to.equal(8);
            expect(fake.seen.map((r) => r.status)).to.deep.equal([403, 200, 200]);
            await db.close();
          } finally {
            await fake.stop();
          }
        });

        it(`follows a 301 to the bucket's region and signs for it (${requestPath} path)`, async () => {
          const fake = await startFakeS3(0, ({ region, method }) =>
            region === 'eu-central-1'
              ? undefined
              : {
                  status: 301,
                  headers: { 'x-amz-bucket-region': 'eu-central-1' },
                  ...(method === 'HEAD'
                    ? {}
                    : {
                        body: '<?xml version="1.0" encoding="UTF-8"?><Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be addressed using the specified endpoint.</Message></Error>',
                      }),
                },
          );
          try {
            const db = new S3BlobDB({ bucket: 'b', clientConfig: fakeConfig(fake.endpoint), requestPath });
            await db.put('k', 'x');
            expect((await db.stat('k')).size).to.equal(8);
            const statuses = fake.seen.map((r) => `${r.method} ${r.status} ${r.region}`);
            expect(statuses.slice(0, 2)).to.deep.equal(['PUT 301 us-east-1', 'PUT 200 eu-central-1']);
            expect(statuses.at(-1)).to.equal('HEAD 200 eu-central-1');
            // The lean path remembers the region: the HEAD went there directly.
            if (requestPath === 'lean') expect(statuses).to.have.length(3);
            await db.close();
          } finally {
            await fake.stop();
          }
        });
      }

      it('signs with credentials from the default chain and picks up refreshed ones', async () => {
        let issued = 0;
        const creds = createServer((_req, res) => {
          issued++;
          res.setHeader('content-type', 'application/json');
          // Expiring within the SDK's five-minute refresh window: every request asks again.
          res.end(
            JSON.stringify({
              AccessKeyId: `AKIDROTATED${issued}`,
              SecretAccessKey: `rotated-secret-${issued}`,
              Token: `token-${issued}`,
              Expiration: new Date(Date.now() + 120_000).toISOString(),
            }),
          );
        });
        creds.listen(0, '127.0.0.1');
        await once(creds, 'listening');
        const fake = await startFakeS3(0, () => undefined);
        const saved = { ...process.env };
        for (const name of [
          'AWS_ACCESS_KEY_ID',
          'AWS_SECRET_ACCESS_KEY',
          'AWS_SESSION_TOKEN',
          'AWS_PROFILE',
        ]) {
          delete process.env[name];
        }
        process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI = `http://127.0.0.1:${(creds.address() as AddressInfo).port}/creds`;
        process.env.AWS_CONFIG_FILE = '/nonexistent/blobshift-test-config';
        process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent/blobshift-test-credentials';
        try {
          const { credentials: _none, ...config } = fakeConfig(fake.endpoint);
          const db = new S3BlobDB({ bucket: 'b', clientConfig: config });
          expect(await db.usesLeanPath()).to.equal(true);
          // The SDK's memoized provider refreshes in the background: a refreshed key shows by the third request.
          await db.put('k', 'x');
          await db.stat('k');
          await db.stat('k');
          const keys = fake.seen.map((r) => r.accessKeyId);
          expect(keys[0]).to.match(/^AKIDROTATED\d+$/);
          expect(new Set(keys).size, 'a refreshed key signs a later request').to.be.at.least(2);
          expect(fake.seen.every((r) => r.token?.startsWith('token-'))).to.equal(true);
          await db.close();
        } finally {
          for (const name of Object.keys(process.env)) if (!(name in saved)) delete process.env[name];
          Object.assign(process.env, saved);
          await fake.stop();
          creds.closeAllConnections();
          await new Promise((r) => creds.close(r));
        }
      });
    });
  },
});
