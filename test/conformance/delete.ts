/** Conformance: delete and bulkDelete. */
import { expect } from 'chai';
import { InvalidKeyError } from '../../lib/contract/errors.js';
import { type BlobDBFactory, type ConformanceOptions, useBlobDB } from './context.js';
import { getBytes } from './helpers.js';

/** `delete` and `bulkDelete`: idempotent, per-key errors, the valid keys still deleted. */
export function deleteTests(factory: BlobDBFactory, options: ConformanceOptions = {}): void {
  describe('delete and bulkDelete', () => {
    const { bdb, k, listRel } = useBlobDB(factory, options);
    it('delete resolves true, then false (idempotent)', async () => {
      await bdb().put(k('d'), 'bye', { contentType: 'text/plain' });
      expect(await bdb().delete(k('d'))).to.equal(true);
      expect(await bdb().exists(k('d'))).to.equal(false);
      expect(await bdb().delete(k('d'))).to.equal(false);
      expect(await bdb().delete(k('never-was'))).to.equal(false);
      expect(await listRel()).to.deep.equal([]);
    });

    it('a key can be stored again after delete', async () => {
      await bdb().put(k('again'), 'one');
      await bdb().delete(k('again'));
      await bdb().put(k('again'), 'two', { overwrite: false });
      expect((await getBytes(bdb(), k('again'))).toString()).to.equal('two');
    });

    it('bulkDelete removes present keys and accepts missing ones', async () => {
      await bdb().put(k('b1'), '1');
      await bdb().put(k('b2/x'), '2');
      await bdb().put(k('b3'), '3');
      const res = await bdb().bulkDelete([k('b1'), k('b2/x'), k('missing'), k('b1')]);
      expect(res.errors).to.deep.equal([]);
      expect(await bdb().exists(k('b1'))).to.equal(false);
      expect(await bdb().exists(k('b2/x'))).to.equal(false);
      expect(await bdb().exists(k('b3'))).to.equal(true);
      expect(await listRel()).to.deep.equal(['b3']);
      expect((await bdb().bulkDelete([])).errors).to.deep.equal([]);
    });

    it('bulkDelete reports invalid keys per key and still deletes the valid ones', async () => {
      await bdb().put(k('v1'), '1');
      await bdb().put(k('v2'), '2');
      const res = await bdb().bulkDelete([k('v1'), '', '../escape', k('v2'), 'a//b']);
      expect(res.errors.map((e) => e.key)).to.have.members(['', '../escape', 'a//b']);
      for (const e of res.errors) {
        expect(e.error).to.be.instanceOf(InvalidKeyError);
        expect((e.error as InvalidKeyError).code).to.equal('E_INVALID_KEY');
      }
      expect(await bdb().exists(k('v1'))).to.equal(false);
      expect(await bdb().exists(k('v2'))).to.equal(false);
    });
  });
}
