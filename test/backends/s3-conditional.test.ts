import { HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { expect } from 'chai';
import { S3BlobDB } from '../../lib/backends/s3/index.js';
import { BlobExistsError } from '../../lib/contract/errors.js';
import { getBytes, rejectionOf } from '../conformance/blobdb.suite.js';
import { RGW_ENDPOINT } from '../support/env.js';
import {
  bytesStream,
  describeS3Topic,
  listUploads,
  MiB,
  preconditionFailed,
  rawKeys,
  startInterceptor,
} from '../support/s3-bench.js';
import { countRequests, createBucket, deleteBucket, rgwClientConfig } from '../support/s3rver.js';

describeS3Topic({
  specifics: ({ server, bucket, make }) => {
    it('the probe answers once per bucket, leaves nothing behind, and matches the server', async () => {
      const db = make();
      expect(db.capabilities.conditionalWrites, 'false before the probe').to.equal(false);
      const counter = countRequests(db.client);
      const caps = await db.probeCapabilities();
      expect(caps.conditionalWrites).to.equal(server().conditional);
      expect(caps.conditional.put).to.equal(server().conditional);
      if (!server().conditional) expect(caps.conditional.multipartComplete).to.equal(false);
      expect(counter.count('PutObjectCommand')).to.equal(2);
      // A second instance on the same bucket reuses the answer.
      const again = make();
      const counter2 = countRequests(again.client);
      expect((await again.probeCapabilities()).conditionalWrites).to.equal(server().conditional);
      expect(counter2.requests).to.deep.equal([]);
      expect(await rawKeys(server().admin(), bucket())).to.deep.equal([]);
      if (server().uploads) expect(await listUploads(server().admin(), bucket())).to.equal(0);
    });

    it('the completion probe runs only for a conditional upload that needs it, once, and leaves nothing behind', async () => {
      const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
      await db.probeCapabilities();
      const counter = countRequests(db.client);
      await db.put('small', 'x', { overwrite: false });
      expect(counter.count('CreateMultipartUploadCommand'), 'not for a small put').to.equal(0);
      await db.put('big', bytesStream(6 * MiB), { overwrite: false, size: 6 * MiB });
      await db.put('big2', bytesStream(6 * MiB), { overwrite: false, size: 6 * MiB });
      // RGW before Squid: the probe finds completions unconditional, so known sizes go as one PutObject.
      const probes = server().conditional ? 1 : 0;
      const uploads = server().conditional && !db.capabilities.conditional.multipartComplete ? 0 : 2;
      expect(counter.count('CreateMultipartUploadCommand')).to.equal(probes + uploads);
      expect((await rawKeys(server().admin(), bucket())).sort()).to.deep.equal(['big', 'big2', 'small']);
      if (server().uploads) expect(await listUploads(server().admin(), bucket())).to.equal(0);
    });

    it('overwrite: false on a present key: one conditional PutObject where honoured, else a HEAD first', async () => {
      const db = make();
      await db.put('k', 'original');
      await db.probeCapabilities();
      const counter = countRequests(db.client);
      const err = await rejectionOf(db.put('k', Buffer.from('intruder'), { overwrite: false }));
      const sent = counter.byCommand();
      expect(err).to.be.instanceOf(BlobExistsError);
      expect((await getBytes(db, 'k')).toString()).to.equal('original');
      if (server().conditional) {
        expect(sent).to.deep.equal({ PutObjectCommand: 1 });
        expect(counter.requests[0]?.headers['if-none-match']).to.equal('*');
        expect((err as BlobExistsError).cause, 'the 412 rides along').to.have.property(
          'name',
          'PreconditionFailed',
        );
      } else {
        expect(sent).to.deep.equal({ HeadObjectCommand: 1 });
      }
    });

    it('a known-size stream over the multipart threshold with overwrite: false is refused and leaves no upload', async () => {
      const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
      await db.put('big', 'original');
      const err = await rejectionOf(db.put('big', bytesStream(6 * MiB), { size: 6 * MiB, overwrite: false }));
      expect(err).to.be.instanceOf(BlobExistsError);
      expect((await getBytes(db, 'big')).toString()).to.equal('original');
      if (server().uploads) expect(await listUploads(server().admin(), bucket())).to.equal(0);
    });
  },
  s3rver: ({ server, admin }) => {
    it('the conditional probe says false and overwrite: false still refuses a present key (check, then write)', async () => {
      const bucket = await createBucket(admin());
      const db = new S3BlobDB({ bucket, clientConfig: server.clientConfig() });
      await db.put('k', 'one');
      expect((await db.probeCapabilities()).conditionalWrites).to.equal(false);
      expect(await rejectionOf(db.put('k', 'two', { overwrite: false }))).to.be.instanceOf(BlobExistsError);
      expect((await getBytes(db, 'k')).toString()).to.equal('one');
      await db.close();
      await deleteBucket(admin(), bucket);
    });
  },
  rgwConditional: ({ admin, b }) => {
    it('racing overwrite: false puts of a known-size stream over the threshold: exactly one winner', async () => {
      const db = new S3BlobDB({
        bucket: b(),
        clientConfig: rgwClientConfig(),
        partSize: 5 * MiB,
        multipartThreshold: 5 * MiB,
      });
      const results = await Promise.allSettled(
        [0x41, 0x42, 0x43, 0x44].map((fill) =>
          db.put('race', bytesStream(6 * MiB, fill), { size: 6 * MiB, overwrite: false }),
        ),
      );
      expect(results.filter((r) => r.status === 'fulfilled')).to.have.length(1);
      for (const r of results)
        if (r.status === 'rejected') expect(r.reason).to.be.instanceOf(BlobExistsError);
      expect(await db.size('race')).to.equal(6 * MiB);
      expect(await listUploads(admin(), b())).to.equal(0);
      await db.close();
    });

    it('where CompleteMultipartUpload honours If-None-Match, its 412 aborts the upload (BlobExistsError)', async () => {
      // Ceph RGW before Squid ignores If-None-Match on CompleteMultipartUpload
      // (the probe finds that out); this stand-in answers the completion as
      // AWS does, 412 when the key exists, checking the header on the wire.
      const client = new S3Client({ ...rgwClientConfig() });
      const plain = new S3Client({ ...rgwClientConfig() });
      const seenHeaders: (string | undefined)[] = [];
      client.middlewareStack.add(
        (next, context) => async (args) => {
          if (context.commandName === 'CompleteMultipartUploadCommand') {
            const headers = (args.request as { headers: Record<string, string> }).headers;
            seenHeaders.push(headers['if-none-match']);
            const input = args.input as { Bucket: string; Key: string };
            if (headers['if-none-match'] === '*') {
              const present = await plain
                .send(new HeadObjectCommand({ Bucket: input.Bucket, Key: input.Key }))
                .then(
                  () => true,
                  () => false,
                );
              if (present) throw preconditionFailed();
            }
          }
          return next(args);
        },
        { step: 'finalizeRequest', priority: 'low', name: 'conditionalCompleteStandIn' },
      );
      const db = new S3BlobDB({ bucket: b(), client, partSize: 5 * MiB, multipartThreshold: 5 * MiB });
      const caps = await db.probeCapabilities();
      expect(caps.conditional.put).to.equal(true);
      expect(caps.conditional.multipartComplete, 'asked when first needed').to.equal(false);
      // The first conditional upload that goes multipart asks about completions.
      await db.put('first', bytesStream(6 * MiB), { overwrite: false });
      expect(db.capabilities.conditional.multipartComplete).to.equal(true);
      await db.put('k', 'original', { contentType: 'text/plain' });
      const counter = countRequests(client);
      const err = await rejectionOf(db.put('k', bytesStream(12 * MiB), { overwrite: false }));
      expect(err).to.be.instanceOf(BlobExistsError);
      expect(counter.count('UploadPartCommand'), 'the parts went up first').to.be.at.least(2);
      expect(counter.count('AbortMultipartUploadCommand')).to.equal(1);
      expect(seenHeaders.at(-1), 'If-None-Match reached CompleteMultipartUpload').to.equal('*');
      expect(await listUploads(admin(), b())).to.equal(0);
      expect((await getBytes(db, 'k')).toString()).to.equal('original');
      // A new key completes normally, with the header.
      await db.put('fresh', bytesStream(11 * MiB), { overwrite: false });
      expect(await db.size('fresh')).to.equal(11 * MiB);
      expect(seenHeaders.at(-1)).to.equal('*');
      await db.close();
      client.destroy();
      plain.destroy();
    });

    it('where it does not, an unknown-length multipart put with overwrite: false is refused by a HEAD first', async () => {
      const db = new S3BlobDB({
        bucket: b(),
        clientConfig: rgwClientConfig(),
        partSize: 5 * MiB,
        multipartThreshold: 5 * MiB,
      });
      const caps = await db.probeCapabilities();
      expect(caps.conditionalWrites).to.equal(true);
      await db.put('first', bytesStream(6 * MiB), { overwrite: false });
      await db.put('k', 'original');
      const counter = countRequests(db.client);
      const err = await rejectionOf(db.put('k', bytesStream(12 * MiB), { overwrite: false }));
      expect(err).to.be.instanceOf(BlobExistsError);
      if (db.capabilities.conditional.multipartComplete) {
        expect(counter.count('AbortMultipartUploadCommand')).to.equal(1);
      } else {
        expect(counter.byCommand()).to.deep.equal({ HeadObjectCommand: 1 });
      }
      expect(await listUploads(admin(), b())).to.equal(0);
      expect((await getBytes(db, 'k')).toString()).to.equal('original');
      await db.close();
    });

    for (const requestPath of ['lean', 'sdk'] as const) {
      it(`a 409 ConditionalRequestConflict is retried for an in-memory body (${requestPath} path)`, async () => {
        let conflicts = 0;
        // RGW makes no 409 on demand: a proxy answers the first two conditional PUTs of "c" with one.
        const proxy = await startInterceptor(RGW_ENDPOINT as string, (req) => {
          if (
            req.method === 'PUT' &&
            (req.url ?? '').split('?')[0] === `/${b()}/c` &&
            req.headers['if-none-match'] === '*' &&
            conflicts < 2
          ) {
            conflicts++;
            return {
              answer: {
                status: 409,
                headers: { 'content-type': 'application/xml' },
                body: '<?xml version="1.0" encoding="UTF-8"?><Error><Code>ConditionalRequestConflict</Code><Message>conflict</Message></Error>',
              },
            };
          }
          return undefined;
        });
        try {
          const db = new S3BlobDB({
            bucket: b(),
            clientConfig: { ...rgwClientConfig(), endpoint: proxy.endpoint },
            requestPath,
          });
          await db.probeCapabilities();
          const info = await db.put('c', 'content', { overwrite: false });
          expect(conflicts).to.equal(2);
          expect(info.size).to.equal(7);
          expect((await getBytes(db, 'c')).toString()).to.equal('content');
          await db.close();
        } finally {
          await proxy.stop();
        }
      });
    }
  },
});
