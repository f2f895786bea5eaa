/** Conformance: the key rules: invalid keys and key conflicts. */
import { expect } from 'chai';
import { getWithInfo } from '../../lib/contract/body.js';
import { InvalidKeyError, KeyConflictError } from '../../lib/contract/errors.js';
import { type BlobDBFactory, type ConformanceOptions, useBlobDB } from './context.js';
import { getBytes, listKeys, rejectionOf } from './helpers.js';
import { INVALID_KEYS } from './invalid-keys.js';

/** Invalid keys: refused with `InvalidKeyError` by every method, and as a list prefix. */
export function invalidKeyTests(factory: BlobDBFactory, options: ConformanceOptions = {}): void {
  describe('invalid keys', () => {
    const { bdb } = useBlobDB(factory, options);
    for (const [what, key] of INVALID_KEYS) {
      it(`refuses ${what} with InvalidKeyError on every method`, async () => {
        const calls: [string, () => Promise<unknown>][] = [
          ['put', () => bdb().put(key, 'x')],
          ['put (overwrite: false)', () => bdb().put(key, Buffer.from('x'), { overwrite: false })],
          ['get', () => bdb().get(key)],
          ['stat', () => bdb().stat(key)],
          ['exists', () => bdb().exists(key)],
          ['size', () => bdb().size(key)],
          ['delete', () => bdb().delete(key)],
          ['getWithInfo', () => getWithInfo(bdb(), key)],
        ];
        for (const [method, call] of calls) {
          const err = await rejectionOf(call());
          expect(err, `${method}(${JSON.stringify(key)})`).to.be.instanceOf(InvalidKeyError);
          expect((err as InvalidKeyError).code, method).to.equal('E_INVALID_KEY');
        }
        const res = await bdb().bulkDelete([key]);
        expect(res.errors).to.have.length(1);
        expect(res.errors[0]?.key).to.equal(key);
        expect(res.errors[0]?.error).to.be.instanceOf(InvalidKeyError);
      });
    }

    it('list refuses an invalid prefix with InvalidKeyError', async () => {
      for (const prefix of ['/abs', 'a//', '../', 'a\u0000']) {
        const err = await rejectionOf(listKeys(bdb(), { prefix }));
        expect(err, JSON.stringify(prefix)).to.be.instanceOf(InvalidKeyError);
      }
    });
  });
}

/** Key conflicts (`a` vs `a/b`): refused where the backend cannot hold both, side by side elsewhere. */
export function keyConflictTests(factory: BlobDBFactory, options: ConformanceOptions = {}): void {
  describe('key conflicts (a vs a/b)', () => {
    const { bdb, k, listRel, expectListed, keyConflicts } = useBlobDB(factory, options);
    if (keyConflicts) {
      it('refuses a key below a blob with KeyConflictError', async () => {
        await bdb().put(k('a'), 'file');
        const err = await rejectionOf(bdb().put(k('a/b'), 'below'));
        expect(err).to.be.instanceOf(KeyConflictError);
        expect((err as KeyConflictError).code).to.equal('E_KEY_CONFLICT');
        expect((err as KeyConflictError).key).to.equal(k('a/b'));
        expect((err as KeyConflictError).conflictsWith).to.equal(k('a'));
        expect((await getBytes(bdb(), k('a'))).toString()).to.equal('file');
        expect(await bdb().exists(k('a/b'))).to.equal(false);
      });

      it('refuses a blob where keys live below it with KeyConflictError', async () => {
        await bdb().put(k('c/d'), 'below');
        for (const overwrite of [true, false]) {
          const err = await rejectionOf(bdb().put(k('c'), 'file', { overwrite }));
          expect(err, `overwrite: ${overwrite}`).to.be.instanceOf(KeyConflictError);
          expect((err as KeyConflictError).code).to.equal('E_KEY_CONFLICT');
          expect((err as KeyConflictError).key).to.equal(k('c'));
        }
        expect((await getBytes(bdb(), k('c/d'))).toString()).to.equal('below');
        expect(await bdb().exists(k('c'))).to.equal(false);
        expect(await listRel()).to.deep.equal(['c/d']);
      });
    } else {
      it('stores a blob and keys below the same name side by side', async () => {
        await bdb().put(k('a'), 'file');
        await bdb().put(k('a/b'), 'below');
        await bdb().put(k('c/d'), 'below too');
        await bdb().put(k('c'), 'file too', { overwrite: false });
        expect((await getBytes(bdb(), k('a'))).toString()).to.equal('file');
        expect((await getBytes(bdb(), k('a/b'))).toString()).to.equal('below');
        expect((await getBytes(bdb(), k('c'))).toString()).to.equal('file too');
        expectListed(await listRel(), ['a', 'a/b', 'c', 'c/d'], 'blob and prefix together');
      });
    }
  });
}
