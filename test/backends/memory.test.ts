import { Readable } from 'node:stream';
import { expect } from 'chai';
import { MemoryBlobDB } from '../../lib/backends/memory/index.js';
import { readAll } from '../../lib/contract/body.js';
import { BlobExistsError } from '../../lib/contract/errors.js';
import { describeBlobDB, listKeys } from '../conformance/blobdb.suite.js';

// Everything on: atomic overwrite: false, byte-ordered listing, no key conflicts.
describeBlobDB('MemoryBlobDB', () => new MemoryBlobDB());

// Tiny pages: listings cross many page boundaries, with prefixes and startAfter.
describeBlobDB('MemoryBlobDB with 7-key pages', () => new MemoryBlobDB({ pageSize: 7 }), { slow: true });

// Check-then-write overwrite: false: the suite tests the non-atomic semantics
// (present keys refused, content whole) instead of a single winner.
describeBlobDB(
  'MemoryBlobDB without conditional writes',
  () => new MemoryBlobDB({ conditionalWrites: false }),
  {
    slow: true,
  },
);

describe('MemoryBlobDB', () => {
  it('copies bodies in and out: callers cannot change stored bytes', async () => {
    const db = new MemoryBlobDB();
    const body = Buffer.from('original');
    await db.put('k', body);
    body.fill(0x21);
    const first = await readAll(await db.get('k'));
    expect(first.toString()).to.equal('original');
    first.fill(0x22);
    expect((await readAll(await db.get('k'))).toString()).to.equal('original');
  });

  it('copies HTTP metadata in and out', async () => {
    const db = new MemoryBlobDB();
    const httpMeta = { cacheControl: 'a', metadata: { x: '1' } };
    await db.put('k', 'v', { httpMeta });
    httpMeta.metadata.x = '2';
    const st = await db.stat('k');
    expect(st.httpMeta?.metadata?.x).to.equal('1');
    if (st.httpMeta?.metadata) st.httpMeta.metadata.x = '3';
    expect((await db.stat('k')).httpMeta?.metadata?.x).to.equal('1');
  });

  it('reports its capability, and is atomic only when conditional writes are on', async () => {
    expect(new MemoryBlobDB().capabilities.conditionalWrites).to.equal(true);
    const loose = new MemoryBlobDB({ conditionalWrites: false });
    expect(loose.capabilities.conditionalWrites).to.equal(false);
    // Two slow streams race: without conditional writes both pass the check.
    const slow = (text: string): Readable =>
      new Readable({
        read() {
          setTimeout(() => {
            this.push(text);
            this.push(null);
          }, 20);
        },
      });
    const results = await Promise.allSettled([
      loose.put('k', slow('one'), { overwrite: false }),
      loose.put('k', slow('two'), { overwrite: false }),
    ]);
    expect(results.map((r) => r.status)).to.deep.equal(['fulfilled', 'fulfilled']);
    const strict = new MemoryBlobDB();
    const strictResults = await Promise.allSettled([
      strict.put('k', slow('one'), { overwrite: false }),
      strict.put('k', slow('two'), { overwrite: false }),
    ]);
    expect(strictResults.filter((r) => r.status === 'fulfilled')).to.have.length(1);
    const lost = strictResults.find((r) => r.status === 'rejected');
    expect(lost?.status === 'rejected' && lost.reason).to.be.instanceOf(BlobExistsError);
  });

  it('sees keys stored during a listing on later pages', async () => {
    const db = new MemoryBlobDB({ pageSize: 2 });
    for (const key of ['a', 'b', 'c']) await db.put(key, key);
    const seen: string[] = [];
    for await (const info of db.list()) {
      seen.push(info.key);
      if (info.key === 'a') await db.put('d', 'd');
    }
    expect(seen).to.deep.equal(['a', 'b', 'c', 'd']);
    expect(await listKeys(db, { startAfter: 'b' })).to.deep.equal(['c', 'd']);
  });

  it('refuses a bad pageSize and a bad size option', async () => {
    expect(() => new MemoryBlobDB({ pageSize: 0 })).to.throw(/pageSize/);
    const db = new MemoryBlobDB();
    let err: unknown;
    try {
      await db.put('k', 'v', { size: -1 });
    } catch (e) {
      err = e;
    }
    expect(String(err)).to.match(/size must be a non-negative safe integer/);
    expect(await db.exists('k')).to.equal(false);
  });
});
