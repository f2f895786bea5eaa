/** S3BlobDB: errors: not-found mapping, a missing bucket, and error messages that hold no credentials. */
import { PassThrough, Readable } from 'node:stream';
import { S3Client } from '@aws-sdk/client-s3';
import { expect } from 'chai';
import { isS3NotFoundError, S3BlobDB } from '../../lib/backends/s3/index.js';
import { BackendError, BlobNotFoundError } from '../../lib/contract/errors.js';
import { listKeys, rejectionOf } from '../conformance/blobdb.suite.js';
import { RGW_CREDENTIALS, uniqueName } from '../support/env.js';
import { describeS3Topic, errorTexts } from '../support/s3-bench.js';
import { createBucket, deleteBucket, rgwClientConfig } from '../support/s3rver.js';

describeS3Topic({
  specifics: ({ server, make, open }) => {
    it('get, stat and size map the server’s not-found to BlobNotFoundError; exists and delete answer false', async () => {
      const db = make();
      for (const call of [() => db.get('nope'), () => db.stat('nope'), () => db.size('nope')]) {
        const err = await rejectionOf(call());
        expect(err).to.be.instanceOf(BlobNotFoundError);
        expect(isS3NotFoundError((err as Error).cause) || (err as Error).cause === undefined).to.equal(true);
      }
      expect(await db.exists('nope')).to.equal(false);
      expect(await db.delete('nope')).to.equal(false);
    });

    it('a missing bucket is a BackendError, never "not found"', async () => {
      const db = new S3BlobDB({ bucket: uniqueName('missing'), clientConfig: server().config() });
      open.push(db);
      const err = await rejectionOf(db.get('k'));
      expect(err).to.be.instanceOf(BackendError);
      expect((err as Error).message).to.include('NoSuchBucket');
    });
  },
  s3rver: ({ server, admin }) => {
    it('error messages hold no credentials (unknown key id, unreachable endpoint with a password in it)', async () => {
      // s3rver checks the key id but not the signature: the wrong secret is tried on RGW.
      const bucket = await createBucket(admin());
      const secret = 'SeCrEt-never-shown-7f3a9';
      const keyId = 'AKIAFAKEKEYID0001';
      const clients = [
        new S3Client({
          ...server.clientConfig(),
          credentials: { accessKeyId: keyId, secretAccessKey: secret },
        }),
        new S3Client({
          ...server.clientConfig(),
          endpoint: `http://user:${secret}@127.0.0.1:9`,
          maxAttempts: 1,
          credentials: { accessKeyId: keyId, secretAccessKey: secret },
        }),
      ];
      for (const client of clients) {
        const db = new S3BlobDB({ bucket, client });
        // The probe is cached per bucket: ask it about a bucket of its own.
        const prober = new S3BlobDB({ bucket: uniqueName('probe'), client });
        const errors = await Promise.all([
          rejectionOf(db.put('k', 'x')),
          rejectionOf(db.put('k', Readable.from([Buffer.from('x')]), { size: 1 })),
          rejectionOf(db.get('k')),
          rejectionOf(db.stat('k')),
          rejectionOf(db.exists('k')),
          rejectionOf(listKeys(db)),
          rejectionOf(prober.probeCapabilities()),
          db.bulkDelete(['k']).then((r) => r.errors[0]?.error),
        ]);
        expect(db.endpoint).to.not.include(secret);
        for (const err of errors) {
          expect(err).to.be.instanceOf(BackendError);
          for (const text of errorTexts(err)) expect(text).to.not.include(secret);
          expect((err as Error).message).to.not.include(keyId);
        }
        client.destroy();
      }
      await deleteBucket(admin(), bucket);
    });
  },
  more: () => {
    describe('isS3NotFoundError', () => {
      it('is true for NotFound, NoSuchKey and a bare 404; false for a missing bucket or upload and others', () => {
        expect(isS3NotFoundError(Object.assign(new Error('x'), { name: 'NotFound' }))).to.equal(true);
        expect(isS3NotFoundError(Object.assign(new Error('x'), { name: 'NoSuchKey' }))).to.equal(true);
        expect(isS3NotFoundError({ name: 'Unknown', $metadata: { httpStatusCode: 404 } })).to.equal(true);
        expect(isS3NotFoundError({ name: 'NoSuchBucket', $metadata: { httpStatusCode: 404 } })).to.equal(
          false,
        );
        expect(isS3NotFoundError({ Code: 'NoSuchUpload', $metadata: { httpStatusCode: 404 } })).to.equal(
          false,
        );
        expect(isS3NotFoundError({ name: 'AccessDenied', $metadata: { httpStatusCode: 403 } })).to.equal(
          false,
        );
        expect(isS3NotFoundError(new Error('not found'))).to.equal(false);
        expect(isS3NotFoundError(undefined)).to.equal(false);
        expect(isS3NotFoundError('NotFound')).to.equal(false);
      });
    });
  },
  rgwConditional: ({ b }) => {
    it('error messages hold no credentials (wrong secret, unknown key id)', async () => {
      const secret = 'RgwWrongSecret-never-shown-51';
      const keyId = 'AKIAUNKNOWNKEY0002';
      for (const credentials of [
        { accessKeyId: RGW_CREDENTIALS.accessKeyId, secretAccessKey: secret },
        { accessKeyId: keyId, secretAccessKey: secret },
      ]) {
        const client = new S3Client({ ...rgwClientConfig(), credentials, maxAttempts: 1 });
        const db = new S3BlobDB({ bucket: b(), client });
        const prober = new S3BlobDB({ bucket: uniqueName('probe'), client });
        // The same backend on the lean request path (a client it builds).
        const lean = new S3BlobDB({
          bucket: b(),
          clientConfig: { ...rgwClientConfig('WHEN_REQUIRED'), credentials, maxAttempts: 1 },
        });
        const errors = await Promise.all([
          rejectionOf(db.put('k', 'x')),
          rejectionOf(db.put('k', new PassThrough().end('x') as PassThrough, { size: 1 })),
          rejectionOf(db.get('k')),
          rejectionOf(db.stat('k')),
          rejectionOf(listKeys(db)),
          rejectionOf(prober.probeCapabilities()),
          db.bulkDelete(['k']).then((r) => r.errors[0]?.error),
          rejectionOf(lean.put('k', 'x')),
          rejectionOf(lean.get('k')),
          rejectionOf(lean.stat('k')),
          rejectionOf(lean.delete('k')),
        ]);
        expect(await lean.usesLeanPath()).to.equal(true);
        await lean.close();
        for (const err of errors) {
          expect(err).to.be.instanceOf(BackendError);
          expect((err as Error).message).to.match(
            /SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied|403/,
          );
          for (const text of errorTexts(err)) expect(text).to.not.include(secret);
          expect((err as Error).message).to.not.include(credentials.accessKeyId);
        }
        client.destroy();
      }
    });
  },
});
