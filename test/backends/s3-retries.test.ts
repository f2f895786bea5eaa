/** S3BlobDB: the lean request path recovers as the SDK does: 503 SlowDown, a skewed clock, a region redirect, refreshed credentials. */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import { S3BlobDB } from '../../lib/backends/s3/index.js';
import { BackendError } from '../../lib/contract/errors.js';
import { getBytes, rejectionOf } from '../conformance/blobdb.suite.js';
import { fakeConfig, LEAN_PATH, startFakeS3 } from '../support/fake-s3.js';
import { startFaultProxy } from '../support/fault-proxy.js';
import { describeS3Topic, useS3rver } from '../support/s3-bench.js';
import { createBucket, deleteBucket } from '../support/s3rver.js';

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
