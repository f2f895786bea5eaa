/**
 * Bad input through the real CLI: config files, flags, keys in metadata
 * rows, log files, absurd sizes. Each case: exit 2 with one line naming the
 * problem and where, no stack trace, nothing written; or, where the run can
 * go on, a per-record error and the run goes on. Property-based tests for the
 * log reader.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { expect } from 'chai';
import fc from 'fast-check';
import { FilesystemBlobDB } from '../../lib/backends/fs/index.js';
import { MemoryBlobDB } from '../../lib/backends/memory/index.js';
import { InvalidKeyError } from '../../lib/contract/errors.js';
import { type LogProblem, type MissingRecord, readMissingLog } from '../../lib/engine/missing-log.js';
import { MetaDB } from '../../lib/meta/index.js';
import {
  backfillArgs,
  type CliResult,
  readJsonLines,
  runCli,
  SQLITE_META,
  seedOldFs,
  writeConfig,
} from '../support/cli.js';
import { createBucket, type S3rverHandle, startS3rver } from '../support/s3rver.js';

let dir: string;
let s3: S3rverHandle;
let bucket: string;
const OLD = { type: 'fs', root: './old' };
const NEW = { type: 'fs', root: './new' };
const GOOD = { meta: SQLITE_META, old: OLD, new: NEW };

/** One line on stderr naming the problem, no stack, nothing on stdout, nothing written. */
function expectRefused(r: CliResult, mention: RegExp): void {
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  expect(r.code, r.stderr).to.equal(2);
  expect(lines, r.stderr).to.have.length(1);
  expect(lines[0]).to.match(mention);
  expect(r.stderr).not.to.match(/\n\s+at |node:internal|\.ts:\d+:\d+/);
  expect(r.stdout).to.equal('');
  expect(existsSync(join(dir, 'new')), 'the new backend was written').to.equal(false);
  expect(existsSync(join(dir, 'logs')), 'a log directory was created').to.equal(false);
}

async function backfillWith(config: unknown, flags: string[] = []): Promise<CliResult> {
  const file = await writeConfig(join(dir, 'case.config.json'), config);
  return runCli(backfillArgs(file, join(dir, 'logs'), '--no-progress', ...flags), {
    cwd: dir,
    env: { NEW_SECRET: 'secret-value' },
  });
}

describe('reliability: bad input', function () {
  this.timeout(60_000);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'blobshift-bad-'));
    const meta = await MetaDB.open({
      client: 'better-sqlite3',
      connection: { filename: join(dir, 'meta.sqlite') },
    });
    await seedOldFs(meta, join(dir, 'old'), 5);
    await meta.close();
    s3 = await startS3rver();
    const admin = s3.client();
    bucket = await createBucket(admin);
    admin.destroy();
  });
  after(async () => {
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  });
  afterEach(async () => {
    await rm(join(dir, 'new'), { recursive: true, force: true });
    await rm(join(dir, 'logs'), { recursive: true, force: true });
  });

  describe('config files', () => {
    it('a missing config file', async () => {
      const r = await runCli(['backfill', '-c', join(dir, 'nope.json'), '--no-progress'], { cwd: dir });
      expectRefused(r, /nope\.json/);
    });
    it('a config file that is not JSON', async () => {
      await writeFile(join(dir, 'bad.json'), '{ "meta": { "client": ');
      const r = await runCli(['backfill', '-c', join(dir, 'bad.json'), '--no-progress'], { cwd: dir });
      expectRefused(r, /bad\.json.*(line|JSON)/i);
    });
    it('an unknown top-level key, with a did-you-mean', async () => {
      expectRefused(await backfillWith({ ...GOOD, nwe: NEW }), /nwe.*(did you mean|new)/i);
    });
    it('an unknown key inside a backend', async () => {
      expectRefused(await backfillWith({ ...GOOD, new: { ...NEW, rot: './x' } }), /new.*rot/);
    });
    it('a wrong type (fileMode: true)', async () => {
      expectRefused(await backfillWith({ ...GOOD, new: { ...NEW, fileMode: true } }), /new\.fileMode/);
    });
    it('a wrong type (maxSockets: "lots")', async () => {
      const s3new = { type: 's3', bucket, endpoint: s3.endpoint, maxSockets: 'lots' };
      expectRefused(await backfillWith({ ...GOOD, new: s3new }), /new\.maxSockets/);
    });
    it('an unknown backend type', async () => {
      expectRefused(
        await backfillWith({ ...GOOD, new: { type: 'ftp', root: './x' } }),
        /new\.type.*ftp|ftp.*new/,
      );
    });
    it('an unset $VAR', async () => {
      const s3new = {
        type: 's3',
        bucket,
        endpoint: s3.endpoint,
        credentials: { accessKeyId: '$UNSET_KEY_ID_XYZ', secretAccessKey: '$NEW_SECRET' },
      };
      expectRefused(await backfillWith({ ...GOOD, new: s3new }), /UNSET_KEY_ID_XYZ/);
    });
    it('a database that does not answer', async () => {
      const meta = { client: 'mysql2', connection: 'mysql://root@127.0.0.1:1/test' };
      expectRefused(await backfillWith({ ...GOOD, meta }), /127\.0\.0\.1:1/);
    });
    it('a SQLite file that does not exist', async () => {
      const meta = { client: 'better-sqlite3', connection: { filename: './typo.sqlite' } };
      expectRefused(await backfillWith({ ...GOOD, meta }), /typo\.sqlite/);
      expect(existsSync(join(dir, 'typo.sqlite'))).to.equal(false);
    });
    it('a bucket that does not exist', async () => {
      const s3new = {
        type: 's3',
        bucket: 'no-such-bucket-here',
        endpoint: s3.endpoint,
        credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      };
      expectRefused(await backfillWith({ ...GOOD, new: s3new }), /no-such-bucket-here/);
    });
    it('wrong credentials', async () => {
      const s3new = {
        type: 's3',
        bucket,
        endpoint: s3.endpoint,
        credentials: { accessKeyId: 'WRONGKEY', secretAccessKey: '$NEW_SECRET' },
      };
      const r = await backfillWith({ ...GOOD, new: s3new });
      expectRefused(r, new RegExp(bucket));
      expect(r.stderr).not.to.contain('secret-value');
    });
    it('old = new (the same root)', async () => {
      expectRefused(await backfillWith({ ...GOOD, new: { type: 'fs', root: './old/' } }), /same place/);
    });
    it('no meta section', async () => {
      expectRefused(await backfillWith({ old: OLD, new: NEW }), /meta/);
    });
  });

  describe('flags', () => {
    const flagCases: [string, string[], RegExp][] = [
      ['an unknown flag', ['--frobnicate'], /frobnicate/],
      ['--concurrency 0', ['--concurrency', '0'], /--concurrency/],
      ['--concurrency out of range', ['--concurrency', '100000'], /--concurrency/],
      ['--shard 3/3', ['--shard', '3/3'], /--shard/],
      ['--shard not I/N', ['--shard', 'x'], /--shard/],
      ['--chunk-size lots', ['--chunk-size', 'lots'], /--chunk-size/],
      ['--max-rate -1', ['--max-rate', '-1'], /--max-rate/],
      ['--existence maybe', ['--existence', 'maybe'], /--existence/],
      ['--log-format xml', ['--log-format', 'xml'], /--log-format/],
      ['--run with a slash', ['--run', 'a/b'], /--run/],
    ];
    for (const [name, flags, mention] of flagCases) {
      it(name, async () => {
        expectRefused(await backfillWith(GOOD, flags), mention);
      });
    }
  });

  describe('keys and sizes in metadata rows: a per-record error each, the run goes on (exit 1)', () => {
    const bad: [string, string | number][] = [
      ['../x', '../x'],
      ['/abs', '/abs'],
      ['a//b', 'a//b'],
      ['a/./b', 'a/./b'],
      ['NUL', 'a\u0000b'],
      ['2 KB', 'k'.repeat(2048)],
      ['reserved temp prefix', 'd/.blobshift-tmp-0123456789abcdef'],
      ['negative size', -5],
      ['absurd size (1 PiB)', 2 ** 50],
    ];
    let records: Record<string, unknown>[] = [];
    let result: CliResult;
    const ids = new Map<string, number>();
    before(async () => {
      const db = new Database(join(dir, 'meta.sqlite'));
      const insert = db.prepare(
        'INSERT INTO blob_meta (key, parent_id, type, name, content_length, created_on) VALUES (?, ?, ?, ?, ?, ?)',
      );
      for (const [name, v] of bad) {
        const key = typeof v === 'string' ? v : `sizes/${name.replace(/ /g, '-')}`;
        const size = typeof v === 'number' ? v : 10;
        // The size rows have a 10-byte blob in old: the metadata disagrees with it.
        if (typeof v === 'number') {
          await mkdir(join(dir, 'old', 'sizes'), { recursive: true });
          await writeFile(join(dir, 'old', key), '0123456789');
        }
        const info = insert.run(Buffer.from(key).toString(), 'p', 'attachment', name, size, Date.now());
        ids.set(name, Number(info.lastInsertRowid));
      }
      db.close();
      result = await backfillWith(GOOD, ['--json']);
      if (!result.stdout) throw new Error(`no summary (exit ${result.code}): ${result.stderr}`);
      const summary = JSON.parse(result.stdout) as { logs: string[] };
      records = await readJsonLines(summary.logs);
    });
    after(() => {
      const db = new Database(join(dir, 'meta.sqlite'));
      db.prepare(`DELETE FROM blob_meta WHERE id IN (${[...ids.values()].join(',')})`).run();
      db.prepare('DELETE FROM blob_meta_runs').run();
      db.close();
    });
    for (const [name] of bad) {
      it(`${name}: logged with its id and a reason, the good blobs copied`, () => {
        expect(result.code, result.stderr).to.equal(1);
        const rec = records.find((x) => x.id === ids.get(name));
        expect(rec, `no log record for ${name}`).to.not.equal(undefined);
        expect(String(rec?.error)).to.match(/key|size/i);
        expect(String(rec?.error)).not.to.match(/\n|\s+at /);
        const summary = JSON.parse(result.stdout) as { copied: number; failed: number; status: string };
        expect(summary.status).to.equal('completed');
        expect(summary.copied).to.equal(5);
        expect(summary.failed).to.equal(bad.length);
      });
    }
  });

  describe('keys through the library: InvalidKeyError, nothing written', () => {
    const keys: [string, string][] = [
      ['../x', '../x'],
      ['/abs', '/abs'],
      ['a//b', 'a//b'],
      ['a/./b', 'a/./b'],
      ['NUL', 'a\u0000b'],
      ['2 KB', 'k'.repeat(2048)],
      ['reserved temp prefix', '.blobshift-tmp-x'],
    ];
    for (const [name, key] of keys) {
      it(name, async () => {
        const root = join(dir, 'lib-root');
        const fsDb = new FilesystemBlobDB({ root });
        const mem = new MemoryBlobDB();
        for (const db of [fsDb, mem]) {
          let err: unknown;
          await db.put(key, 'x').catch((e: unknown) => {
            err = e;
          });
          expect(err, name).to.be.instanceOf(InvalidKeyError);
          expect((err as Error).message).to.not.match(/\n/);
        }
        const left = existsSync(root) ? await readdir(root, { recursive: true }) : [];
        expect(left).to.deep.equal([]);
        expect(existsSync(join(dir, 'x'))).to.equal(false);
        await rm(root, { recursive: true, force: true });
      });
    }
  });

  describe('log files (check-blob-logs)', () => {
    const check = async (content: Buffer | string) => {
      const file = join(dir, 'input.jsonl');
      await writeFile(file, content);
      const cfg = await writeConfig(join(dir, 'check.config.json'), GOOD);
      return { file, r: await runCli(['check-blob-logs', '-c', cfg, file], { cwd: dir }) };
    };
    const good = (id: number) => `${JSON.stringify({ id, key: `k/${id}`, type: 't', error: 'not found' })}\n`;

    it('a binary file: each bad line reported as file:line, exit 1', async () => {
      const bytes = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 131) % 256));
      const { file, r } = await check(Buffer.concat([Buffer.from(good(1)), bytes, Buffer.from('\n')]));
      expect(r.code, r.stderr).to.equal(1);
      expect(r.stderr).to.contain(`${file}:2:`);
      expect(r.stderr).not.to.match(/\n\s+at /);
    });
    it('a 10 MB single line: reported briefly, exit 1', async () => {
      const { file, r } = await check(`${'x'.repeat(10 * 1024 * 1024)}\n`);
      expect(r.code, r.stderr.slice(0, 500)).to.equal(1);
      expect(r.stderr).to.contain(`${file}:1:`);
      expect(r.stderr.length).to.be.below(2000);
    });
    it('wrong field types: named with file:line, the good records still checked', async () => {
      const { file, r } = await check(good(1) + JSON.stringify({ id: 'seven', key: 5 }) + '\n' + good(3));
      expect(r.code, r.stderr).to.equal(1);
      expect(r.stderr).to.match(new RegExp(`${file}:2: .*id`));
      expect(r.stdout).to.match(/checked 2 records/);
    });
    it('a torn last line is a warning, not an error', async () => {
      const { file, r } = await check(good(1) + good(2).slice(0, 15));
      expect(r.stderr).to.contain(`${file}:2:`);
      expect(r.stdout).to.match(/checked 1 record/);
      expect(r.stderr).to.match(/torn/);
      // The one record has no metadata row: "Not referenced", nothing wrong, exit 0.
      expect(r.stdout).to.match(/Not referenced: 1/);
      expect(r.code, r.stderr).to.equal(0);
    });
    it('an empty file is zero records, exit 0', async () => {
      const { r } = await check('');
      expect(r.code, r.stderr).to.equal(0);
    });
    it('a missing log file: exit 2, one line', async () => {
      const cfg = await writeConfig(join(dir, 'check.config.json'), GOOD);
      const r = await runCli(['check-blob-logs', '-c', cfg, join(dir, 'absent.jsonl')], { cwd: dir });
      expect(r.code).to.equal(2);
      expect(r.stderr.trim().split('\n')).to.have.length(1);
      expect(r.stderr).to.contain('absent.jsonl');
    });
  });
});

describe('reliability: the log reader (property-based)', function () {
  this.timeout(60_000);
  let logDir: string;
  before(async () => {
    logDir = await mkdtemp(join(tmpdir(), 'blobshift-logprop-'));
  });
  after(() => rm(logDir, { recursive: true, force: true }));

  let n = 0;
  async function read(content: string | Uint8Array) {
    const file = join(logDir, `l${n++}.jsonl`);
    await writeFile(file, content);
    const records: MissingRecord[] = [];
    const problems: LogProblem[] = [];
    const res = await readMissingLog(
      file,
      (r) => {
        records.push(r);
      },
      (p) => {
        problems.push(p);
      },
    );
    return { res, records, problems };
  }

  const segment = fc.stringMatching(/^[a-z0-9_-]{1,12}$/);
  const record = fc.record({
    id: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
    key: fc.array(segment, { minLength: 1, maxLength: 4 }).map((s) => s.join('/')),
    type: fc.string({ maxLength: 10 }),
    parentId: fc.string({ maxLength: 10 }),
    error: fc.constantFrom('not found', 'too many retries', 'EACCES: permission denied'),
    at: fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
  });

  it('valid records round-trip, in order, with no problems', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(record, { maxLength: 30 }), async (recs) => {
        const { records, problems } = await read(recs.map((r) => `${JSON.stringify(r)}\n`).join(''));
        expect(problems).to.deep.equal([]);
        expect(records).to.deep.equal(recs);
      }),
      { numRuns: 60 },
    );
  });

  it('arbitrary bytes never throw; every non-empty line is a record or a problem with its line number', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 2000 }), async (bytes) => {
        const { res, problems } = await read(bytes);
        for (const p of problems) expect(p.line).to.be.at.least(1);
        const lines = Buffer.from(bytes).toString('utf8').split('\n').length;
        expect(res.records + res.problems).to.be.at.most(lines);
      }),
      { numRuns: 100 },
    );
  });

  it('a torn last line (any prefix of a record) is only a warning; every whole record is read', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(record, { minLength: 1, maxLength: 10 }),
        record,
        fc.nat(),
        async (recs, last, cutAt) => {
          const tail = JSON.stringify(last);
          const cut = 1 + (cutAt % (tail.length - 1));
          const text = recs.map((r) => `${JSON.stringify(r)}\n`).join('') + tail.slice(0, cut);
          const { records, problems } = await read(text);
          expect(records).to.deep.equal(recs);
          expect(problems.every((p) => p.torn)).to.equal(true);
          expect(problems.length).to.be.at.most(1);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('lines with wrong field types are problems naming the field; the rest are records', async () => {
    const wrong = fc.oneof(
      fc.record({ id: fc.string(), key: segment }),
      fc.record({ id: fc.integer({ min: 1 }), key: fc.integer() }),
      fc.record({ id: fc.integer({ max: 0 }), key: segment }),
      fc.record({ id: fc.integer({ min: 1 }), key: segment, error: fc.integer() }),
      fc.record({ id: fc.integer({ min: 1 }), key: fc.constantFrom('../x', '/abs', 'a//b', '') }),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.oneof(
            record.map((r) => ({ ok: true, r })),
            wrong.map((r) => ({ ok: false, r })),
          ),
          { maxLength: 20 },
        ),
        async (lines) => {
          const { records, problems } = await read(lines.map((l) => `${JSON.stringify(l.r)}\n`).join(''));
          expect(records.length).to.equal(lines.filter((l) => l.ok).length);
          expect(problems.map((p) => p.line)).to.deep.equal(lines.flatMap((l, i) => (l.ok ? [] : [i + 1])));
          for (const p of problems) expect(p.why).to.match(/"(id|key|error)"/);
        },
      ),
      { numRuns: 60 },
    );
  });
});
