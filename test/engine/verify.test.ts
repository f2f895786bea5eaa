import { readdir, readFile, stat } from 'node:fs/promises';
import { expect } from 'chai';
import { AbortedError, PreflightError } from '../../lib/contract/errors.js';
import type { BlobInfo } from '../../lib/contract/types.js';
import { identityKey, VERIFY_RUN } from '../../lib/engine/ledger.js';
import {
  formatVerifyReport,
  type VerifyOptions,
  type VerifyReport,
  verify,
} from '../../lib/engine/verify.js';
import { CountingBlobDB, type Fixture, seed, TARGETS } from './fixture.js';

async function keys(db: Fixture['newDb']): Promise<string[]> {
  const out: string[] = [];
  for await (const info of db.list()) out.push(info.key);
  return out;
}

function run(f: Fixture, extra: Partial<VerifyOptions> = {}): Promise<VerifyReport> {
  return verify({ meta: f.meta, newDb: f.newDb, oldDb: f.oldDb, logDir: f.logDir, chunkSize: 3, ...extra });
}

async function jsonLines(path: string | undefined | null): Promise<Record<string, unknown>[]> {
  if (!path) throw new Error('no key file');
  const text = await readFile(path, 'utf8');
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function logFiles(f: Fixture): Promise<string[]> {
  try {
    return await readdir(f.logDir);
  } catch {
    return [];
  }
}

/** Blobs migrated cleanly: in old and new, rows with sha256. */
async function migrated(f: Fixture, n: number, type = 'attachment') {
  const out = [];
  for (let i = 0; i < n; i++) out.push(await seed(f, { type, inNew: true }));
  return out;
}

for (const target of TARGETS) {
  describe(`verify (${target.name})`, function () {
    this.timeout(30_000);
    let f: Fixture;
    before(() => target.before());
    after(() => target.after());
    beforeEach(async () => {
      f = await target.make();
    });
    afterEach(async () => {
      await f.dispose();
    });

    it('says SAFE TO FLIP on a clean migration, from one listing and no request per blob', async () => {
      const blobs = await migrated(f, 7);
      const images = await migrated(f, 2, 'image');
      const newDb = new CountingBlobDB(f.newDb);
      const report = await run(f, { newDb });
      expect(report.safe).to.equal(true);
      expect(report.verdict).to.equal('SAFE TO FLIP');
      expect(report.exitCode).to.equal(0);
      expect(report).to.include({
        rows: 9,
        checked: 9,
        ok: 9,
        missing: 0,
        sizeMismatches: 0,
        checksumMismatches: 0,
      });
      expect(report.okBytes).to.equal([...blobs, ...images].reduce((n, b) => n + b.body.length, 0));
      expect(report.orphans).to.deep.equal({ count: 0, bytes: 0, file: null });
      // One listing; the write probe that tells old and new apart costs one put, one
      // existence check and one delete; nothing per blob.
      expect(newDb.calls).to.include({ list: 1, stat: 0, exists: 1, put: 1, bulkDelete: 1, get: 0, size: 0 });
      expect(report.backends).to.equal('distinct');
      expect(await logFiles(f)).to.deep.equal([]);
      expect(formatVerifyReport(report).trimEnd().split('\n').pop()).to.equal('SAFE TO FLIP');
      expect(JSON.parse(JSON.stringify(report))).to.deep.equal(report);
    });

    it('catches a missing blob and a truncated blob, with a key file for each', async () => {
      await migrated(f, 4);
      const gone = await seed(f);
      const short = await seed(f, { type: 'image' });
      await f.newDb.put(short.key, short.body.subarray(0, short.body.length - 5));
      const report = await run(f);
      expect(report.safe).to.equal(false);
      expect(report.verdict).to.equal('NOT SAFE: 1 missing, 1 size mismatches, 0 checksum mismatches');
      expect(report.exitCode).to.equal(1);
      expect(await jsonLines(report.files.missing)).to.deep.equal([
        { id: (await f.meta.get(gone.key))?.id, key: gone.key, type: 'attachment', size: gone.body.length },
      ]);
      expect(await jsonLines(report.files.sizeMismatch)).to.deep.equal([
        {
          id: (await f.meta.get(short.key))?.id,
          key: short.key,
          type: 'image',
          expected: short.body.length,
          actual: short.body.length - 5,
        },
      ]);
      const missingFile = report.files.missing ?? '';
      expect((await stat(missingFile)).mode & 0o777).to.equal(0o600);
      expect((await stat(f.logDir)).mode & 0o777).to.equal(0o700);
      expect((await logFiles(f)).sort()).to.have.length(2);
      const text = formatVerifyReport(report);
      expect(text).to.contain(`Missing: 1, listed in ${missingFile}\n    ${gone.key}\n`);
      expect(text.trimEnd().split('\n').pop()).to.equal(report.verdict);
    });

    it('catches a same-size corrupted blob only with checksum', async () => {
      await migrated(f, 3);
      const bad = await seed(f);
      const corrupted = Buffer.from(bad.body);
      corrupted[0] = (corrupted[0] ?? 0) ^ 0xff;
      await f.newDb.put(bad.key, corrupted);

      const sizes = await run(f);
      expect(sizes.verdict).to.equal('SAFE TO FLIP');

      const newDb = new CountingBlobDB(f.newDb);
      const sums = await run(f, { checksum: true, newDb, concurrency: 2 });
      expect(sums.verdict).to.equal('NOT SAFE: 0 missing, 0 size mismatches, 1 checksum mismatches');
      expect(sums.hashed).to.equal(4);
      expect(newDb.calls.get).to.equal(4, 'each present blob streamed once');
      const lines = await jsonLines(sums.files.checksumMismatch);
      expect(lines).to.have.length(1);
      expect(lines[0]).to.include({ key: bad.key, against: 'row' });
    });

    it('takes the row as the truth: a blob the app overwrote (row sha256 updated) is no checksum failure', async () => {
      await migrated(f, 2);
      const s = await seed(f, { inNew: true });
      const rewritten = Buffer.from(`new content written by the app through the new backend ${s.key}`);
      await f.newDb.put(s.key, rewritten);
      const { createHash } = await import('node:crypto');
      await f.meta.upsert({
        key: s.key,
        parentId: 'case-1',
        type: 'attachment',
        contentLength: rewritten.length,
        sha256: createHash('sha256').update(rewritten).digest('hex'),
      });
      const report = await run(f, { checksum: true });
      expect(report.verdict).to.equal('SAFE TO FLIP');
      expect(report.ok).to.equal(3);
      expect(report.hashedAgainstOld).to.equal(0);
    });

    it('without a sha256 in the row, compares with the old copy; no old copy is unverifiable (unsafe)', async () => {
      await seed(f, { inNew: true, withSha: false });
      const differs = await seed(f, { inNew: true, withSha: false });
      const flipped = Buffer.from(differs.body);
      flipped[3] = (flipped[3] ?? 0) ^ 0x01;
      await f.newDb.put(differs.key, flipped);
      const orphanedInOld = await seed(f, { inNew: true, withSha: false });
      await f.oldDb.delete(orphanedInOld.key);

      const report = await run(f, { checksum: true });
      expect(report.hashedAgainstOld).to.equal(2);
      expect(report).to.include({ ok: 1, checksumMismatches: 1, unverifiable: 1 });
      expect(report.verdict).to.equal(
        'NOT SAFE: 0 missing, 0 size mismatches, 1 checksum mismatches, 1 unverifiable',
      );
      expect((await jsonLines(report.files.checksumMismatch))[0]).to.include({
        key: differs.key,
        against: 'old',
      });
      expect((await jsonLines(report.files.unverifiable))[0]).to.include({ key: orphanedInOld.key });

      // Without an old backend, every row lacking a sha256 is unverifiable.
      const noOld = await verify({ meta: f.meta, newDb: f.newDb, logDir: f.logDir, checksum: true });
      expect(noOld.unverifiable).to.equal(3);
      expect(noOld.safe).to.equal(false);
      // Without checksum the sizes are all right.
      expect((await run(f)).verdict).to.equal('SAFE TO FLIP');
    });

    it('reports an orphan with a key file without failing', async () => {
      await migrated(f, 3);
      await f.newDb.put('stray/orphan-1', Buffer.alloc(11));
      await f.newDb.put('stray/orphan-2', Buffer.alloc(5));
      const report = await run(f);
      expect(report.verdict).to.equal('SAFE TO FLIP');
      expect(report.orphans.count).to.equal(2);
      expect(report.orphans.bytes).to.equal(16);
      expect(await jsonLines(report.orphans.file)).to.deep.equal([
        { key: 'stray/orphan-1', size: 11 },
        { key: 'stray/orphan-2', size: 5 },
      ]);
      expect(formatVerifyReport(report)).to.contain(`: 2 (16 B), listed in ${report.orphans.file}`);
    });

    it("never counts blobshift's reserved keys as orphans", async () => {
      await migrated(f, 2);
      const newDb = new CountingBlobDB(f.newDb);
      const inner = f.newDb;
      newDb.override.list = async function* (opts) {
        yield { key: '.blobshift-probe-0123', size: 33 };
        yield { key: 'a/.blobshift-tmp-9', size: 7 };
        yield* inner.list(opts);
      };
      const report = await run(f, { newDb });
      expect(report.orphans).to.deep.equal({ count: 0, bytes: 0, file: null });
      expect(report.verdict).to.equal('SAFE TO FLIP');
    });

    it('judges orphans against every row even with a type filter', async () => {
      await migrated(f, 2, 'attachment');
      await migrated(f, 2, 'image');
      const report = await run(f, { types: ['image'] });
      expect(report).to.include({ rows: 2, ok: 2 });
      expect(report.orphans.count).to.equal(0);
      expect(report.types).to.deep.equal(['image']);
    });

    it('skips and counts expired rows', async () => {
      await migrated(f, 2);
      await seed(f, { inOld: false, expiresOn: new Date(Date.now() - 60_000) });
      const report = await run(f);
      expect(report).to.include({ rows: 3, expired: 1, checked: 2, missing: 0 });
      expect(report.verdict).to.equal('SAFE TO FLIP');
    });

    it('re-checks what the snapshot missed before counting it: a blob written after the listing passes', async () => {
      await migrated(f, 3);
      const late = await seed(f, { inNew: true });
      const newDb = new CountingBlobDB(f.newDb);
      const inner = f.newDb;
      newDb.override.list = async function* (opts) {
        for await (const info of inner.list(opts)) if (info.key !== late.key) yield info as BlobInfo;
      };
      const report = await run(f, { newDb, checksum: true });
      expect(report.verdict).to.equal('SAFE TO FLIP');
      expect(report.ok).to.equal(4);
      expect(newDb.calls.stat).to.equal(1, 'one request for the one row the snapshot missed');
    });

    it('does not count a row the app deleted during verify', async () => {
      await migrated(f, 2);
      const s = await seed(f, { inNew: true });
      await f.newDb.delete(s.key);
      const meta = new Proxy(f.meta, {
        get(t, prop, receiver) {
          if (prop === 'get') {
            return async (key: string) => {
              if (key === s.key) await t.delete(key);
              return t.get(key);
            };
          }
          const v = Reflect.get(t, prop, receiver);
          return typeof v === 'function' ? v.bind(t) : v;
        },
      });
      const report = await run(f, { meta });
      expect(report).to.include({ missing: 0, deletedDuringVerify: 1, checked: 2 });
      expect(report.safe).to.equal(true);
    });

    it('stops with AbortedError when its signal fires', async () => {
      await migrated(f, 6);
      const ac = new AbortController();
      const newDb = new CountingBlobDB(f.newDb);
      const inner = f.newDb;
      newDb.override.list = async function* (opts) {
        yield* inner.list(opts);
        ac.abort();
      };
      let caught: unknown;
      try {
        await run(f, { newDb, checksum: true, signal: ac.signal });
      } catch (err) {
        caught = err;
      }
      expect(caught).to.be.instanceOf(AbortedError);
      expect(newDb.calls.get).to.equal(0);
    });

    it('says NOT SAFE when old and new are the same place: from the config, or proven by a write probe', async () => {
      await migrated(f, 3);
      const byConfig = await run(f, { sameLocation: true });
      // Two names for one place, which no config comparison sees: the probe written to "new" shows in old.
      const alias = new CountingBlobDB(f.oldDb);
      const byProbe = await run(f, { newDb: alias });
      for (const report of [byConfig, byProbe]) {
        expect(report.safe).to.equal(false);
        expect(report.backends).to.equal('same place');
        expect(report.exitCode).to.equal(1);
        expect(report.verdict).to.match(/^NOT SAFE: old and new are the same place/);
        expect(formatVerifyReport(report).trimEnd().split('\n').pop()).to.equal(report.verdict);
      }
      expect(alias.calls.put).to.equal(1, 'the probe');
      expect(alias.calls.list).to.equal(0, 'nothing else was looked at');
      // The probe is gone again.
      expect((await keys(f.oldDb)).filter((k) => k.startsWith('blobshift-preflight-probe-'))).to.deep.equal(
        [],
      );
      // Without an old backend there is nothing to compare: no probe.
      const newOnly = new CountingBlobDB(f.newDb);
      const alone = await verify({ meta: f.meta, newDb: newOnly, logDir: f.logDir });
      expect(alone).to.include({ safe: true, backends: 'no old backend' });
      expect(newOnly.calls.put).to.equal(0);
    });

    it('records each verdict in the run-state table, and a verify that did not finish as failed', async () => {
      await migrated(f, 2);
      const key = identityKey({ old: 'old', new: 'new' });
      const report = await run(f);
      const saved = await f.meta.getRun(VERIFY_RUN, key);
      expect(saved).to.include({ status: 'completed', exitCode: 0 });
      expect(saved?.extra).to.include({ verdict: 'SAFE TO FLIP', safe: true, rows: report.rows });
      expect(saved?.options).to.include({ kind: 'verify', old: 'old', new: 'new', checksum: false });
      const ac = new AbortController();
      ac.abort();
      await run(f, { signal: ac.signal }).catch(() => undefined);
      expect(await f.meta.getRun(VERIFY_RUN, key)).to.include({ status: 'failed', exitCode: null });
      await f.newDb.delete((await keys(f.newDb))[0] as string);
      await run(f);
      const unsafe = await f.meta.getRun(VERIFY_RUN, key);
      expect(unsafe).to.include({ status: 'completed', exitCode: 1 });
      expect(String(unsafe?.extra.verdict)).to.match(/^NOT SAFE: 1 missing/);
    });

    it('refuses metadata with zero rows (within the type filter)', async () => {
      for (const types of [undefined, ['nosuchtype']]) {
        if (types) await migrated(f, 1);
        let caught: unknown;
        try {
          await run(f, types ? { types } : {});
        } catch (err) {
          caught = err;
        }
        expect(caught).to.be.instanceOf(PreflightError);
        expect((caught as PreflightError).code).to.equal('E_PREFLIGHT');
        expect((caught as Error).message).to.contain('no rows');
      }
      expect(await logFiles(f)).to.deep.equal([]);
    });
  });
}
