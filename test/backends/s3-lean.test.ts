/** S3BlobDB: the lean request path sends, reads and fails as the SDK does, and releases every socket. */
import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { S3BlobDB } from '../../lib/backends/s3/index.js';
import type { PutOptions } from '../../lib/contract/types.js';
import { getBytes, rejectionOf } from '../conformance/blobdb.suite.js';
import { fakeConfig, LEAN_PATH, startFakeS3 } from '../support/fake-s3.js';
import { describeS3Topic, errorTexts, useS3rver } from '../support/s3-bench.js';
import { countRequests, createBucket, deleteBucket } from '../support/s3rver.js';

describeS3Topic({
  more: () => {
    describe(LEAN_PATH, () => {
      const { server, admin } = useS3rver();
      let bucket: string;
      beforeEach(async () => {
        bucket = await createBucket(admin());
      });
      afterEach(async () => {
        await deleteBucket(admin(), bucket).catch(() => {});
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
    });
  },
});
