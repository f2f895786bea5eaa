import { expect } from 'chai';
import { MemoryBlobDB } from '../../lib/backends/memory/index.js';
import type { BlobDB, BlobInfo } from '../../lib/contract/types.js';
import { PresentIndex } from '../../lib/engine/present-index.js';
import { rejectionOf } from '../conformance/blobdb.suite.js';

/** A listing of `keys` (in the given order) that waits for `gate()` before each page of `page` keys. */
function gatedListing(keys: string[], page: number, gate: () => Promise<void>): BlobDB {
  const db = new MemoryBlobDB();
  return Object.assign(Object.create(db) as BlobDB, {
    async *list(): AsyncIterable<BlobInfo> {
      for (let i = 0; i < keys.length; i++) {
        if (i % page === 0) await gate();
        yield { key: keys[i] as string, size: i };
      }
    },
  });
}

/** A gate the test opens one page at a time. */
function pager() {
  let open: (() => void) | undefined;
  let waiting: Promise<void> | undefined;
  return {
    gate: () => {
      waiting = new Promise<void>((resolve) => {
        open = resolve;
      });
      return waiting;
    },
    /** Lets the next page through and waits until the listing has taken it. */
    async next() {
      while (!open) await new Promise((r) => setImmediate(r));
      const go = open;
      open = undefined;
      go();
      await new Promise((r) => setImmediate(r));
    },
  };
}

describe('PresentIndex', () => {
  it('build lists everything; lookup answers sizes of present keys only', async () => {
    const db = new MemoryBlobDB();
    await db.put('a/1', 'x');
    await db.put('b', 'yy');
    const index = await PresentIndex.build(db);
    try {
      expect(index.complete).to.equal(true);
      expect(index.count).to.equal(2);
      expect(index.bytes).to.equal(3);
      expect([...index.lookup(['a/1', 'b', 'c'])]).to.deep.equal([
        ['a/1', 1],
        ['b', 2],
      ]);
      expect(index.listedThrough('zzz')).to.equal(true);
    } finally {
      await index.close();
    }
  });

  it('start answers for the keys listed so far, and waitListed waits for the listing to pass a key', async () => {
    const p = pager();
    // The index takes keys in batches of 1000: three pages of 1000, 1000 and 500.
    const many = Array.from({ length: 2500 }, (_, i) => `k${String(i).padStart(5, '0')}`);
    const build = await PresentIndex.start(gatedListing(many, 1000, p.gate));
    try {
      expect(build.index.complete).to.equal(false);
      expect(build.index.listedThrough('k00000')).to.equal(false);
      let passed = false;
      const waiting = build.index.waitListed('k01500').then(() => {
        passed = true;
      });
      await p.next();
      expect(build.index.position).to.equal('k00999');
      expect(build.index.listedThrough('k00999')).to.equal(true);
      expect(build.index.listedThrough('k01000')).to.equal(false);
      expect([...build.index.lookup(['k00005', 'k01005']).keys()]).to.deep.equal(['k00005']);
      expect(passed).to.equal(false);
      await p.next();
      await waiting;
      expect(build.index.position).to.equal('k01999');
      await p.next();
      await build.ready;
      expect(build.index.complete).to.equal(true);
      expect(build.index.count).to.equal(2500);
    } finally {
      await build.cancel();
    }
  });

  it('a failed listing rejects its waiters and ready, and keeps what it had listed', async () => {
    const db = new MemoryBlobDB();
    const broken = Object.assign(Object.create(db) as BlobDB, {
      async *list(): AsyncIterable<BlobInfo> {
        for (let i = 0; i < 1000; i++) yield { key: `k${String(i).padStart(4, '0')}`, size: 1 };
        throw new Error('listing broke');
      },
    });
    const build = await PresentIndex.start(broken);
    const waiter = rejectionOf(build.index.waitListed('z'));
    expect(((await rejectionOf(build.ready)) as Error).message).to.equal('listing broke');
    expect(((await waiter) as Error).message).to.equal('listing broke');
    expect(build.index.listedThrough('k0999')).to.equal(true);
    expect(build.index.lookup(['k0500']).get('k0500')).to.equal(1);
    await build.cancel();
    await build.cancel();
  });

  it('refuses a listing out of byte order (rows are decided against the keys listed so far)', async () => {
    const db = new MemoryBlobDB();
    const misordered = Object.assign(Object.create(db) as BlobDB, {
      async *list(): AsyncIterable<BlobInfo> {
        yield { key: 'b', size: 1 };
        yield { key: 'a', size: 1 };
      },
    });
    const err = await rejectionOf(PresentIndex.build(misordered));
    expect((err as Error).message).to.match(/not in ascending byte order/);
  });

  it('cancel stops a listing still running and rejects what waits on it', async () => {
    const p = pager();
    const many = Array.from({ length: 3000 }, (_, i) => `k${String(i).padStart(5, '0')}`);
    const build = await PresentIndex.start(gatedListing(many, 1000, p.gate));
    const waiter = rejectionOf(build.index.waitListed('k02999'));
    await p.next();
    const cancelled = build.cancel();
    await p.next();
    await cancelled;
    expect(await waiter).to.be.instanceOf(Error);
    expect(await rejectionOf(build.ready)).to.be.instanceOf(Error);
  });
});
