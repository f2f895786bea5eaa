import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'chai';
import { AbortedError, InfrastructureError, PreflightError } from '../../lib/contract/errors.js';
import type { MetaStore } from '../../lib/contract/meta.js';
import {
  type CheckLogsOptions,
  type CheckLogsReport,
  checkBlobLogs,
  formatCheckReport,
  writeNotFoundFile,
} from '../../lib/engine/check-logs.js';
import { type MissingRecord, readMissingLog } from '../../lib/engine/missing-log.js';
import { CountingBlobDB, type Fixture, readStream, seed, TARGETS } from './fixture.js';

let nextId = 1;
function record(key: string, type: string, over: Partial<MissingRecord> = {}): MissingRecord {
  return {
    id: nextId++,
    key,
    type,
    parentId: 'case-1',
    error: 'not found',
    at: '2026-11-21T10:00:00.000Z',
    ...over,
  };
}

/** Writes a log: objects become JSON lines, strings are written as they are. */
async function writeLog(
  f: Fixture,
  name: string,
  lines: (MissingRecord | string)[],
  opts: { newlineAtEnd?: boolean } = {},
): Promise<string> {
  await mkdir(join(f.dir, 'in'), { recursive: true });
  const file = join(f.dir, 'in', name);
  const text = lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n');
  await writeFile(file, text + (opts.newlineAtEnd === false || lines.length === 0 ? '' : '\n'));
  return file;
}

function run(f: Fixture, files: string[], extra: Partial<CheckLogsOptions> = {}): Promise<CheckLogsReport> {
  return checkBlobLogs({ files, meta: f.meta, oldDb: f.oldDb, newDb: f.newDb, concurrency: 4, ...extra });
}

/** One record of each class for `type`: in new, row gone, in old only, nowhere. */
async function oneOfEach(f: Fixture, type: string) {
  const inNew = await seed(f, { type, inNew: true });
  const unreferenced = await seed(f, { type, row: false });
  const inOld = await seed(f, { type });
  const nowhere = await seed(f, { type, inOld: false });
  return { inNew, unreferenced, inOld, nowhere };
}

for (const target of TARGETS) {
  describe(`checkBlobLogs (${target.name})`, function () {
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

    it('classifies one record of each class for two types, with exact counts and text', async () => {
      const a = await oneOfEach(f, 'attachment');
      const i = await oneOfEach(f, 'image');
      const lines = [i, a].flatMap((s) => [
        record(s.nowhere.key, s === a ? 'attachment' : 'image'),
        record(s.inOld.key, s === a ? 'attachment' : 'image'),
        record(s.unreferenced.key, s === a ? 'attachment' : 'image'),
        record(s.inNew.key, s === a ? 'attachment' : 'image'),
      ]);
      const log = await writeLog(f, 'backfill-default-20261121T100000Z.jsonl', lines);
      const report = await run(f, [log]);

      const each = { checked: 4, foundInNew: 1, foundInOld: 1, notReferenced: 1, notFound: 1 };
      const none = { wrongSizeInNew: 0, wrongSizeInOld: 0, errors: 0, migrated: 0, migrateFailed: 0 };
      expect(report.byType).to.deep.equal([
        { type: 'attachment', ...each, ...none },
        { type: 'image', ...each, ...none },
      ]);
      expect(report.totals).to.deep.equal({
        checked: 8,
        foundInNew: 2,
        foundInOld: 2,
        notReferenced: 2,
        notFound: 2,
        ...none,
      });
      expect(report.wrongSize).to.deep.equal([]);
      expect(report.errors).to.deep.equal([]);
      expect(report.records).to.equal(8);
      expect(report.duplicates).to.equal(0);
      expect(report.notFound.map((r) => r.key)).to.deep.equal([i.nowhere.key, a.nowhere.key]);
      expect(report.malformed).to.deep.equal([]);
      expect(report.exitCode).to.equal(1);
      // Nothing was copied without migrate.
      expect(await f.newDb.exists(a.inOld.key)).to.equal(false);

      expect(formatCheckReport(report)).to.equal(
        [
          'attachment: checked 4 records',
          '  Found in new db: 1',
          '  Found in old db: 1',
          '  Not referenced: 1',
          '  Not found: 1',
          'image: checked 4 records',
          '  Found in new db: 1',
          '  Found in old db: 1',
          '  Not referenced: 1',
          '  Not found: 1',
          'Not found keys:',
          `  ${i.nowhere.key}`,
          `  ${a.nowhere.key}`,
          '',
        ].join('\n'),
      );
      // --json: the report as one plain object.
      expect(JSON.parse(JSON.stringify(report))).to.deep.equal(report);
    });

    it('migrate copies exactly the found-in-old ones; a second run finds them in new', async () => {
      const inOld = [await seed(f), await seed(f), await seed(f, { type: 'image' })];
      const unreferenced = await seed(f, { row: false });
      const inNew = await seed(f, { inNew: true });
      const log = await writeLog(f, 'a.jsonl', [
        ...inOld.map((s) => record(s.key, s.key.split('/')[0] ?? '')),
        record(unreferenced.key, 'attachment'),
        record(inNew.key, 'attachment'),
      ]);
      const puts = new CountingBlobDB(f.newDb);
      const first = await run(f, [log], { migrate: true, newDb: puts });
      expect(first.totals).to.include({
        foundInOld: 3,
        migrated: 3,
        migrateFailed: 0,
        notReferenced: 1,
        foundInNew: 1,
      });
      expect(first.byType.map((t) => [t.type, t.foundInOld, t.migrated])).to.deep.equal([
        ['attachment', 2, 2],
        ['image', 1, 1],
      ]);
      expect(first.exitCode).to.equal(0);
      expect(puts.calls.put).to.equal(3);
      for (const s of inOld) expect(await readStream(await f.newDb.get(s.key))).to.deep.equal(s.body);
      expect(await f.newDb.exists(unreferenced.key)).to.equal(false, 'an unreferenced blob is never copied');
      expect(formatCheckReport(first)).to.match(/\n {2}Not found: 0\nMigrated: 3\n$/);

      const second = await run(f, [log], { migrate: true });
      expect(second.totals).to.include({ foundInNew: 4, foundInOld: 0, migrated: 0, notReferenced: 1 });
      expect(second.exitCode).to.equal(0);
    });

    it('never copies a record whose row was deleted meanwhile, even when the row goes during the copy', async () => {
      const gone = await seed(f);
      await f.meta.delete(gone.key);
      const racing = await seed(f);
      // The row is read for the copy, then deleted by "the app" before the copy is checked.
      const meta = new Proxy(f.meta as MetaStore, {
        get(target, prop, receiver) {
          if (prop === 'get') {
            return async (key: string) => {
              const row = await target.get(key);
              if (key === racing.key) await target.delete(key);
              return row;
            };
          }
          const v = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? v.bind(target) : v;
        },
      });
      const log = await writeLog(f, 'a.jsonl', [
        record(gone.key, 'attachment'),
        record(racing.key, 'attachment'),
      ]);
      const newDb = new CountingBlobDB(f.newDb);
      const report = await run(f, [log], { migrate: true, meta, newDb });
      expect(report.totals).to.include({ notReferenced: 2, migrated: 0, foundInOld: 0 });
      expect(newDb.calls.put).to.equal(1, 'only the racing record reached the copy');
      expect(await f.newDb.exists(gone.key)).to.equal(false);
      expect(await f.newDb.exists(racing.key)).to.equal(
        false,
        'the copy made while the row went is taken back',
      );
      expect(await f.oldDb.exists(gone.key)).to.equal(true);
      expect(report.exitCode).to.equal(0);
    });

    it('reports a failed copy with its error and exits 1', async () => {
      const s = await seed(f);
      const log = await writeLog(f, 'a.jsonl', [record(s.key, 'attachment')]);
      // The old backend fails every read of it: the copy is tried and fails.
      const oldDb = new CountingBlobDB(f.oldDb);
      const broken = () => Promise.reject(Object.assign(new Error('unreadable'), { code: 'EIO' }));
      oldDb.override.get = broken;
      const report = await run(f, [log], { migrate: true, oldDb, retry: { attempts: 1 } });
      expect(report.totals).to.include({ foundInOld: 1, migrated: 0, migrateFailed: 1 });
      expect(report.migrateFailures).to.have.length(1);
      expect(report.migrateFailures[0]?.key).to.equal(s.key);
      expect(report.migrateFailures[0]?.error).to.match(/unreadable|too many retries/);
      expect(report.exitCode).to.equal(1);
      expect(formatCheckReport(report)).to.contain(`Migrated: 0\nMigrate failed: 1\n  ${s.key}: `);
    });

    it('never counts a copy of the wrong size as found: its own class, unresolved, never copied', async () => {
      // In new with another size than the row (backfill logged it "size mismatch").
      const wrongNew = await seed(f, { inNew: true });
      await f.newDb.put(wrongNew.key, wrongNew.body.subarray(0, wrongNew.body.length - 3));
      // In old with another size than the row.
      const wrongOld = await seed(f, { type: 'image' });
      await f.oldDb.put(wrongOld.key, Buffer.concat([wrongOld.body, Buffer.from('xx')]));
      const fine = await seed(f, { inNew: true });
      const log = await writeLog(f, 'a.jsonl', [
        record(wrongNew.key, 'attachment'),
        record(wrongOld.key, 'image'),
        record(fine.key, 'attachment'),
      ]);
      for (const migrate of [false, true]) {
        const report = await run(f, [log], { migrate, retry: { attempts: 1 } });
        expect(report.totals).to.include({
          checked: 3,
          foundInNew: 1,
          wrongSizeInNew: 1,
          foundInOld: 0,
          wrongSizeInOld: 1,
          migrated: 0,
          migrateFailed: 0,
        });
        expect(report.byType.map((t) => [t.type, t.wrongSizeInNew, t.wrongSizeInOld])).to.deep.equal([
          ['attachment', 1, 0],
          ['image', 0, 1],
        ]);
        expect(report.wrongSize.map((w) => [w.key, w.where, w.expected, w.actual])).to.deep.equal([
          [wrongNew.key, 'new', wrongNew.body.length, wrongNew.body.length - 3],
          [wrongOld.key, 'old', wrongOld.body.length, wrongOld.body.length + 2],
        ]);
        expect(report.exitCode).to.equal(1, 'a wrong-size copy is unresolved');
        const text = formatCheckReport(report);
        expect(text).to.contain('attachment: checked 2 records\n  Found in new db: 1\n');
        expect(text).to.contain('  Wrong size in new db: 1');
        expect(text).to.contain('  Wrong size in old db: 1');
        expect(text).to.contain(
          `  ${wrongNew.key}: in new ${wrongNew.body.length - 3} bytes, the metadata says ${wrongNew.body.length}`,
        );
        expect(JSON.parse(JSON.stringify(report))).to.deep.equal(report);
      }
      // Neither --migrate run copied or overwrote anything.
      expect(await readStream(await f.newDb.get(wrongNew.key))).to.deep.equal(
        wrongNew.body.subarray(0, wrongNew.body.length - 3),
      );
      expect(await f.newDb.exists(wrongOld.key)).to.equal(false);
    });

    it('a record whose checks fail (EACCES) is "Could not check"; the others are classified', async () => {
      const locked = await seed(f);
      const others = [await seed(f), await seed(f, { inNew: true }), await seed(f, { inOld: false })];
      const log = await writeLog(f, 'a.jsonl', [
        record(others[0]!.key, 'attachment'),
        record(locked.key, 'attachment'),
        record(others[1]!.key, 'attachment'),
        record(others[2]!.key, 'attachment'),
      ]);
      // Tests run as root, for whom file modes do not deny: the errno is injected.
      const oldDb = new CountingBlobDB(f.oldDb);
      const denied = (key: string) => {
        const err = Object.assign(new Error(`EACCES: permission denied, open '${key}'`), { code: 'EACCES' });
        return Promise.reject(err);
      };
      oldDb.override.stat = (key) => (key === locked.key ? denied(key) : f.oldDb.stat(key));
      oldDb.override.get = (key) => (key === locked.key ? denied(key) : f.oldDb.get(key));
      for (const migrate of [false, true]) {
        const report = await run(f, [log], { oldDb, migrate });
        expect(report.totals.checked).to.equal(4);
        expect(report.totals.notFound).to.equal(1);
        expect(report.totals.foundInNew).to.equal(1);
        if (migrate) expect(report.totals).to.include({ foundInOld: 2, migrated: 1, migrateFailed: 1 });
        else {
          expect(report.totals).to.include({ foundInOld: 1, errors: 1 });
          expect(report.errors.map((e) => e.key)).to.deep.equal([locked.key]);
          expect(report.errors[0]?.error).to.match(/EACCES/);
          expect(formatCheckReport(report)).to.contain(`Could not check:\n  ${locked.key}: `);
        }
        expect(report.exitCode).to.equal(1);
      }
    });

    it('stops with InfrastructureError when the backend keeps failing on the infrastructure', async () => {
      const lines: MissingRecord[] = [];
      for (let n = 0; n < 12; n++) lines.push(record((await seed(f)).key, 'attachment'));
      const log = await writeLog(f, 'a.jsonl', lines);
      const newDb = new CountingBlobDB(f.newDb);
      newDb.override.stat = () =>
        Promise.reject(
          Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' }),
        );
      const err = await run(f, [log], { newDb, retry: { attempts: 1 }, infrastructureThreshold: 3 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).to.be.instanceOf(InfrastructureError);
      expect(String((err as Error).message)).to.match(/in a row failed on the infrastructure/);
    });

    it('reports malformed lines with file and line number and processes the rest', async () => {
      const s = await seed(f, { inNew: true });
      const t = await seed(f, { inNew: true });
      const log = await writeLog(f, 'a.jsonl', [
        record(s.key, 'attachment'),
        '{"id":2,"key":',
        '{"id":3}',
        '',
        '[1,2]',
        record(t.key, 'attachment'),
      ]);
      const report = await run(f, [log]);
      expect(report.malformed.map((p) => [p.file, p.line])).to.deep.equal([
        [log, 2],
        [log, 3],
        [log, 5],
      ]);
      expect(report.malformed[0]?.why).to.match(/not valid JSON/);
      expect(report.malformed[1]?.why).to.match(/"key"/);
      expect(report.totals).to.include({ checked: 2, foundInNew: 2 });
      expect(report.warnings).to.deep.equal([]);
      expect(report.exitCode).to.equal(1, 'malformed lines make the run exit 1');
      const text = formatCheckReport(report);
      expect(text).to.contain(`Malformed lines: 3\n  ${log}:2: not valid JSON`);
      expect(text).to.contain(`  ${log}:5: not a JSON object`);
    });

    it('takes a torn last line as a warning only', async () => {
      const s = await seed(f, { inNew: true });
      const log = await writeLog(f, 'a.jsonl', [record(s.key, 'attachment'), '{"id":9,"key":"attach'], {
        newlineAtEnd: false,
      });
      const report = await run(f, [log]);
      expect(report.malformed).to.deep.equal([]);
      expect(report.warnings).to.have.length(1);
      expect(report.warnings[0]).to.include({ file: log, line: 2 });
      expect(report.totals).to.include({ checked: 1, foundInNew: 1 });
      expect(report.exitCode).to.equal(0);
      expect(formatCheckReport(report)).to.match(/\nWarning: .*:2: torn last line/);
    });

    it('reads an empty log as zero records', async () => {
      const log = await writeLog(f, 'empty.jsonl', []);
      const report = await run(f, [log]);
      expect(report.records).to.equal(0);
      expect(report.byType).to.deep.equal([]);
      expect(report.totals.checked).to.equal(0);
      expect(report.exitCode).to.equal(0);
      expect(formatCheckReport(report)).to.equal('no records in 1 log\n');
    });

    it('refuses a missing log before checking anything', async () => {
      const s = await seed(f);
      const good = await writeLog(f, 'a.jsonl', [record(s.key, 'attachment')]);
      const newDb = new CountingBlobDB(f.newDb);
      const missing = join(f.dir, 'in', 'nope.jsonl');
      let caught: unknown;
      try {
        await run(f, [good, missing], { newDb, migrate: true });
      } catch (err) {
        caught = err;
      }
      expect(caught).to.be.instanceOf(PreflightError);
      expect((caught as PreflightError).code).to.equal('E_PREFLIGHT');
      expect((caught as Error).message)
        .to.contain('nope.jsonl')
        .and.contain('no such file');
      expect(newDb.calls.exists + newDb.calls.put).to.equal(0);
    });

    it('stops with AbortedError when its signal fires, copying nothing more', async () => {
      const lines: MissingRecord[] = [];
      for (let n = 0; n < 40; n++) lines.push(record((await seed(f)).key, 'attachment'));
      const log = await writeLog(f, 'a.jsonl', lines);
      const ac = new AbortController();
      const newDb = new CountingBlobDB(f.newDb);
      newDb.override.stat = async (key) => {
        ac.abort();
        return f.newDb.stat(key);
      };
      let caught: unknown;
      try {
        await run(f, [log], { newDb, migrate: true, signal: ac.signal, chunkSize: 10 });
      } catch (err) {
        caught = err;
      }
      expect(caught).to.be.instanceOf(AbortedError);
      expect(newDb.calls.put).to.equal(0);
    });

    it('checks a key found in several logs once; the first record gives its type', async () => {
      const s = await seed(f, { type: 'image' });
      const u = await seed(f, { inNew: true });
      const first = await writeLog(f, 'a.jsonl', [record(s.key, 'image'), record(u.key, 'attachment')]);
      const second = await writeLog(f, 'b.jsonl', [record(s.key, 'attachment'), record(u.key, 'attachment')]);
      const newDb = new CountingBlobDB(f.newDb);
      const report = await run(f, [first, second, first], { newDb });
      expect(report.records).to.equal(6);
      expect(report.duplicates).to.equal(4);
      expect(report.totals.checked).to.equal(2);
      expect(report.byType.map((t) => [t.type, t.checked, t.foundInOld, t.foundInNew])).to.deep.equal([
        ['attachment', 1, 0, 1],
        ['image', 1, 1, 0],
      ]);
      expect(newDb.calls.stat).to.equal(2);
    });

    it('lists over 100 not-found keys in a file of the log directory', async () => {
      const lines: MissingRecord[] = [];
      for (let n = 0; n < 120; n++)
        lines.push(record(`attachment/missing-${String(n).padStart(3, '0')}`, 'attachment'));
      const log = await writeLog(f, 'a.jsonl', lines);
      const report = await run(f, [log], { concurrency: 16, chunkSize: 50 });
      expect(report.totals).to.include({ checked: 120, notReferenced: 120 });
      // Rows for them: now they are "Not found".
      for (const r of lines)
        await f.meta.add({ key: r.key, parentId: 'p', type: 'attachment', contentLength: 1 });
      const again = await run(f, [log], { concurrency: 16, chunkSize: 50 });
      expect(again.totals).to.include({ checked: 120, notFound: 120 });
      expect(again.notFound.map((r) => r.key)).to.deep.equal(lines.map((r) => r.key));

      const path = await writeNotFoundFile(again, f.logDir, new Date('2026-11-21T10:00:00Z'));
      expect(path).to.equal(join(f.logDir, 'check-blob-logs-not-found-20261121T100000Z.jsonl'));
      expect((await stat(path)).mode & 0o777).to.equal(0o600);
      expect((await stat(f.logDir)).mode & 0o777).to.equal(0o700);
      const back: string[] = [];
      await readMissingLog(
        path,
        (r) => {
          back.push(r.key);
        },
        (p) => {
          throw new Error(`${p.file}:${p.line}: ${p.why}`);
        },
      );
      expect(back).to.deep.equal(lines.map((r) => r.key));

      const text = formatCheckReport(again, { notFoundFile: path });
      expect(text).to.contain(`Not found keys: 120, listed in ${path}\n`);
      expect(text).not.to.contain('missing-000');
      // A second file in the same second gets another name, never overwriting.
      const other = await writeNotFoundFile(again, f.logDir, new Date('2026-11-21T10:00:00Z'));
      expect(other).not.to.equal(path);
      expect((await readFile(path, 'utf8')).split('\n')).to.have.length(121);
    });
  });
}

describe('formatCheckReport', () => {
  const entry = (i: number) => ({ id: i, key: `k${i}`, type: 't', parentId: 'p' });
  const many = <T>(n: number, make: (i: number) => T) => Array.from({ length: n }, (_, i) => make(i));
  function report(n: number): CheckLogsReport {
    return {
      files: ['a.jsonl'],
      migrate: true,
      records: n,
      duplicates: 0,
      byType: [],
      totals: {
        checked: n,
        foundInNew: 0,
        wrongSizeInNew: 0,
        foundInOld: n,
        wrongSizeInOld: 0,
        notReferenced: 0,
        notFound: 0,
        errors: 0,
        migrated: 0,
        migrateFailed: n,
      },
      notFound: many(n, entry),
      wrongSize: many(n, (i) => ({ ...entry(i), where: 'old' as const, expected: 1, actual: 2 })),
      errors: many(n, (i) => ({ ...entry(i), error: 'boom' })),
      migrateFailures: many(n, (i) => ({ ...entry(i), error: 'nope' })),
      malformed: many(n, (i) => ({ file: 'a.jsonl', line: i, why: 'bad' })),
      warnings: [],
      exitCode: 1,
    };
  }

  it('lists at most 100 of each class, then says how many more', () => {
    const text = formatCheckReport(report(101));
    expect(text).to.contain('Migrate failed: 101\n  k0: nope\n');
    expect(text).to.contain('  k99: nope\n  … and 1 more (see --json)\nWrong size');
    expect(text).to.contain(
      '  k99: in old 2 bytes, the metadata says 1\n  … and 1 more (see --json)\nCould not check:',
    );
    expect(text).to.contain(
      '  k99: boom\n  … and 1 more (see --json)\nNot found keys (first 100 of 101):\n  k0\n',
    );
    expect(text).to.contain('  k99\nMalformed lines: 101\n');
    expect(text).to.match(/ {2}a\.jsonl:99: bad\n {2}… and 1 more\n$/);
    expect(formatCheckReport(report(101), { notFoundFile: 'nf.jsonl' })).to.contain(
      'Not found keys: 101, listed in nf.jsonl\nMalformed lines',
    );
  });

  it('lists every one of 100', () => {
    const text = formatCheckReport(report(100));
    expect(text).not.to.contain('more');
    expect(text).to.contain('  k99: nope\nWrong size');
    expect(formatCheckReport(report(100), { notFoundFile: 'nf.jsonl' })).to.contain(
      'Not found keys:\n  k0\n',
    );
  });
});
