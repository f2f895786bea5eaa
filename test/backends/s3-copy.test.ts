/** S3BlobDB: copyFrom, server-side where it keeps the no-overwrite promise, streamed otherwise. */
import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { S3BlobDB } from '../../lib/backends/s3/index.js';
import { BlobExistsError, BlobNotFoundError, SizeMismatchError } from '../../lib/contract/errors.js';
import type { BlobDB } from '../../lib/contract/types.js';
import { getBytes, rejectionOf } from '../conformance/blobdb.suite.js';
import { describeS3Topic, rawKeys } from '../support/s3-bench.js';
import { countRequests } from '../support/s3rver.js';

describeS3Topic({
  specifics: ({ server, bucket, make, open }) => {
    it('serverSideCopyFrom: same endpoint and access key only', async () => {
      const a = make();
      const b = make({ prefix: 'other' });
      expect(a.capabilities.serverSideCopyFrom?.(b)).to.equal(true);
      const otherKey = new S3BlobDB({
        bucket: bucket(),
        clientConfig: {
          ...server().config(),
          credentials: { accessKeyId: 'SOMEONEELSE', secretAccessKey: 'x'.repeat(20) },
        },
      });
      open.push(otherKey);
      expect(a.capabilities.serverSideCopyFrom?.(otherKey)).to.equal(false);
      const elsewhere = new S3BlobDB({
        bucket: bucket(),
        clientConfig: { ...server().config(), endpoint: 'http://127.0.0.1:9' },
      });
      open.push(elsewhere);
      expect(a.capabilities.serverSideCopyFrom?.(elsewhere)).to.equal(false);
      const notS3 = { capabilities: { conditionalWrites: true } } as unknown as BlobDB;
      expect(a.capabilities.serverSideCopyFrom?.(notS3)).to.equal(false);
    });

    it('the probe asks about CopyObject only for copies from the same server, and leaves no probe behind', async () => {
      const db = make();
      const counter = countRequests(db.client);
      await db.probeCapabilities();
      expect(counter.count('CopyObjectCommand'), 'not for puts').to.equal(0);
      const other = make({ prefix: 'other' });
      const caps = await db.probeCapabilities({ copyFrom: other });
      expect(caps.conditional.copy).to.equal(server().conditional && server().conditionalCopy);
      // Where PutObject is not conditional, a copy checks then copies, as a put does: nothing to ask.
      expect(counter.count('CopyObjectCommand')).to.equal(server().conditional ? 2 : 0);
      await db.probeCapabilities({ copyFrom: other });
      expect(counter.count('CopyObjectCommand'), 'asked once').to.equal(server().conditional ? 2 : 0);
      expect(await rawKeys(server().admin(), bucket())).to.deep.equal([]);
    });

    it('copyFrom on one endpoint: server-side where no-overwrite holds as for a put, else streamed', async () => {
      const src = make({ prefix: 'src' });
      const dst = make({ prefix: 'dst' });
      expect(dst.capabilities.serverSideCopyFrom?.(src, { overwrite: false }), 'before the probe').to.equal(
        false,
      );
      await dst.probeCapabilities({ copyFrom: src });
      // No conditional writes at all: a put checks then writes, and so does the copy.
      // Conditional puts but not copies (RGW Pacific): only the stream keeps no-overwrite atomic.
      const serverSide = !server().conditional || server().conditionalCopy;
      expect(dst.capabilities.serverSideCopyFrom?.(src, { overwrite: false })).to.equal(serverSide);
      expect(dst.capabilities.serverSideCopyFrom?.(src)).to.equal(true);
      const body = randomBytes(300_000);
      const httpMeta = { cacheControl: 'max-age=60', metadata: { origin: 'copy' } };
      await src.put('a/blob.bin', body, { contentType: 'application/x-test', httpMeta });
      const st = await src.stat('a/blob.bin');
      const fromSrc = countRequests(src.client);
      const fromDst = countRequests(dst.client);
      const info = await dst.copyFrom(src, 'a/blob.bin', {
        overwrite: false,
        size: st.size,
        ...(st.etag !== undefined ? { sourceEtag: st.etag } : {}),
      });
      const sent = { src: fromSrc.byCommand(), dst: fromDst.byCommand() };
      expect(info.size).to.equal(body.length);
      if (serverSide) {
        expect(sent.dst.CopyObjectCommand, 'one CopyObject').to.equal(1);
        expect(sent.src.GetObjectCommand, 'no byte read through the client').to.equal(undefined);
        expect(sent.src.HeadObjectCommand, 'the given ETag spares a HEAD of the source').to.equal(undefined);
      } else {
        expect(sent.dst.CopyObjectCommand).to.equal(undefined);
        expect(sent.src.GetObjectCommand).to.equal(1);
        expect(sent.dst.PutObjectCommand).to.equal(1);
      }
      expect(await getBytes(dst, 'a/blob.bin')).to.deep.equal(body);
      const copied = await dst.stat('a/blob.bin');
      expect(copied.contentType).to.equal('application/x-test');
      expect(copied.httpMeta?.cacheControl).to.equal('max-age=60');
      expect(copied.httpMeta?.metadata).to.deep.equal({ origin: 'copy' });
    });

    it('copyFrom with overwrite: false never replaces a present blob, and a missing source is not found', async () => {
      const src = make({ prefix: 'src' });
      const dst = make({ prefix: 'dst' });
      await dst.probeCapabilities();
      await src.put('k', 'from the source');
      await dst.put('k', 'original');
      expect(await rejectionOf(dst.copyFrom(src, 'k', { overwrite: false }))).to.be.instanceOf(
        BlobExistsError,
      );
      expect((await getBytes(dst, 'k')).toString()).to.equal('original');
      const missing = await rejectionOf(dst.copyFrom(src, 'nope', { overwrite: false }));
      expect(missing).to.be.instanceOf(BlobNotFoundError);
      expect((missing as BlobNotFoundError).key).to.equal('nope');
      // A size the source does not have is refused before anything is written.
      await src.put('k2', 'ten bytes!');
      expect(await rejectionOf(dst.copyFrom(src, 'k2', { overwrite: false, size: 3 }))).to.be.instanceOf(
        SizeMismatchError,
      );
      expect(await dst.exists('k2')).to.equal(false);
    });

    it('copyFrom copies keys with characters servers decode differently in x-amz-copy-source', async () => {
      const src = make({ prefix: 'src' });
      const dst = make({ prefix: 'dst' });
      await dst.probeCapabilities();
      const key = 'odd/a+b=c&d$e,f;g:h@i j%20k.txt';
      await src.put(key, 'special');
      await dst.copyFrom(src, key, { overwrite: false });
      expect((await getBytes(dst, key)).toString()).to.equal('special');
    });
  },
});
