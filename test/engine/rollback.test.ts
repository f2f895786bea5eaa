/**
 * Rollback after a flip (`backfill` with `replaceStale`, the engine of
 * `blobshift rollback`): the app's writes to new come back to old; a copy in
 * old that the metadata proves stale is replaced, never one it cannot judge.
 */
import { createHash, randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { BlobStore } from '../../lib/app/store.js';
import { type BackfillOptions, backfill } from '../../lib/engine/backfill.js';
import { verify } from '../../lib/engine/verify.js';
import { type Fixture, readStream, seed, TARGETS } from './fixture.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

for (const target of TARGETS) {
  describe(`rollback (${target.name})`, function () {
    this.timeout(60_000);
    let f: Fixture;
    before(() => target.before());
    after(() => target.after());
    beforeEach(async () => {
      f = await target.make();
    });
    afterEach(async () => {
      await f.dispose();
    });

    /** new → old, as `blobshift rollback` runs it. */
    function rollback(extra: Partial<BackfillOptions> = {}) {
      return backfill({
        meta: f.meta,
        oldDb: f.newDb,
        newDb: f.oldDb,
        run: 'rollback',
        replaceStale: true,
        logDir: f.logDir,
        concurrency: 4,
        chunkSize: 3,
        identity: { old: 'new', new: 'old' },
        ...extra,
      });
    }

    /**
     * A migration that was flipped: every blob in old and new; then the app,
     * on new alone, overwrote one blob with the same length, one with another
     * length, and added one.
     */
    async function flippedThenWritten() {
      const untouched = [await seed(f, { inNew: true }), await seed(f, { inNew: true })];
      const sameLength = await seed(f, { inNew: true });
      const resized = await seed(f, { inNew: true });
      const store = new BlobStore({ db: f.newDb, meta: f.meta });
      const sameBody = randomBytes(sameLength.body.length);
      await store.put(sameBody, { key: sameLength.key, parentId: 'case-1', type: 'attachment' });
      const resizedBody = randomBytes(resized.body.length + 17);
      await store.put(resizedBody, { key: resized.key, parentId: 'case-1', type: 'attachment' });
      const addedBody = randomBytes(300);
      const added = await store.put(addedBody, { parentId: 'case-1', type: 'attachment' });
      return {
        untouched,
        sameLength: { key: sameLength.key, body: sameBody, oldBody: sameLength.body },
        resized: { key: resized.key, body: resizedBody },
        added: { key: added.key, body: addedBody },
      };
    }

    it("brings the app's writes back: stale copies (same length or not) replaced, new blobs copied", async () => {
      const w = await flippedThenWritten();
      const summary = await rollback();
      expect(summary).to.include({
        mode: 'rollback',
        status: 'completed',
        exitCode: 0,
        total: 5,
        copied: 3,
        replaced: 2,
        present: 2,
        failed: 0,
      });
      for (const b of [w.sameLength, w.resized, w.added]) {
        expect(sha(await readStream(await f.oldDb.get(b.key)))).to.equal(sha(b.body), b.key);
      }
      for (const u of w.untouched) expect(await readStream(await f.oldDb.get(u.key))).to.deep.equal(u.body);
      // Old now holds what the metadata says, byte for byte.
      const check = await verify({
        meta: f.meta,
        newDb: f.oldDb,
        oldDb: f.newDb,
        checksum: true,
        logDir: f.logDir,
        record: false,
      });
      expect(check.verdict).to.equal('SAFE TO FLIP');
      // A second pass has nothing left to do.
      const again = await rollback({ reset: true });
      expect(again).to.include({ copied: 0, replaced: 0, present: 5, failed: 0, exitCode: 0 });
    });

    it('a plain backfill in the other direction misses them (the gap the rollback mode closes)', async () => {
      const w = await flippedThenWritten();
      const plain = await rollback({ replaceStale: false, run: 'plain' });
      expect(plain).to.include({ copied: 1, failed: 1, present: 3 });
      expect(await readStream(await f.oldDb.get(w.sameLength.key))).to.deep.equal(w.sameLength.oldBody);
    });

    it('never replaces a copy the metadata cannot prove stale, nor one whose source does not match the row', async () => {
      // No sha256 in the row, same size, other bytes in old: nothing says which is newer.
      const unjudged = await seed(f, { inNew: true, withSha: false });
      const oldBytes = randomBytes(unjudged.body.length);
      await f.oldDb.put(unjudged.key, oldBytes);
      // The row's sha256 matches neither copy: both may be damaged, or the app is mid-write.
      const neither = await seed(f, { inNew: true });
      const a = randomBytes(neither.body.length);
      const b = randomBytes(neither.body.length);
      await f.oldDb.put(neither.key, a);
      await f.newDb.put(neither.key, b);
      const summary = await rollback();
      expect(summary).to.include({ replaced: 0, copied: 0, present: 1, failed: 1, exitCode: 1 });
      expect(await readStream(await f.oldDb.get(unjudged.key))).to.deep.equal(oldBytes);
      expect(await readStream(await f.oldDb.get(neither.key))).to.deep.equal(a);
    });

    it('does not bring back a blob the app deleted after the flip', async () => {
      const kept = await seed(f, { inNew: true });
      const gone = await seed(f, { inNew: true });
      // The app (on new alone) deletes a blob: its row and its copy in new go; old's copy stays behind.
      await new BlobStore({ db: f.newDb, meta: f.meta }).delete(gone.key);
      const summary = await rollback();
      expect(summary).to.include({ total: 1, present: 1, copied: 0 });
      expect(await f.newDb.exists(gone.key)).to.equal(false);
      expect(await f.oldDb.exists(kept.key)).to.equal(true);
    });
  });
}
