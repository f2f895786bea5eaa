/**
 * `blobshift backfill --processes N`: N child processes on disjoint shards of
 * one run, one progress display and summary, the usual checkpoints and logs,
 * signals passed on, the worst child's exit code.
 */
import { mkdtemp, readdir, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { expect } from 'chai';
import { backfillChildArgs, childShard, combineSummaries, worstExitCode } from '../lib/cli/processes.js';
import type { BackfillSummary } from '../lib/engine/backfill.js';
import { VERIFY_RUN } from '../lib/engine/ledger.js';
import { MetaDB } from '../lib/meta/index.js';
import {
  bucketShas,
  fileSha,
  listBucket,
  readJsonLines,
  runCli,
  type SeededBlob,
  seedOldFs,
  startCli,
  writeConfig,
} from './support/cli.js';
import {
  createBucket,
  deleteBucket,
  S3RVER_CREDENTIALS,
  type S3rverHandle,
  startS3rver,
} from './support/s3rver.js';

describe('backfill --processes (one host, every core)', function () {
  this.timeout(120_000);

  describe('pieces', () => {
    it('child shards are disjoint and cover exactly the run (or the user’s --shard)', () => {
      for (const outer of [undefined, { index: 1, count: 3 }]) {
        const count = 4;
        const owner = new Map<number, number>();
        for (let id = 1; id <= 600; id++) {
          for (let k = 0; k < count; k++) {
            const s = childShard(k, count, outer);
            if (id % s.count === s.index) {
              expect(owner.has(id), `id ${id} in two shards`).to.equal(false);
              owner.set(id, k);
            }
          }
          const wanted = outer === undefined || id % outer.count === outer.index;
          expect(owner.has(id), `id ${id}`).to.equal(wanted);
        }
      }
    });

    it('the exit code is the worst child’s: 2, then 3, then 130, then 1, then 0', () => {
      expect(worstExitCode([0, 0])).to.equal(0);
      expect(worstExitCode([0, 1])).to.equal(1);
      expect(worstExitCode([1, 130, 0])).to.equal(130);
      expect(worstExitCode([130, 3, 1])).to.equal(3);
      expect(worstExitCode([3, 2, 130])).to.equal(2);
      expect(worstExitCode([0, 7])).to.equal(1);
    });

    it('children get the same flags, their shard, and report in JSON', () => {
      const args = backfillChildArgs(
        {
          config: 'c.json',
          run: 'r1',
          logDir: 'logs',
          chunkSize: 500,
          concurrency: 8,
          types: ['a', 'b'],
          existence: 'list',
          logFormat: 'text',
          reset: true,
          processes: 2,
          progress: true,
        },
        { index: 1, count: 2 },
      );
      expect(args).to.deep.equal([
        'backfill',
        '--config',
        'c.json',
        '--run',
        'r1',
        '--log-dir',
        'logs',
        '--chunk-size',
        '500',
        '--concurrency',
        '8',
        '--types',
        'a,b',
        '--existence',
        'list',
        '--log-format',
        'text',
        '--reset',
        '--shard',
        '1/2',
        '--json',
        '--no-progress',
      ]);
    });

    it('one summary: counts summed, logs of every shard, the worst status and code', () => {
      const part = (over: Partial<BackfillSummary>): BackfillSummary => ({
        mode: 'backfill',
        replaced: 0,
        run: 'r',
        shard: '0/2',
        status: 'completed',
        exitCode: 0,
        total: 10,
        copied: 8,
        present: 2,
        notFound: 0,
        failed: 0,
        deletedDuringMigration: 0,
        expired: 0,
        bytes: 100,
        retries: 1,
        seconds: 2,
        rate: 5,
        logs: [],
        attempts: 1,
        lowWaterMark: 40,
        reprinted: false,
        ...over,
      });
      const s = combineSummaries(
        [
          part({}),
          part({
            shard: '1/2',
            status: 'interrupted',
            exitCode: 130,
            notFound: 1,
            copied: 7,
            logs: ['l1'],
            seconds: 4,
            lowWaterMark: 30,
          }),
        ],
        '',
      );
      expect(s).to.include({
        status: 'interrupted',
        exitCode: 130,
        total: 20,
        copied: 15,
        present: 4,
        notFound: 1,
        bytes: 200,
        retries: 2,
        seconds: 4,
        lowWaterMark: 30,
        reprinted: false,
      });
      expect(s.logs).to.deep.equal(['l1']);
    });
  });

  describe('through the CLI (files → s3rver)', () => {
    let s3: S3rverHandle;
    let admin: S3Client;
    let dir: string;
    let bucket: string;
    let blobs: SeededBlob[];
    before(async () => {
      s3 = await startS3rver();
      admin = s3.client();
    });
    after(async () => {
      admin.destroy();
      await s3.stop();
    });
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'blobshift-processes-'));
      bucket = await createBucket(admin);
      const meta = await MetaDB.open({
        client: 'better-sqlite3',
        connection: { filename: join(dir, 'meta.sqlite') },
      });
      try {
        blobs = await seedOldFs(meta, join(dir, 'old'), 120);
      } finally {
        await meta.close();
      }
      await writeConfig(join(dir, 'blobshift.config.json'), {
        meta: { client: 'better-sqlite3', connection: { filename: './meta.sqlite' } },
        old: { type: 'fs', root: './old' },
        new: {
          type: 's3',
          bucket,
          endpoint: s3.endpoint,
          region: 'us-east-1',
          forcePathStyle: true,
          credentials: { ...S3RVER_CREDENTIALS },
          requestChecksumCalculation: 'WHEN_REQUIRED',
          responseChecksumValidation: 'WHEN_REQUIRED',
        },
      });
    });
    afterEach(async () => {
      await deleteBucket(admin, bucket).catch(() => {});
      await rm(dir, { recursive: true, force: true });
    });

    const backfill = (extra: string[]) =>
      runCli(
        ['backfill', '-c', 'blobshift.config.json', '--log-dir', 'logs', '--concurrency', '8', ...extra],
        {
          cwd: dir,
        },
      );

    it('copies every blob once over 2 processes, one summary, a log per shard, exit 1 for the missing; a rerun reprints', async () => {
      const missing = [blobs[3], blobs[60]].map((b) => b?.key as string);
      for (const key of missing) await unlink(join(dir, 'old', key));
      const r = await backfill(['--processes', '2', '--json']);
      expect(r.code, r.stderr).to.equal(1);
      const summary = JSON.parse(r.stdout) as {
        copied: number;
        notFound: number;
        total: number;
        exitCode: number;
        logs: string[];
        processes: { shard: string; copied: number }[];
      };
      expect(summary).to.include({ copied: 118, notFound: 2, total: 120, exitCode: 1 });
      expect(summary.processes.map((p) => p.shard).sort()).to.deep.equal(['0/2', '1/2']);
      expect(summary.processes.every((p) => p.copied > 40)).to.equal(true);
      // Each shard writes its own missing-blob log, named as a --shard run's.
      const logs = (await readdir(join(dir, 'logs'))).sort();
      expect(logs).to.have.length(2);
      expect(logs.every((l) => /^backfill-default-\d{8}T\d{6}Z-shard-[01]-of-2\.jsonl$/.test(l))).to.equal(
        true,
      );
      const records = await readJsonLines(summary.logs.map((l) => join(dir, l)));
      expect(records.map((x) => x.key).sort()).to.deep.equal([...missing].sort());
      const listed = await listBucket(admin, bucket);
      expect(listed.size).to.equal(118);
      const shas = await bucketShas(admin, bucket, [...listed.keys()]);
      for (const b of blobs) if (!missing.includes(b.key)) expect(shas.get(b.key), b.key).to.equal(b.sha256);
      // The same command again: every shard's run is complete, its summary reprinted.
      const again = await backfill(['--processes', '2']);
      expect(again.code, again.stderr).to.equal(1);
      expect(again.stdout).to.include('completed earlier');
      expect(again.stdout).to.match(/copied: +118/);
      expect(again.stdout).to.include('processes:                2 (shards 0/2, 1/2)');
    });

    it('SIGINT reaches every process once: exit 130, checkpoints saved; the same command resumes and finishes', async () => {
      const running = startCli(
        [
          'backfill',
          '-c',
          'blobshift.config.json',
          '--log-dir',
          'logs',
          '--concurrency',
          '2',
          '--max-rate',
          '20',
          '--processes',
          '2',
          '--json',
        ],
        { cwd: dir },
      );
      // Let both children start copying: blobs of both shards (ids 1, 2, … in seeding order) in the bucket.
      const shardOf = new Map(blobs.map((b, i) => [b.key, (i + 1) % 2]));
      const deadline = Date.now() + 60_000;
      for (;;) {
        const listed = [...(await listBucket(admin, bucket)).keys()];
        const shards = new Set(listed.map((k) => shardOf.get(k)));
        if ((listed.length >= 20 && shards.size === 2) || Date.now() > deadline) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      running.child.kill('SIGINT');
      const r = await running.done;
      expect(r.code, r.stderr).to.equal(130);
      const first = JSON.parse(r.stdout) as {
        copied: number;
        status: string;
        processes: { status: string }[];
      };
      expect(first.status).to.equal('interrupted');
      expect(first.processes.map((p) => p.status)).to.deep.equal(['interrupted', 'interrupted']);
      expect(r.stderr).to.include('SIGINT: passing it on to 2 backfill processes');
      expect(r.stderr, 'one signal each: no second one').to.not.include('SIGINT again');
      expect(first.copied).to.be.lessThan(120);
      const resumed = await backfill(['--processes', '2', '--json']);
      expect(resumed.code, resumed.stderr).to.equal(0);
      const second = JSON.parse(resumed.stdout) as { copied: number; present: number };
      expect(second.copied + second.present).to.be.at.least(120 - first.copied);
      const listed = await listBucket(admin, bucket);
      expect(listed.size).to.equal(120);
      for (const b of blobs.slice(0, 20)) expect(listed.get(b.key), b.key).to.equal(b.size);
    });

    it('a killed parent leaves no process copying: each stops as on SIGTERM and saves its checkpoint', async () => {
      const running = startCli(
        [
          'backfill',
          '-c',
          'blobshift.config.json',
          '--log-dir',
          'logs',
          '--concurrency',
          '2',
          '--max-rate',
          '20',
          '--processes',
          '2',
        ],
        { cwd: dir },
      );
      const shardOf = new Map(blobs.map((b, i) => [b.key, (i + 1) % 2]));
      const deadline = Date.now() + 60_000;
      for (;;) {
        // Blobs of both shards, so both processes are copying (a preflight's write probe is neither).
        const shards = new Set(
          [...(await listBucket(admin, bucket)).keys()].flatMap((k) => shardOf.get(k) ?? []),
        );
        if (shards.size === 2 || Date.now() > deadline) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      running.child.kill('SIGKILL');
      await running.done;
      // Both shards' rows leave "running" (the children saved their checkpoints and ended).
      let states: string[] = [];
      for (const until = Date.now() + 30_000; Date.now() < until; ) {
        const st = await runCli(['status', '-c', 'blobshift.config.json', '--json'], { cwd: dir });
        const parsed = JSON.parse(st.stdout) as
          | { runs?: { shard: string; state: string }[] }
          | { shard: string; state: string }[];
        const runs = Array.isArray(parsed) ? parsed : (parsed.runs ?? []);
        states = runs.map((x) => `${x.shard} ${x.state}`).sort();
        if (states.length === 2 && states.every((x) => x.endsWith('interrupted'))) break;
        await new Promise((r) => setTimeout(r, 300));
      }
      expect(states).to.deep.equal(['0/2 interrupted', '1/2 interrupted']);
      // Nothing is copied any more.
      const settled = (await listBucket(admin, bucket)).size;
      await new Promise((r) => setTimeout(r, 1000));
      expect((await listBucket(admin, bucket)).size).to.equal(settled);
      expect(settled).to.be.lessThan(120);
    });

    it('verify --checksum --processes 2 gives the one-process verdict and counts, key files per process', async () => {
      expect((await backfill(['--json'])).code).to.equal(0);
      // One blob gone from new, one with other bytes of the same size, one orphan.
      const gone = blobs[10] as SeededBlob;
      const changed = blobs[11] as SeededBlob;
      await admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: gone.key }));
      await admin.send(
        new PutObjectCommand({ Bucket: bucket, Key: changed.key, Body: Buffer.alloc(changed.size, 7) }),
      );
      await admin.send(new PutObjectCommand({ Bucket: bucket, Key: 'orphan/x', Body: Buffer.from('o') }));
      const verify = (extra: string[]) =>
        runCli(['verify', '-c', 'blobshift.config.json', '--log-dir', 'vlogs', '--checksum', ...extra], {
          cwd: dir,
        });
      const one = await verify(['--json']);
      const two = await verify(['--json', '--processes', '2']);
      expect(one.code, one.stderr).to.equal(1);
      expect(two.code, two.stderr).to.equal(1);
      const a = JSON.parse(one.stdout) as Record<string, unknown>;
      const b = JSON.parse(two.stdout) as Record<string, unknown> & {
        files: Record<string, string>;
        orphans: { count: number };
      };
      for (const field of [
        'verdict',
        'rows',
        'checked',
        'ok',
        'okBytes',
        'missing',
        'checksumMismatches',
        'hashed',
      ]) {
        expect(b[field], field).to.deep.equal(a[field]);
      }
      expect(b.orphans.count).to.equal(1);
      expect(b.processes).to.equal(2);
      expect(b.missing).to.equal(1);
      expect(b.checksumMismatches).to.equal(1);
      expect(b.files.missing).to.match(/verify-process-[01]-of-2/);
      const text = await verify(['--processes', '2']);
      expect(text.code).to.equal(1);
      expect(text.stdout).to.include('NOT SAFE: 1 missing, 0 size mismatches, 1 checksum mismatches');
      expect(text.stdout).to.include(gone.key);
      // The parent records the combined verdict, never a child's share of it; cleanup-old reads it.
      const meta = await MetaDB.open({
        client: 'better-sqlite3',
        connection: { filename: join(dir, 'meta.sqlite') },
      });
      try {
        const verifies = (await meta.listRuns()).filter((r) => r.name === VERIFY_RUN);
        expect(verifies).to.have.length(1);
        expect(verifies[0]).to.include({ status: 'completed', exitCode: 1 });
        expect(String(verifies[0]?.extra.verdict)).to.match(
          /^NOT SAFE: 1 missing, 0 size mismatches, 1 checksum/,
        );
        expect(verifies[0]?.extra.rows).to.equal(a.rows);
      } finally {
        await meta.close();
      }
      const cleanup = await runCli(
        ['cleanup-old', '-c', 'blobshift.config.json', '--log-dir', 'vlogs', '--yes'],
        {
          cwd: dir,
        },
      );
      expect(cleanup.code).to.equal(2);
      expect(cleanup.stderr).to.match(/said NOT SAFE/);
    });

    it('check-blob-logs --migrate --processes 2 classifies every record once and copies the stragglers', async () => {
      const lost = [blobs[4], blobs[5], blobs[6], blobs[7]] as SeededBlob[];
      const kept = new Map<string, Buffer>();
      for (const b of lost) {
        kept.set(b.key, await readFile(join(dir, 'old', b.key)));
        await unlink(join(dir, 'old', b.key));
      }
      const r = await backfill(['--processes', '2', '--json']);
      expect(r.code, r.stderr).to.equal(1);
      const logs = (JSON.parse(r.stdout) as { logs: string[] }).logs;
      // Two come back in old; one row is deleted by the app; one stays lost.
      for (const b of lost.slice(0, 2)) await writeFile(join(dir, 'old', b.key), kept.get(b.key) as Buffer);
      const meta = await MetaDB.open({
        client: 'better-sqlite3',
        connection: { filename: join(dir, 'meta.sqlite') },
      });
      await meta.delete((lost[2] as SeededBlob).key);
      await meta.close();
      const check = (extra: string[]) =>
        runCli(['check-blob-logs', '-c', 'blobshift.config.json', '--log-dir', 'logs', ...extra, ...logs], {
          cwd: dir,
        });
      const migrated = await check(['--migrate', '--processes', '2', '--json']);
      expect(migrated.code, migrated.stderr).to.equal(1);
      const report = JSON.parse(migrated.stdout) as {
        records: number;
        totals: Record<string, number>;
        notFound: { key: string }[];
        processes: number;
      };
      expect(report.processes).to.equal(2);
      expect(report.records).to.equal(4);
      expect(report.totals).to.include({
        checked: 4,
        foundInOld: 2,
        migrated: 2,
        notReferenced: 1,
        notFound: 1,
      });
      expect(report.notFound.map((x) => x.key)).to.deep.equal([(lost[3] as SeededBlob).key]);
      const listed = await listBucket(admin, bucket);
      for (const b of lost.slice(0, 2)) expect(listed.get(b.key), b.key).to.equal(b.size);
      const again = await check(['--processes', '2']);
      expect(again.code).to.equal(1);
      expect(again.stdout).to.match(
        /attachment: checked 4 records\n {2}Found in new db: 2\n {2}Found in old db: 0\n {2}Not referenced: 1\n {2}Not found: 1/,
      );
    });

    it('refuses --processes with --queue (exit 2) and takes --processes 1 as an ordinary run', async () => {
      const refused = await backfill(['--processes', '2', '--queue', 'redis://127.0.0.1:1']);
      expect(refused.code).to.equal(2);
      expect(refused.stderr).to.match(/--processes and --queue/);
      const bad = await backfill(['--processes', '0']);
      expect(bad.code).to.equal(2);
      const one = await backfill(['--processes', '1', '--json']);
      expect(one.code, one.stderr).to.equal(0);
      expect(JSON.parse(one.stdout)).to.include({ copied: 120, shard: null });
      expect(await fileSha(join(dir, 'old', blobs[0]?.key as string))).to.equal(blobs[0]?.sha256);
    });
  });
});
