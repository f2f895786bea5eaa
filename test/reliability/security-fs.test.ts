/**
 * Security and filesystem faults through the real CLI: secrets never show
 * (output, logs, --json, SDK and database errors), no connection leaves
 * 127.0.0.1, the filesystem backend stays inside its root, files get their
 * modes; a file where a directory should be (or a directory where a blob
 * should be) fails that blob with a clear logged error while the run goes on.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { expect } from 'chai';
import { FilesystemBlobDB } from '../../lib/backends/fs/index.js';
import { backfillArgs, readJsonLines, runCli, SQLITE_META, writeConfig } from '../support/cli.js';
import { createBucket, type S3rverHandle, startS3rver } from '../support/s3rver.js';
import { seedSqliteOldFs } from '../support/seed.js';

const SECRET = 'sEcReT-9f3a7c1e-do-not-print';
const DB_PASSWORD = 'pw-7d2e-do-not-print';

async function allFiles(root: string): Promise<string[]> {
  if (!existsSync(root)) return [];
  return (await readdir(root, { recursive: true })).map((f) => join(root, String(f)));
}

describe('reliability: security', function () {
  this.timeout(120_000);
  let dir: string;
  let s3: S3rverHandle;
  let bucket: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'blobshift-sec-'));
    await seedSqliteOldFs(dir, 20);
    s3 = await startS3rver();
    const admin = s3.client();
    bucket = await createBucket(admin);
    admin.destroy();
  });
  after(async () => {
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const commands: [string, string[]][] = [
    ['backfill', ['backfill', '--no-progress']],
    ['backfill --json', ['backfill', '--no-progress', '--json']],
    ['backfill --dry-run', ['backfill', '--dry-run', '--json']],
    ['verify', ['verify']],
    ['verify --json', ['verify', '--json']],
    ['estimate --json', ['estimate', '--json']],
    ['status --json', ['status', '--json']],
    ['check-blob-logs', ['check-blob-logs', 'LOG']],
    ['cleanup-old --dry-run', ['cleanup-old', '--yes', '--dry-run']],
  ];
  const configs: [string, () => unknown][] = [
    [
      'S3 credentials the server refuses (AWS SDK errors)',
      () => ({
        meta: SQLITE_META,
        old: { type: 'fs', root: './old' },
        new: {
          type: 's3',
          bucket,
          endpoint: s3.endpoint,
          credentials: { accessKeyId: 'AKIAWRONG', secretAccessKey: '$THE_SECRET' },
          requestChecksumCalculation: 'WHEN_REQUIRED',
          responseChecksumValidation: 'WHEN_REQUIRED',
        },
      }),
    ],
    [
      'a mysql URL with a password (database not answering)',
      () => ({
        meta: { client: 'mysql2', connection: `mysql://app:$DB_PW@127.0.0.1:1/test` },
        old: { type: 'fs', root: './old' },
        new: { type: 'fs', root: './new-sec' },
      }),
    ],
  ];
  for (const [configName, make] of configs) {
    for (const [name, args] of commands) {
      it(`${name}, ${configName}: no secret in stdout, stderr or log files (debug stacks too)`, async () => {
        const logDir = join(dir, `logs-${name.replace(/\W+/g, '-')}`);
        await writeFile(join(logDir, '..', 'input.jsonl'), '{"id":1,"key":"a/b","error":"not found"}\n');
        const cfg = await writeConfig(join(dir, 'sec.config.json'), make());
        const argv = [
          ...args.map((a) => (a === 'LOG' ? join(dir, 'input.jsonl') : a)),
          '-c',
          cfg,
          '--log-dir',
          logDir,
        ];
        for (const debug of ['0', '1']) {
          const r = await runCli(argv, {
            cwd: dir,
            env: { THE_SECRET: SECRET, DB_PW: DB_PASSWORD, BLOBSHIFT_DEBUG: debug },
          });
          expect(r.code, r.stderr).to.not.equal(0);
          for (const s of [SECRET, DB_PASSWORD]) {
            expect(r.stdout, 'stdout').to.not.contain(s);
            expect(r.stderr, 'stderr').to.not.contain(s);
            for (const f of await allFiles(logDir)) expect(await readFile(f, 'utf8'), f).to.not.contain(s);
          }
        }
      });
    }
  }

  it('PostgreSQL: a password in the URL, in its query, and in PGPASSWORD never shows (backfill, estimate; debug stacks too)', async () => {
    const PG_ENV_PASSWORD = 'pgenv-4b1c-do-not-print';
    for (const connection of [
      'postgres://app:$DB_PW@127.0.0.1:1/test',
      'postgresql://app@127.0.0.1:1/test?password=$DB_PW',
      'postgres://app@127.0.0.1:1/test',
    ]) {
      const cfg = await writeConfig(join(dir, 'sec-pg.config.json'), {
        meta: { client: 'pg', connection },
        old: { type: 'fs', root: './old' },
        new: { type: 'fs', root: './new-sec' },
      });
      for (const [args, debug] of [
        [['backfill', '--no-progress', '--json', '--log-dir', join(dir, 'logs-pg')], '1'],
        [['estimate', '--json'], '0'],
      ] as [string[], string][]) {
        const logDir = join(dir, 'logs-pg');
        const r = await runCli([...args, '-c', cfg], {
          cwd: dir,
          env: { DB_PW: DB_PASSWORD, PGPASSWORD: PG_ENV_PASSWORD, BLOBSHIFT_DEBUG: debug },
        });
        expect(r.code, r.stderr).to.equal(2);
        expect(r.stderr).to.match(/ECONNREFUSED|unreachable/);
        for (const secret of [DB_PASSWORD, encodeURIComponent(DB_PASSWORD), PG_ENV_PASSWORD]) {
          expect(r.stdout, `${connection} ${args[0]}: stdout`).to.not.contain(secret);
          expect(r.stderr, `${connection} ${args[0]}: stderr`).to.not.contain(secret);
          for (const f of await allFiles(logDir)) expect(await readFile(f, 'utf8'), f).to.not.contain(secret);
        }
      }
    }
  });

  it('a whole backfill makes no connection outside 127.0.0.1 (connect and DNS lookups recorded in the child)', async () => {
    const record = join(dir, 'connections.txt');
    const hook = join(dir, 'record-connections.mjs');
    await writeFile(
      hook,
      `import net from 'node:net';
import dns from 'node:dns';
import { appendFileSync } from 'node:fs';
const file = process.env.RECORD_CONNECTIONS;
const note = (what) => appendFileSync(file, what + '\\n');
const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  const o = args[0];
  if (o && typeof o === 'object' && !Array.isArray(o)) note('connect ' + (o.path ?? (o.host ?? 'localhost') + ':' + o.port));
  else if (Array.isArray(o)) { const x = o[0] ?? {}; note('connect ' + (x.path ?? (x.host ?? 'localhost') + ':' + x.port)); }
  else note('connect ' + String(args[1] ?? 'localhost') + ':' + String(o));
  return connect.apply(this, args);
};
const lookup = dns.lookup;
dns.lookup = function (host, ...rest) { note('lookup ' + host); return lookup.call(this, host, ...rest); };
const p = dns.promises.lookup;
dns.promises.lookup = function (host, ...rest) { note('lookup ' + host); return p.call(this, host, ...rest); };
`,
    );
    const cfg = await writeConfig(join(dir, 'net.config.json'), {
      meta: SQLITE_META,
      old: { type: 'fs', root: './old' },
      new: {
        type: 's3',
        bucket,
        endpoint: s3.endpoint,
        credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      },
    });
    const r = await runCli(backfillArgs(cfg, join(dir, 'net-logs'), '--no-progress', '--run', 'net'), {
      cwd: dir,
      env: { RECORD_CONNECTIONS: record },
      nodeArgs: ['--import', pathToFileURL(hook).href],
    });
    expect(r.code, r.stderr).to.equal(0);
    const seen = (await readFile(record, 'utf8')).split('\n').filter(Boolean);
    expect(seen.length, 'connections recorded').to.be.greaterThan(0);
    const outside = seen.filter((l) => !/^(connect|lookup) (127\.0\.0\.1|localhost)(:\d+)?$/.test(l));
    expect(outside).to.deep.equal([]);
  });

  it('log and audit files are 0600 in 0700 directories; blob files get fileMode', async () => {
    const logDir = join(dir, 'mode-logs');
    const cfg = await writeConfig(join(dir, 'mode.config.json'), {
      meta: SQLITE_META,
      old: { type: 'fs', root: './old' },
      new: { type: 'fs', root: './new-mode', fileMode: '0640' },
    });
    const common = ['-c', cfg, '--log-dir', logDir];
    expect(
      (await runCli(['backfill', ...common, '--no-progress', '--run', 'modes'], { cwd: dir })).code,
    ).to.equal(0);
    expect((await runCli(['verify', ...common], { cwd: dir })).code).to.equal(0);
    const clean = await runCli(['cleanup-old', ...common, '--yes', '--dry-run'], { cwd: dir });
    expect(clean.code, clean.stderr).to.equal(0);
    expect((await stat(logDir)).mode & 0o777).to.equal(0o700);
    const logs = await allFiles(logDir);
    expect(logs.length).to.be.greaterThan(1);
    for (const f of logs) {
      const st = await stat(f);
      if (st.isDirectory()) expect(st.mode & 0o777, f).to.equal(0o700);
      else expect(st.mode & 0o777, f).to.equal(0o600);
    }
    const blobs = (await allFiles(join(dir, 'new-mode'))).filter((f) => !f.includes('.blobshift-'));
    let files = 0;
    for (const f of blobs) {
      const st = await stat(f);
      if (st.isFile()) {
        files++;
        expect(st.mode & 0o777, f).to.equal(0o640);
      }
    }
    expect(files).to.equal(20);
  });

  it('the filesystem backend never reads or writes outside its root (.., absolute, symlinks out)', async () => {
    const root = join(dir, 'jail');
    const outside = join(dir, 'outside');
    await mkdir(root, { recursive: true });
    await mkdir(outside, { recursive: true });
    await writeFile(join(outside, 'secret.txt'), 'outside');
    await symlink(outside, join(root, 'out'));
    await symlink(join(outside, 'secret.txt'), join(root, 'file-link'));
    const db = new FilesystemBlobDB({ root });
    const attempts: [string, () => Promise<unknown>][] = [
      ['put ../x', () => db.put('../x', 'x')],
      ['put /abs', () => db.put(join(outside, 'abs'), 'x')],
      ['put through a symlinked dir', () => db.put('out/new.txt', 'x')],
      ['get through a symlinked dir', () => db.get('out/secret.txt')],
      ['stat through a symlinked dir', () => db.stat('out/secret.txt')],
      ['delete through a symlinked dir', () => db.delete('out/secret.txt')],
      ['get a symlinked file', () => db.get('file-link')],
    ];
    for (const [what, fn] of attempts) {
      let failed = false;
      await fn().then(
        (v) => {
          if (v && typeof v === 'object' && 'destroy' in v) (v as { destroy(): void }).destroy();
        },
        () => {
          failed = true;
        },
      );
      expect(failed, what).to.equal(true);
    }
    expect((await readdir(outside)).sort()).to.deep.equal(['secret.txt']);
    expect(await readFile(join(outside, 'secret.txt'), 'utf8')).to.equal('outside');
    expect(existsSync(join(dir, 'x'))).to.equal(false);
    const listed: string[] = [];
    for await (const b of db.list()) listed.push(b.key);
    expect(listed.filter((k) => k.startsWith('out/'))).to.deep.equal([]);
  });
});

describe('reliability: filesystem errors', function () {
  this.timeout(120_000);

  it('a file where a directory of the new backend should be (ENOTDIR), a directory where the old blob should be: those blobs are logged (a clear error; "not found" for the directory), the rest are copied, exit 1', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'blobshift-fserr-'));
    try {
      const blobs = await seedSqliteOldFs(dir, 60);
      const newRoot = join(dir, 'new');
      // Blob 0's first directory is a file in new (ENOTDIR for every blob below it).
      const first = blobs[0]?.key as string;
      await mkdir(newRoot, { recursive: true });
      await writeFile(join(newRoot, first.split('/')[0] as string), 'in the way');
      // And in old: a directory where blob 2's file should be (EISDIR on read).
      const third = blobs[2]?.key as string;
      await rm(join(dir, 'old', third));
      await mkdir(join(dir, 'old', third));
      const victims = new Set([first, third]);
      const hitByFirst = blobs.filter((b) => b.key.split('/')[0] === first.split('/')[0]).map((b) => b.key);
      for (const k of hitByFirst) victims.add(k);
      const cfg = await writeConfig(join(dir, 'c.json'), {
        meta: SQLITE_META,
        old: { type: 'fs', root: './old' },
        new: { type: 'fs', root: './new' },
      });
      const r = await runCli(backfillArgs(cfg, join(dir, 'logs'), '--no-progress', '--json'), {
        cwd: dir,
      });
      expect(r.code, r.stderr).to.equal(1);
      const summary = JSON.parse(r.stdout) as {
        copied: number;
        failed: number;
        present: number;
        logs: string[];
      };
      const records = await readJsonLines(summary.logs);
      expect(records.map((x) => x.key).sort()).to.deep.equal([...victims].sort());
      for (const rec of records) {
        // A directory in old where the blob's file should be holds no blob: "not found", logged.
        if (rec.key === third) {
          expect(rec.error).to.equal('not found');
          continue;
        }
        expect(String(rec.error), String(rec.key)).to.match(
          /cannot (store|read)|director|not a|EISDIR|ENOTDIR/i,
        );
        expect(String(rec.error)).to.not.match(/\n/);
      }
      expect(summary.present, 'nothing counted present that is not there').to.equal(0);
      expect(summary.copied).to.equal(60 - victims.size);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
