import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import { expect } from 'chai';
import { MigratingBlobDB } from '../lib/app/migrating.js';
import { FilesystemBlobDB } from '../lib/backends/fs/index.js';
import { MemoryBlobDB } from '../lib/backends/memory/index.js';
import { S3BlobDB } from '../lib/backends/s3/index.js';
import { readAll } from '../lib/contract/body.js';
import { BackendError, BlobNotFoundError, InvalidKeyError } from '../lib/contract/errors.js';
import type { BlobDB, BulkDeleteResult } from '../lib/contract/types.js';
import { describeBlobDB, getBytes, listKeys, rejectionOf } from './conformance/blobdb.suite.js';
import { announce, RGW_ENDPOINT } from './support/env.js';
import { createBucket, deleteBucket, rgwClientConfig } from './support/s3rver.js';

/** A backend that must not be touched: any property read or call fails the test. */
function untouchable(name: string): BlobDB & { touched: string[] } {
  const touched: string[] = [];
  return new Proxy({} as BlobDB & { touched: string[] }, {
    get(_target, prop) {
      if (prop === 'touched') return touched;
      touched.push(String(prop));
      throw new Error(`${name} was touched: ${String(prop)}`);
    },
    has(_target, prop) {
      touched.push(`has ${String(prop)}`);
      throw new Error(`${name} was touched: has ${String(prop)}`);
    },
  });
}

/** The same backend seen through an object without the optional `getWithInfo`. */
function withoutGetWithInfo(db: BlobDB): BlobDB {
  return new Proxy(db, {
    get(target, prop) {
      if (prop === 'getWithInfo') return undefined;
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

/** A MemoryBlobDB whose reads fail with a BackendError (an outage of the new backend). */
class FailingReads extends MemoryBlobDB {
  override async get(key: string): Promise<Readable> {
    throw new BackendError('new backend unreachable', { key });
  }
  override async stat(key: string): Promise<never> {
    throw new BackendError('new backend unreachable', { key });
  }
  override async size(key: string): Promise<number> {
    throw new BackendError('new backend unreachable', { key });
  }
  override async exists(key: string): Promise<boolean> {
    throw new BackendError('new backend unreachable', { key });
  }
  override async getWithInfo(key: string): Promise<never> {
    throw new BackendError('new backend unreachable', { key });
  }
}

// Both memory backends are atomic and ordered: nothing switched off.
describeBlobDB(
  'MigratingBlobDB over (memory, memory)',
  () => new MigratingBlobDB(new MemoryBlobDB(), new MemoryBlobDB()),
);

describe('MigratingBlobDB', () => {
  let newDb: MemoryBlobDB;
  let oldDb: MemoryBlobDB;
  let db: MigratingBlobDB;
  beforeEach(() => {
    newDb = new MemoryBlobDB();
    oldDb = new MemoryBlobDB();
    db = new MigratingBlobDB(newDb, oldDb);
  });

  it('exposes both backends and the new one’s capabilities', () => {
    expect(db.newDb).to.equal(newDb);
    expect(db.oldDb).to.equal(oldDb);
    expect(db.capabilities).to.equal(newDb.capabilities);
  });

  it('reads a blob that is only in the old backend through the fallback (get, stat, size, exists)', async () => {
    await oldDb.put('only/old', 'from the old backend', {
      contentType: 'text/plain',
      httpMeta: { cacheControl: 'no-store' },
    });
    expect((await getBytes(db, 'only/old')).toString()).to.equal('from the old backend');
    const st = await db.stat('only/old');
    expect(st).to.include({ key: 'only/old', size: 20, contentType: 'text/plain' });
    expect(st.httpMeta?.cacheControl).to.equal('no-store');
    expect(await db.size('only/old')).to.equal(20);
    expect(await db.exists('only/old')).to.equal(true);
    // Reading does not copy: the new backend still lacks it, and list shows the new backend only.
    expect(await newDb.exists('only/old')).to.equal(false);
    expect(await listKeys(db)).to.deep.equal([]);
  });

  it('getWithInfo reads from the new backend first and falls back to the old one on not-found', async () => {
    await oldDb.put('only/old', 'old bytes', { contentType: 'text/plain' });
    await oldDb.put('both', 'old copy');
    await newDb.put('both', 'new copy!', { contentType: 'text/csv' });
    const fromOld = await db.getWithInfo('only/old');
    expect(fromOld.info).to.include({ key: 'only/old', size: 9, contentType: 'text/plain' });
    expect((await readAll(fromOld.body)).toString()).to.equal('old bytes');
    const fromNew = await db.getWithInfo('both');
    expect(fromNew.info).to.include({ size: 9, contentType: 'text/csv' });
    expect((await readAll(fromNew.body)).toString()).to.equal('new copy!');
    // A backend without getWithInfo is read with stat then get.
    const plain = new MigratingBlobDB(withoutGetWithInfo(newDb), withoutGetWithInfo(oldDb));
    const viaStat = await plain.getWithInfo('only/old');
    expect(viaStat.info).to.include({ size: 9, contentType: 'text/plain' });
    expect((await readAll(viaStat.body)).toString()).to.equal('old bytes');
  });

  it('a blob in neither backend is BlobNotFoundError for get, stat and size, and exists is false', async () => {
    for (const read of [
      () => db.get('none'),
      () => db.stat('none'),
      () => db.size('none'),
      () => db.getWithInfo('none'),
    ]) {
      const err = await rejectionOf(read());
      expect(err).to.be.instanceOf(BlobNotFoundError);
      expect((err as BlobNotFoundError).key).to.equal('none');
    }
    expect(await db.exists('none')).to.equal(false);
  });

  it('serves a blob from the new backend and never touches the old one', async () => {
    const old = untouchable('the old backend');
    const mdb = new MigratingBlobDB(newDb, old);
    await mdb.put('both', 'new bytes', { contentType: 'text/csv' });
    expect((await getBytes(mdb, 'both')).toString()).to.equal('new bytes');
    expect(await mdb.stat('both')).to.include({ size: 9, contentType: 'text/csv' });
    expect(await mdb.size('both')).to.equal(9);
    expect(await mdb.exists('both')).to.equal(true);
    expect(await listKeys(mdb)).to.deep.equal(['both']);
    expect(mdb.capabilities.conditionalWrites).to.equal(true);
    expect(old.touched).to.deep.equal([]);
  });

  it('prefers the new copy when both backends hold the key', async () => {
    await oldDb.put('k', 'old copy');
    await newDb.put('k', 'new copy, migrated');
    expect((await getBytes(db, 'k')).toString()).to.equal('new copy, migrated');
    expect(await db.size('k')).to.equal(18);
  });

  it('puts into the new backend only, overwrite: false judged by the new backend', async () => {
    await oldDb.put('k', 'old');
    await db.put('k', 'fresh', { overwrite: false });
    expect((await getBytes(newDb, 'k')).toString()).to.equal('fresh');
    expect((await getBytes(oldDb, 'k')).toString()).to.equal('old');
  });

  it('delete removes the blob from both backends, and answers whether either had it', async () => {
    await oldDb.put('k', 'old');
    await newDb.put('k', 'new');
    await oldDb.put('old-only', 'o');
    expect(await db.delete('k')).to.equal(true);
    expect(await newDb.exists('k')).to.equal(false);
    expect(await oldDb.exists('k')).to.equal(false);
    expect(await db.delete('old-only')).to.equal(true);
    expect(await oldDb.exists('old-only')).to.equal(false);
    expect(await db.delete('k')).to.equal(false);
  });

  it('delete reaches the old backend even when the new one fails, then reports the failure', async () => {
    await oldDb.put('k', 'old');
    class FailingDelete extends MemoryBlobDB {
      override async delete(): Promise<boolean> {
        throw new BackendError('new backend refused the delete');
      }
    }
    const mdb = new MigratingBlobDB(new FailingDelete(), oldDb);
    const err = await rejectionOf(mdb.delete('k'));
    expect(err).to.be.instanceOf(BackendError);
    expect(await oldDb.exists('k')).to.equal(false);
  });

  it('bulkDelete removes from both backends and merges their errors (an invalid key once)', async () => {
    await newDb.put('a', '1');
    class PartlyFailing extends MemoryBlobDB {
      override async bulkDelete(keys: string[]): Promise<BulkDeleteResult> {
        const res = await super.bulkDelete(keys.filter((k) => k !== 'locked'));
        if (keys.includes('locked'))
          res.errors.push({ key: 'locked', error: new BackendError('locked in old') });
        return res;
      }
    }
    const old = new PartlyFailing();
    await old.put('a', '1');
    await old.put('b', '2');
    const mdb = new MigratingBlobDB(newDb, old);
    const res = await mdb.bulkDelete(['a', 'b', 'locked', '../bad', 'missing']);
    expect(res.errors.map((e) => e.key).sort()).to.deep.equal(['../bad', 'locked']);
    expect(res.errors.find((e) => e.key === '../bad')?.error).to.be.instanceOf(InvalidKeyError);
    expect(res.errors.find((e) => e.key === 'locked')?.error).to.be.instanceOf(BackendError);
    expect(await newDb.exists('a')).to.equal(false);
    expect(await old.exists('a')).to.equal(false);
    expect(await old.exists('b')).to.equal(false);
  });

  it('an error other than not-found from the new backend propagates, and the old one is never asked', async () => {
    const old = untouchable('the old backend');
    const mdb = new MigratingBlobDB(new FailingReads(), old);
    for (const read of [
      () => mdb.get('k'),
      () => mdb.stat('k'),
      () => mdb.size('k'),
      () => mdb.exists('k'),
      () => mdb.getWithInfo('k'),
    ]) {
      const err = await rejectionOf(read());
      expect(err).to.be.instanceOf(BackendError);
      expect((err as Error).message).to.equal('new backend unreachable');
    }
    expect(old.touched).to.deep.equal([]);
  });

  it('refuses invalid keys before asking either backend', async () => {
    const mdb = new MigratingBlobDB(untouchable('the new backend'), untouchable('the old backend'));
    for (const call of [
      () => mdb.get('../x'),
      () => mdb.stat('a//b'),
      () => mdb.exists(''),
      () => mdb.delete('/abs'),
    ]) {
      expect(await rejectionOf(call())).to.be.instanceOf(InvalidKeyError);
    }
  });

  it('close closes both backends', async () => {
    const closed: string[] = [];
    class Closing extends MemoryBlobDB {
      readonly #name: string;
      constructor(name: string) {
        super();
        this.#name = name;
      }
      override async close(): Promise<void> {
        closed.push(this.#name);
      }
    }
    await new MigratingBlobDB(new Closing('new'), new Closing('old')).close();
    expect(closed.sort()).to.deep.equal(['new', 'old']);
  });
});

if (!RGW_ENDPOINT) {
  announce('BLOBSHIFT_TEST_RGW', 'MigratingBlobDB over (S3 on Ceph RGW, filesystem)');
} else {
  describe('MigratingBlobDB over (S3 on RGW, filesystem)', () => {
    let admin: S3Client;
    let bucket: string;
    const roots: string[] = [];
    before(async () => {
      admin = new S3BlobDB({ bucket: 'unused', clientConfig: rgwClientConfig() }).client;
      bucket = await createBucket(admin);
    });
    after(async () => {
      await deleteBucket(admin, bucket);
      admin.destroy();
      await Promise.all(roots.map((r) => rm(r, { recursive: true, force: true })));
    });
    const make = async (): Promise<MigratingBlobDB> => {
      const root = await mkdtemp(path.join(tmpdir(), 'blobshift-old-'));
      roots.push(root);
      const s3 = new S3BlobDB({ bucket, clientConfig: rgwClientConfig() });
      await s3.probeCapabilities();
      return new MigratingBlobDB(s3, new FilesystemBlobDB({ root }));
    };

    // Writes and listings go to S3 (RGW: ordered, conditional, no a vs a/b conflict):
    // nothing switched off. The old filesystem backend is only read and deleted from.
    describeBlobDB('MigratingBlobDB over (S3 on RGW, filesystem)', make);

    it('reads a file-only blob through S3 misses, and deletes it from both', async () => {
      const db = await make();
      await db.oldDb.put('legacy/report.pdf', 'old bytes', { contentType: 'application/pdf' });
      expect((await getBytes(db, 'legacy/report.pdf')).toString()).to.equal('old bytes');
      expect((await db.stat('legacy/report.pdf')).contentType).to.equal('application/pdf');
      expect(await db.exists('legacy/report.pdf')).to.equal(true);
      await db.put('legacy/report.pdf', 'migrated bytes', {
        overwrite: false,
        contentType: 'application/pdf',
      });
      expect((await getBytes(db, 'legacy/report.pdf')).toString()).to.equal('migrated bytes');
      expect(await db.delete('legacy/report.pdf')).to.equal(true);
      expect(await db.newDb.exists('legacy/report.pdf')).to.equal(false);
      expect(await db.oldDb.exists('legacy/report.pdf')).to.equal(false);
      await db.close();
    });
  });
}
