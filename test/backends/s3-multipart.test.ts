/** S3BlobDB: multipart uploads: parts from reused buffers, a failed source or part, a short completion, the HEAD after it, metadata. */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { expect } from 'chai';
import { BackendError, SizeMismatchError } from '../../lib/contract/errors.js';
import { getBytes, rejectionOf } from '../conformance/blobdb.suite.js';
import { bytesStream, describeS3Topic, listUploads, MiB } from '../support/s3-bench.js';
import { countRequests } from '../support/s3rver.js';

describeS3Topic({
  specifics: ({ server, bucket, make }) => {
    it('a completion that leaves out a part never leaves a short object behind', async () => {
      const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
      // Stand-in for the old lib-storage bug: the completion leaves out the last part.
      db.client.middlewareStack.add(
        (next, context) => async (args) => {
          if (context.commandName === 'CompleteMultipartUploadCommand') {
            const input = args.input as { MultipartUpload?: { Parts?: unknown[] } };
            input.MultipartUpload?.Parts?.pop();
          }
          return next(args);
        },
        { step: 'initialize', name: 'dropLastPart' },
      );
      const err = await rejectionOf(db.put('short', bytesStream(12 * MiB)));
      if (server().uploads) {
        // RGW refuses a completion that omits an uploaded part (InvalidPart).
        expect(err).to.be.instanceOf(BackendError);
        expect((err as Error).message).to.include('InvalidPart');
      } else {
        // s3rver completes it: the HEAD after completion finds 10 MiB, deletes it, and the put fails.
        expect(err).to.be.instanceOf(SizeMismatchError);
        expect((err as SizeMismatchError).expected).to.equal(12 * MiB);
        expect((err as SizeMismatchError).actual).to.equal(10 * MiB);
      }
      expect(await db.exists('short')).to.equal(false);
    });

    it('the HEAD after a multipart upload never deletes an object a concurrent writer put there', async () => {
      const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
      // Another writer replaces the object between the completion and the HEAD.
      db.client.middlewareStack.add(
        (next, context) => async (args) => {
          if (context.commandName === 'HeadObjectCommand') {
            const input = args.input as { Bucket: string; Key: string };
            await server()
              .admin()
              .send(new PutObjectCommand({ Bucket: input.Bucket, Key: input.Key, Body: 'the other writer' }));
          }
          return next(args);
        },
        { step: 'initialize', name: 'concurrentWriter' },
      );
      const outcome = await db.put('k', bytesStream(11 * MiB)).then(
        (info) => info,
        (err: unknown) => err,
      );
      if (outcome instanceof Error) {
        // No ETag from the completion (RGW): the put cannot tell, and says so.
        expect(outcome).to.be.instanceOf(BackendError);
        expect(outcome.message).to.include('left in place');
      } else {
        expect(outcome).to.include({ key: 'k', size: 11 * MiB });
      }
      const admin = server().admin();
      const head = await admin.send(new HeadObjectCommand({ Bucket: bucket(), Key: 'k' }));
      expect(head.ContentLength).to.equal('the other writer'.length);
    });

    it('a known-size stream over the threshold goes up in parts from reused buffers, at most queueSize at once', async () => {
      const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB, queueSize: 2 });
      const counter = countRequests(db.client);
      let running = 0;
      let most = 0;
      db.client.middlewareStack.add(
        (next, context) => async (args) => {
          if (context.commandName !== 'UploadPartCommand') return next(args);
          running++;
          most = Math.max(most, running);
          try {
            return await next(args);
          } finally {
            running--;
          }
        },
        { step: 'initialize', name: 'partsInFlight' },
      );
      const body = randomBytes(21 * MiB + 7);
      const info = await db.put('parts', Readable.from([body.subarray(0, 3), body.subarray(3)]), {
        size: body.length,
      });
      expect(info.size).to.equal(body.length);
      expect(counter.count('UploadPartCommand'), 'five parts: 4 × 5 MiB and the rest').to.equal(5);
      expect(most, 'parts in flight').to.be.within(1, 2);
      expect(await getBytes(db, 'parts')).to.deep.equal(body);
    });

    it('a source stream that fails midway rejects with its own error and aborts the multipart upload', async () => {
      const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
      const counter = countRequests(db.client);
      let sent = 0;
      const failing = new Readable({
        read() {
          if (sent >= 8 * MiB) {
            this.destroy(new Error('the disk went away'));
            return;
          }
          sent += MiB;
          this.push(Buffer.alloc(MiB, 1));
        },
      });
      const err = await rejectionOf(db.put('broken', failing, { size: 12 * MiB }));
      expect((err as Error).message).to.equal('the disk went away');
      expect(counter.count('AbortMultipartUploadCommand')).to.equal(1);
      expect(counter.count('CompleteMultipartUploadCommand')).to.equal(0);
      expect(await db.exists('broken')).to.equal(false);
      if (server().uploads) expect(await listUploads(server().admin(), bucket())).to.equal(0);
    });

    it('a part the server fails once is sent again (parts are buffers) and the upload completes', async () => {
      const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
      let failed = false;
      db.client.middlewareStack.add(
        (next, context) => async (args) => {
          if (context.commandName === 'UploadPartCommand' && !failed) {
            failed = true;
            throw Object.assign(new Error('We encountered an internal error.'), {
              name: 'InternalError',
              $fault: 'server',
              $metadata: { httpStatusCode: 500 },
            });
          }
          return next(args);
        },
        { step: 'finalizeRequest', priority: 'low', name: 'failOnePart' },
      );
      const body = randomBytes(11 * MiB);
      await db.put('retried', Readable.from([body]), { size: body.length });
      expect(failed).to.equal(true);
      expect(await getBytes(db, 'retried')).to.deep.equal(body);
    });

    it('carries content type and HTTP metadata through a multipart upload', async () => {
      const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
      const info = await db.put('mp', bytesStream(11 * MiB, 0x62), {
        contentType: 'video/mp4',
        httpMeta: {
          cacheControl: 'max-age=60',
          contentDisposition: 'inline',
          metadata: { owner: 'case-17' },
        },
      });
      expect(info.size).to.equal(11 * MiB);
      const st = await db.stat('mp');
      expect(st.size).to.equal(11 * MiB);
      expect(st.contentType).to.equal('video/mp4');
      expect(st.httpMeta).to.include({ cacheControl: 'max-age=60', contentDisposition: 'inline' });
      expect(st.httpMeta?.metadata).to.deep.equal({ owner: 'case-17' });
    });
  },
});
