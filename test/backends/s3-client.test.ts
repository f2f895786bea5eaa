/** S3BlobDB: the client: an answer without Content-Length, close(), maxSockets. */
import { randomBytes } from 'node:crypto';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { expect } from 'chai';
import { S3BlobDB } from '../../lib/backends/s3/index.js';
import { getWithInfo, readAll } from '../../lib/contract/body.js';
import { BackendError } from '../../lib/contract/errors.js';
import { rejectionOf } from '../conformance/blobdb.suite.js';
import { describeS3Topic, startInterceptor } from '../support/s3-bench.js';
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
});
