import { expect } from 'chai';
import { S3BlobDB } from '../../lib/backends/s3/index.js';
import { readAll } from '../../lib/contract/body.js';
import { BlobNotFoundError, SizeMismatchError } from '../../lib/contract/errors.js';
import { rejectionOf } from '../conformance/blobdb.suite.js';
import { bytesStream, describeS3Topic, listUploads, MiB, rawKeys } from '../support/s3-bench.js';
import { countRequests, rgwClientConfig } from '../support/s3rver.js';

describeS3Topic({
  specifics: ({ server, bucket, make }) => {
    for (const [what, total, size] of [
      ['short', 3 * MiB, 3 * MiB + 1],
      ['long', 3 * MiB, 2 * MiB],
    ] as const) {
      it(`a ${what} stream on the PutObject path fails with SizeMismatchError and stores nothing`, async () => {
        const db = make();
        const counter = countRequests(db.client);
        const err = await rejectionOf(db.put('p', bytesStream(total), { size }));
        expect(err).to.be.instanceOf(SizeMismatchError);
        expect(counter.count('PutObjectCommand'), 'it went as one PutObject').to.equal(1);
        expect(counter.count('CreateMultipartUploadCommand')).to.equal(0);
        // The request was cut short of its Content-Length: a real S3 stores nothing
        // (s3rver keeps the partial file it was writing in place).
        if (server().discardsAbortedPuts) {
          expect(await db.exists('p')).to.equal(false);
          expect(await rejectionOf(db.get('p'))).to.be.instanceOf(BlobNotFoundError);
          expect(await rawKeys(server().admin(), bucket())).to.deep.equal([]);
        }
      });

      it(`a ${what} stream on the multipart path fails with SizeMismatchError, aborts the upload, stores nothing`, async () => {
        const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
        const counter = countRequests(db.client);
        const err = await rejectionOf(db.put('m', bytesStream(total * 4), { size: size * 4 }));
        expect(err).to.be.instanceOf(SizeMismatchError);
        expect(counter.count('CreateMultipartUploadCommand'), 'it went multipart').to.equal(1);
        expect(counter.count('AbortMultipartUploadCommand')).to.equal(1);
        expect(counter.count('CompleteMultipartUploadCommand')).to.equal(0);
        expect(await db.exists('m')).to.equal(false);
        expect(await rawKeys(server().admin(), bucket())).to.deep.equal([]);
        if (server().uploads) expect(await listUploads(server().admin(), bucket())).to.equal(0);
      });
    }
  },
  rgwConditional: ({ b }) => {
    it('streams a known-size body as one PutObject in either checksum mode', async () => {
      for (const mode of ['WHEN_REQUIRED', 'WHEN_SUPPORTED'] as const) {
        const db = new S3BlobDB({ bucket: b(), clientConfig: rgwClientConfig(mode) });
        const counter = countRequests(db.client);
        await db.put(`s-${mode}`, bytesStream(2 * MiB, 0x63), { size: 2 * MiB });
        expect(counter.byCommand()).to.deep.equal({ PutObjectCommand: 1 });
        expect(counter.requests[0]?.headers['content-length']).to.equal(String(2 * MiB));
        const back = await readAll(await db.get(`s-${mode}`));
        expect(back.equals(Buffer.alloc(2 * MiB, 0x63))).to.equal(true);
        await db.close();
      }
    });
  },
});
