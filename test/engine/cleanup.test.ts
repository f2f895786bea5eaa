import { readdir, readFile, stat } from 'node:fs/promises';
import { expect } from 'chai';
import { BackendError, PreflightError, SameLocationError } from '../../lib/contract/errors.js';
import {
  type CleanupOptions,
  type CleanupReport,
  cleanupOld,
  formatCleanupReport,
} from '../../lib/engine/cleanup.js';
import { CHECK_RUN, identityKey, VERIFY_RUN } from '../../lib/engine/ledger.js';
import { verify } from '../../lib/engine/verify.js';
import { emptyCounts } from '../../lib/meta/runs.js';
import { CountingBlobDB, type Fixture, readStream, seed, TARGETS } from './fixture.js';

/** A verify of `f`'s backends that must say SAFE TO FLIP (cleanup-old relies on it). */
async function verifiedClean(f: Fixture, extra: { types?: string[] } = {}): Promise<void> {
  const report = await verify({ meta: f.meta, newDb: f.newDb, oldDb: f.oldDb, logDir: f.logDir, ...extra });
  expect(report.verdict).to.equal('SAFE TO FLIP');
}

function run(f: Fixture, extra: Partial<CleanupOptions> = {}): Promise<CleanupReport> {
  return cleanupOld({
    meta: f.meta,
    oldDb: f.oldDb,
    newDb: f.newDb,
    yes: true,
    logDir: f.logDir,
    batchSize: 2,
    concurrency: 3,
    ...extra,
  });
}

async function jsonLines(path: string | null): Promise<Record<string, unknown>[]> {
  if (!path) throw new Error('no file');
  const text = await readFile(path, 'utf8');
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

async function keysIn(db: Fixture['oldDb']): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of db.list()) keys.push(info.key);
  return keys;
}

for (const target of TARGETS) {
  describe(`cleanupOld (${target.name})`, function () {
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

    /**
     * A clean migration, verified; then, as after the verify: one blob gone
     * from new, one shortened in new. Safe to delete: two. Plus an orphan in
     * new with a copy in old (no row) and one in new only.
     */
    async function mixed() {
      const safe = [await seed(f, { inNew: true }), await seed(f, { type: 'image', inNew: true })];
      const onlyOld = await seed(f, { inNew: true });
      const differs = await seed(f, { inNew: true });
      const unreferenced = await seed(f, { inNew: true, row: false });
      const notInOld = await seed(f, { inOld: false, inNew: true });
      await verifiedClean(f);
      await f.newDb.delete(onlyOld.key);
      await f.newDb.put(differs.key, differs.body.subarray(1));
      return { safe, onlyOld, differs, unreferenced, notInOld };
    }

    it('deletes only blobs present in new with the row size; the audit log lists exactly those', async () => {
      const m = await mixed();
      const report = await run(f);
      expect(report).to.include({ dryRun: false, rows: 5, deleted: 2, notInOld: 1, kept: 2, failed: 0 });
      expect(report.deletedBytes).to.equal(m.safe[0]!.body.length + m.safe[1]!.body.length);
      expect(report.keptByReason).to.deep.equal({
        'missing in new': 1,
        'size differs in new': 1,
        'content differs in new': 0,
        'copies differ': 0,
        'no longer referenced': 0,
        'invalid metadata row': 0,
        'read failed': 0,
      });
      expect(report).to.include({ provedAgainstRow: 2, provedAgainstOld: 0 });
      expect(report.exitCode).to.equal(1, 'blobs kept in old need attention');
      expect((await keysIn(f.oldDb)).sort()).to.deep.equal(
        [m.onlyOld.key, m.differs.key, m.unreferenced.key].sort(),
      );
      // Nothing in new was touched.
      for (const s of [...m.safe, m.differs, m.unreferenced, m.notInOld]) {
        expect(await f.newDb.exists(s.key)).to.equal(true);
      }

      const audit = await jsonLines(report.auditLog);
      expect(audit.map((a) => [a.key, a.size]).sort()).to.deep.equal(
        m.safe.map((s) => [s.key, s.body.length]).sort(),
      );
      for (const a of audit) expect(Date.parse(String(a.at))).to.be.a('number').and.not.NaN;
      expect(Object.keys(audit[0] ?? {})).to.deep.equal(['key', 'size', 'at']);
      const auditPath = report.auditLog ?? '';
      expect(auditPath).to.match(/cleanup-old-\d{8}T\d{6}Z\.jsonl$/);
      expect((await stat(auditPath)).mode & 0o777).to.equal(0o600);
      expect((await stat(f.logDir)).mode & 0o777).to.equal(0o700);
      const kept = await jsonLines(report.keptFile);
      expect(kept.map((k) => [k.key, k.reason]).sort()).to.deep.equal(
        [
          [m.onlyOld.key, 'missing in new'],
          [m.differs.key, 'size differs in new'],
        ].sort(),
      );
      const text = formatCleanupReport(report);
      expect(text).to.contain('Deleted from old: 2');
      expect(text).to.contain(`Audit log: ${auditPath}`);
      expect(JSON.parse(JSON.stringify(report))).to.deep.equal(report);

      // A rerun is idempotent: nothing more to delete, nothing deleted twice.
      const again = await run(f);
      expect(again).to.include({ deleted: 0, notInOld: 3, kept: 2 });
      expect(await jsonLines(again.auditLog)).to.deep.equal([]);
      expect(again.auditLog).not.to.equal(report.auditLog);
    });

    it('re-checks new right before deleting: a blob gone from new since the listing is kept', async () => {
      const stale = await seed(f, { inNew: true });
      const fine = await seed(f, { inNew: true });
      await verifiedClean(f);
      const newDb = new CountingBlobDB(f.newDb);
      const inner = f.newDb;
      // The listing still shows `stale`; by the time of the batch the app has deleted it from new.
      newDb.override.list = async function* (opts) {
        const infos = [];
        for await (const info of inner.list(opts)) infos.push(info);
        await inner.delete(stale.key);
        yield* infos;
      };
      const report = await run(f, { newDb });
      expect(report).to.include({ deleted: 1, kept: 1 });
      expect(report.keptByReason['missing in new']).to.equal(1);
      expect(await f.oldDb.exists(stale.key)).to.equal(true);
      expect(await f.oldDb.exists(fine.key)).to.equal(false);
      expect(newDb.calls.get).to.equal(2, 'every candidate read and hashed in new before the delete');
      expect((await jsonLines(report.auditLog)).map((a) => a.key)).to.deep.equal([fine.key]);
    });

    it('keeps a blob whose row went before its batch was deleted', async () => {
      const s = await seed(f, { inNew: true });
      await verifiedClean(f);
      const meta = new Proxy(f.meta, {
        get(t, prop, receiver) {
          if (prop === 'referenced') {
            return async (keys: string[]) => {
              await t.delete(s.key);
              return t.referenced(keys);
            };
          }
          const v = Reflect.get(t, prop, receiver);
          return typeof v === 'function' ? v.bind(t) : v;
        },
      });
      const report = await run(f, { meta });
      expect(report.keptByReason['no longer referenced']).to.equal(1);
      expect(report.deleted).to.equal(0);
      expect(await f.oldDb.exists(s.key)).to.equal(true);
    });

    it('leaves a key whose delete failed out of the audit log', async () => {
      const a = await seed(f, { inNew: true });
      const b = await seed(f, { inNew: true });
      await verifiedClean(f);
      const oldDb = new CountingBlobDB(f.oldDb);
      const inner = f.oldDb;
      oldDb.override.bulkDelete = async (keys) => {
        const rest = keys.filter((k) => k !== b.key);
        await inner.bulkDelete(rest);
        return keys.includes(b.key)
          ? { errors: [{ key: b.key, error: new BackendError('AccessDenied', { key: b.key }) }] }
          : { errors: [] };
      };
      const report = await run(f, { oldDb });
      expect(report).to.include({ deleted: 1, failed: 1 });
      expect(report.failures).to.deep.equal([{ key: b.key, error: 'AccessDenied' }]);
      expect((await jsonLines(report.auditLog)).map((x) => x.key)).to.deep.equal([a.key]);
      expect(await f.oldDb.exists(b.key)).to.equal(true);
      expect(report.exitCode).to.equal(1);
    });

    it('refuses without yes, and when old and new are the same place', async () => {
      await seed(f, { inNew: true });
      await verifiedClean(f);
      const noYes = await rejection(run(f, { yes: false }));
      expect(noYes).to.be.instanceOf(PreflightError);
      expect((noYes as PreflightError).code).to.equal('E_PREFLIGHT');
      expect((noYes as Error).message).to.contain('--yes');
      const same = await rejection(run(f, { sameLocation: true }));
      expect(same).to.be.instanceOf(SameLocationError);
      expect((same as Error).message).to.contain('same place');
      const sameObject = await rejection(run(f, { newDb: f.oldDb }));
      expect(sameObject).to.be.instanceOf(SameLocationError);
      // The same place under another name, which no config comparison sees: the write probe does.
      const alias = await rejection(run(f, { newDb: new CountingBlobDB(f.oldDb) }));
      expect(alias).to.be.instanceOf(SameLocationError);
      expect((alias as Error).message).to.contain('appeared in');
      expect((await keysIn(f.oldDb)).length).to.equal(1);
      expect(await readdir(f.logDir).catch(() => [])).to.deep.equal([]);
    });

    it('deletes an old copy only when the new copy is proven the same content (bit rot of the same length)', async () => {
      const rotten = await seed(f, { inNew: true });
      const fine = await seed(f, { inNew: true });
      await verifiedClean(f);
      // The new copy's bytes change, its length does not.
      const flipped = Buffer.from(rotten.body);
      flipped[0] = (flipped[0] ?? 0) ^ 0xff;
      await f.newDb.put(rotten.key, flipped);
      const report = await run(f);
      expect(report).to.include({ deleted: 1, kept: 1, exitCode: 1 });
      expect(report.keptByReason['content differs in new']).to.equal(1);
      expect(await readStream(await f.oldDb.get(rotten.key))).to.deep.equal(rotten.body);
      expect(await f.oldDb.exists(fine.key)).to.equal(false);
      expect((await jsonLines(report.keptFile)).map((k) => [k.key, k.reason])).to.deep.equal([
        [rotten.key, 'content differs in new'],
      ]);
    });

    it('without a sha256 in the row, compares the two copies byte for byte', async () => {
      const same = await seed(f, { inNew: true, withSha: false });
      const differ = await seed(f, { inNew: true, withSha: false });
      await verifiedClean(f);
      const other = Buffer.from(differ.body);
      other[other.length - 1] = (other[other.length - 1] ?? 0) ^ 0x01;
      await f.newDb.put(differ.key, other);
      const report = await run(f);
      expect(report).to.include({ deleted: 1, kept: 1, provedAgainstOld: 1, provedAgainstRow: 0 });
      expect(report.keptByReason['copies differ']).to.equal(1);
      expect(await f.oldDb.exists(same.key)).to.equal(false);
      expect(await readStream(await f.oldDb.get(differ.key))).to.deep.equal(differ.body);
    });

    it('refuses unless the latest verify of these backends was clean and newer than every backfill and check', async () => {
      const s = await seed(f, { inNew: true });
      const missing = await seed(f);
      const refused = async (why: RegExp) => {
        const err = await rejection(run(f));
        expect(err).to.be.instanceOf(PreflightError);
        expect((err as Error).message).to.match(why);
        expect(await f.oldDb.exists(s.key)).to.equal(true, 'nothing deleted');
      };
      await refused(/no verify of these backends is recorded/);
      // NOT SAFE (a blob missing in new).
      const unsafe = await verify({ meta: f.meta, newDb: f.newDb, oldDb: f.oldDb, logDir: f.logDir });
      expect(unsafe.safe).to.equal(false);
      await refused(/said NOT SAFE: 1 missing/);
      await f.newDb.put(missing.key, missing.body);
      // A verify of one type does not vouch for the others.
      await verifiedClean(f, { types: ['attachment'] });
      await refused(/covered only --types attachment/);
      await verifiedClean(f);
      // A backfill run saved after the verify started.
      const later = new Date(Date.now() + 1000);
      const run0 = {
        name: 'default',
        shard: '',
        status: 'completed' as const,
        lowWaterMark: 0,
        counts: emptyCounts(),
        logs: [],
        options: {},
        attempts: 1,
        exitCode: 0,
        startedAt: later,
        updatedAt: later,
        finishedAt: later,
        extra: {},
      };
      await f.meta.saveRun(run0);
      await refused(/backfill run "default" was saved at .*after the latest verify started/);
      await f.meta.deleteRun('default', '');
      // A check-blob-logs run after it.
      await f.meta.saveRun({ ...run0, name: CHECK_RUN, shard: identityKey({ old: 'x', new: 'y' }) });
      await refused(/a check-blob-logs run was saved/);
      await f.meta.deleteRun(CHECK_RUN, identityKey({ old: 'x', new: 'y' }));
      // A verify that was interrupted (its row stays "running").
      const v = await f.meta.getRun(VERIFY_RUN, identityKey({ old: 'old', new: 'new' }));
      await f.meta.saveRun({ ...(v as NonNullable<typeof v>), status: 'running', exitCode: null });
      await refused(/did not finish \(running\)/);
      // A verify of other backends says nothing about these.
      await verify({
        meta: f.meta,
        newDb: f.newDb,
        oldDb: f.oldDb,
        logDir: f.logDir,
        identity: { old: 'fs:/elsewhere', new: 'new' },
      });
      await refused(/did not finish/);
      await verifiedClean(f);
      const report = await run(f);
      expect(report).to.include({ deleted: 2, exitCode: 0 });
      expect(Date.parse(report.verifiedAt)).to.be.a('number').and.not.NaN;
    });

    it('refuses metadata with zero rows', async () => {
      await f.oldDb.put('a/b', 'x');
      await f.newDb.put('a/b', 'x');
      const err = await rejection(run(f));
      expect(err).to.be.instanceOf(PreflightError);
      expect((err as Error).message).to.contain('no rows');
      expect(await f.oldDb.exists('a/b')).to.equal(true);
    });

    it('dry run deletes nothing and lists what it would delete', async () => {
      const m = await mixed();
      const oldDb = new CountingBlobDB(f.oldDb);
      const report = await run(f, { dryRun: true, yes: false, oldDb });
      expect(report).to.include({ dryRun: true, deleted: 0, wouldDelete: 2, kept: 2, auditLog: null });
      expect(oldDb.calls.bulkDelete + oldDb.calls.delete).to.equal(0);
      expect((await keysIn(f.oldDb)).length).to.equal(5);
      expect(report.sample.sort()).to.deep.equal(m.safe.map((s) => s.key).sort());
      expect(report.planFile).to.match(/cleanup-old-dry-run-\d{8}T\d{6}Z\.jsonl$/);
      expect((await jsonLines(report.planFile)).map((p) => p.key).sort()).to.deep.equal(
        m.safe.map((s) => s.key).sort(),
      );
      const text = formatCleanupReport(report);
      expect(text).to.contain('dry run: nothing deleted');
      expect(text).to.contain('Would delete from old: 2');
      expect(text).to.contain(`    ${m.safe[0]?.key}\n`);
      expect(
        (await readdir(f.logDir)).filter(
          (n) => !n.includes('dry-run') && !n.endsWith('-kept.jsonl') && !n.startsWith('verify-'),
        ),
      ).to.deep.equal([]);
    });

    it('stops between batches when interrupted; a rerun finishes the job', async () => {
      for (let i = 0; i < 6; i++) await seed(f, { inNew: true });
      await verifiedClean(f);
      const ac = new AbortController();
      const oldDb = new CountingBlobDB(f.oldDb);
      const inner = f.oldDb;
      oldDb.override.bulkDelete = async (keys) => {
        const r = await inner.bulkDelete(keys);
        ac.abort();
        return r;
      };
      const first = await run(f, { oldDb, signal: ac.signal });
      expect(first.interrupted).to.equal(true);
      expect(first.exitCode).to.equal(130);
      expect(first.deleted).to.equal(2);
      expect(await jsonLines(first.auditLog)).to.have.length(2);
      const second = await run(f);
      expect(second).to.include({ deleted: 4, notInOld: 2, interrupted: false, exitCode: 0 });
      expect(await keysIn(f.oldDb)).to.deep.equal([]);
    });
  });
}
