/** Conformance: overwrite semantics and conditional writes, racing writers included. */
import { Readable } from 'node:stream';
import { expect } from 'chai';
import { BlobExistsError } from '../../lib/contract/errors.js';
import { type BlobDBFactory, type ConformanceOptions, useBlobDB } from './context.js';
import { getBytes, patternStream, rejectionOf } from './helpers.js';

/** Overwrite and conditional writes: replacing by default, `overwrite: false` refusing a present key, and racing writers on one key. */
export function overwriteTests(factory: BlobDBFactory, options: ConformanceOptions = {}): void {
  describe('overwrite', () => {
    const { bdb, k, listRel, atomic, slow } = useBlobDB(factory, options);
    it('replaces the content by default and with overwrite: true', async () => {
      await bdb().put(k('o'), 'first', { contentType: 'text/plain' });
      const info = await bdb().put(k('o'), 'second, longer', { contentType: 'text/csv' });
      expect(info.size).to.equal(14);
      expect((await getBytes(bdb(), k('o'))).toString()).to.equal('second, longer');
      expect((await bdb().stat(k('o'))).contentType).to.equal('text/csv');
      await bdb().put(k('o'), 'third', { overwrite: true });
      expect((await getBytes(bdb(), k('o'))).toString()).to.equal('third');
      expect(await bdb().size(k('o'))).to.equal(5);
    });

    it('overwrite: false stores a new key', async () => {
      const info = await bdb().put(k('new'), 'fresh', { overwrite: false });
      expect(info.size).to.equal(5);
      expect((await getBytes(bdb(), k('new'))).toString()).to.equal('fresh');
    });

    it('overwrite: false refuses a present key with BlobExistsError and keeps the original', async () => {
      await bdb().put(k('keep'), 'original', {
        contentType: 'text/plain',
        httpMeta: { cacheControl: 'no-cache' },
      });
      const err = await rejectionOf(
        bdb().put(k('keep'), 'intruder', { overwrite: false, contentType: 'text/html' }),
      );
      expect(err).to.be.instanceOf(BlobExistsError);
      expect((err as BlobExistsError).code).to.equal('E_BLOB_EXISTS');
      expect((err as BlobExistsError).key).to.equal(k('keep'));
      expect((await getBytes(bdb(), k('keep'))).toString()).to.equal('original');
      const st = await bdb().stat(k('keep'));
      expect(st.contentType).to.equal('text/plain');
      expect(st.httpMeta?.cacheControl).to.equal('no-cache');
    });

    it('overwrite: false refuses a present key given a stream body too', async () => {
      await bdb().put(k('keep-s'), 'original');
      const err = await rejectionOf(
        bdb().put(k('keep-s'), patternStream(256 * 1024).stream, { overwrite: false }),
      );
      expect(err).to.be.instanceOf(BlobExistsError);
      expect((err as BlobExistsError).code).to.equal('E_BLOB_EXISTS');
      expect((await getBytes(bdb(), k('keep-s'))).toString()).to.equal('original');
      expect(await listRel()).to.deep.equal(['keep-s']);
    });

    const racers = slow ? 4 : 8;
    it(`${racers} racing overwrite: false puts on one key: one winner where writes are conditional, BlobExistsError for the rest`, async () => {
      const bodies = Array.from({ length: racers }, (_, i) => Buffer.alloc(256 * 1024 + i, 65 + i));
      const results = await Promise.allSettled(
        bodies.map((b, i) =>
          bdb().put(k('race'), i % 2 === 0 ? b : Readable.from([b.subarray(0, 1000), b.subarray(1000)]), {
            overwrite: false,
          }),
        ),
      );
      const winners = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
      for (const r of results) {
        if (r.status === 'rejected') {
          expect(r.reason).to.be.instanceOf(BlobExistsError);
          expect((r.reason as BlobExistsError).code).to.equal('E_BLOB_EXISTS');
        }
      }
      if (atomic()) expect(winners, 'winners').to.have.length(1);
      else expect(winners.length, 'winners').to.be.at.least(1);
      const stored = await getBytes(bdb(), k('race'));
      const match = winners.find((i) => bodies[i]?.equals(stored));
      expect(match, 'the stored content is whole and is one winner’s body').to.not.equal(undefined);
      expect(await listRel()).to.deep.equal(['race']);
    });

    it('concurrent overwriting puts on one key leave one whole body', async () => {
      const bodies = Array.from({ length: racers }, (_, i) => Buffer.alloc(128 * 1024 + i * 3, 97 + i));
      await Promise.all(bodies.map((b) => bdb().put(k('many'), Readable.from([b]))));
      const stored = await getBytes(bdb(), k('many'));
      expect(
        bodies.some((b) => b.equals(stored)),
        'content is one whole body',
      ).to.equal(true);
      expect(await bdb().size(k('many'))).to.equal(stored.length);
      expect(await listRel()).to.deep.equal(['many']);
    });
  });
}
