/**
 * The scale-out backfill through the real CLI: a producer and workers as
 * child processes (`blobshift backfill --queue …`, `blobshift worker …`),
 * Redis, MariaDB metadata, files → s3rver. 2,000 blobs (not the issue's
 * 20,000) in the main test and 800 in the kill and interrupt tests keep the
 * suite short; small chunks keep many chunks in play. On PostgreSQL (the
 * second queue database, when both are set) the main test runs too: what
 * the database does for the others (the producer's checkpoints, the
 * workers' reads) is the same, and the in-process suite runs on both.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { expect } from 'chai';
import type { MetaDatabase } from '../support/databases.js';
import { announce, REDIS_URL, uniqueName } from '../support/env.js';
import { createBucket, deleteBucket, type S3rverHandle, startS3rver } from '../support/s3rver.js';
import { truncatedLeftovers } from '../support/s3rver-leftovers.js';
import {
  type Child,
  makeFixture,
  QUEUE_DATABASES,
  type QueueFixture,
  type Seeded,
  sha256Of,
  startCli,
  waitFor,
  workerReady,
} from './fixture.js';

const BLOBS = 2000;
const CHUNK = 100;
/** The kill and interrupt tests need many chunks, not many blobs. */
const SMALL = 800;
const SMALL_CHUNK = 50;

if (!REDIS_URL || QUEUE_DATABASES.length === 0) {
  announce(REDIS_URL ? 'BLOBSHIFT_TEST_MYSQL' : 'BLOBSHIFT_TEST_REDIS', 'scale-out queue (Redis + MariaDB)');
} else {
  const redisUrl = REDIS_URL;
  const MAIN = '1 producer + 3 workers';
  /** The child-process suite on one database; `all` false registers the main test only. */
  function childProcessSuite(this: Mocha.Suite, database: MetaDatabase, all: boolean): void {
    const it = (title: string, fn: Mocha.AsyncFunc) =>
      all || title.startsWith(MAIN) ? globalThis.it(title, fn) : undefined;
    this.timeout(90_000);
    let s3: S3rverHandle;
    let admin: S3Client;
    let fx: QueueFixture;
    let children: Child[] = [];
    before(async () => {
      s3 = await startS3rver();
      admin = s3.client();
    });
    after(async () => {
      admin.destroy();
      await s3.stop();
    });
    beforeEach(async () => {
      fx = await makeFixture(s3, admin, database);
      children = [];
    });
    afterEach(async () => {
      for (const c of children)
        if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
      await Promise.all(children.map((c) => c.exited));
      await fx.dispose();
    });

    const queueArgs = () => ['--queue', redisUrl, '--queue-name', fx.queueName];
    const worker = (env: NodeJS.ProcessEnv = {}, config = fx.configFile) => {
      const c = startCli(['worker', '-c', config, ...queueArgs(), '--concurrency', '4'], env);
      children.push(c);
      return c;
    };
    const producer = (extra: string[] = []) => {
      const c = startCli([
        'backfill',
        '-c',
        fx.configFile,
        ...queueArgs(),
        '--chunk-size',
        String(CHUNK),
        '--log-dir',
        fx.logDir,
        '--no-progress',
        '--json',
        ...extra,
      ]);
      children.push(c);
      return c;
    };
    const stopAll = async (list: Child[]) => {
      for (const c of list) c.proc.kill('SIGTERM');
      return Promise.all(list.map((c) => c.exited));
    };
    const expectAllCopied = async (seeded: Seeded[]) => {
      for (let i = 0; i < seeded.length; i += 32) {
        await Promise.all(
          seeded.slice(i, i + 32).map(async (s) => {
            expect(await sha256Of(await fx.newDb.get(s.key)), s.key).to.equal(s.sha256);
          }),
        );
      }
    };
    const summaryOf = (c: Child) => JSON.parse(c.stdout) as Record<string, unknown>;

    it(`${MAIN} copy ${BLOBS} blobs exactly once each, byte-identical`, async () => {
      const seeded = await fx.seed(BLOBS);
      const workers = [worker(), worker(), worker()];
      await Promise.all(workers.map(workerReady));
      const p = producer();
      expect(await p.exited, p.stderr).to.equal(0);
      expect(summaryOf(p)).to.include({
        status: 'completed',
        exitCode: 0,
        total: BLOBS,
        copied: BLOBS,
        failed: 0,
      });
      // Every worker took a share.
      await stopAll(workers);
      for (const w of workers) expect(w.stdout).to.match(/chunks: +[1-9]/);
      for (const s of seeded) expect(fx.count('PUT', s.key), s.key).to.equal(1);
      expect(fx.count('PUT')).to.equal(BLOBS);
      await expectAllCopied(seeded);
    });

    it('a worker SIGKILLed mid-chunk: its chunks go to the others, nothing lost, puts ≤ blobs + 2 × chunk', async () => {
      const seeded = await fx.seed(SMALL);
      // Short locks so the stall is seen within seconds.
      const env = { BLOBSHIFT_WORKER_LOCK_MS: '2000', BLOBSHIFT_WORKER_STALL_CHECK_MS: '1000' };
      const workers = [worker(env), worker(env), worker(env)];
      await Promise.all(workers.map(workerReady));
      const p = producer(['--chunk-size', String(SMALL_CHUNK)]);
      const victim = workers[0]!;
      await waitFor('the victim to be copying', () => victim.stderr.includes('chunk done'), 60_000);
      victim.proc.kill('SIGKILL');
      expect(await victim.exited).to.equal('SIGKILL');
      const code = await p.exited;
      // 0; or 1 when the kill cut a PUT short and s3rver kept the part it got
      // (logged as a size mismatch in new, never counted present, never overwritten).
      expect(code, p.stderr).to.be.oneOf([0, 1]);
      const summary = summaryOf(p);
      const leftovers = await truncatedLeftovers(summary.logs as string[], fx.oldDb, fx.newDb);
      expect(summary).to.include({ status: 'completed', total: SMALL, notFound: 0, failed: leftovers.size });
      expect(code).to.equal(leftovers.size > 0 ? 1 : 0);
      await stopAll(workers.slice(1));
      expect(fx.count('PUT'))
        .to.be.at.least(SMALL)
        .and.at.most(SMALL + 2 * SMALL_CHUNK);
      await expectAllCopied(seeded.filter((s) => !leftovers.has(s.key)));
    });

    it('producer interrupted and restarted: finished chunks are not redone', async () => {
      const seeded = await fx.seed(SMALL);
      const w = worker();
      await workerReady(w);
      const first = producer(['--chunk-size', String(SMALL_CHUNK)]);
      let mark = 0;
      await waitFor(
        'a checkpoint past a few chunks',
        async () => {
          mark = (await fx.meta.getRun('default', ''))?.lowWaterMark ?? 0;
          return mark >= 3 * SMALL_CHUNK;
        },
        60_000,
      );
      first.proc.kill('SIGINT');
      expect(await first.exited, first.stderr).to.equal(130);
      expect(summaryOf(first)).to.include({ status: 'interrupted', exitCode: 130 });
      const state = await fx.meta.getRun('default', '');
      expect(state?.status).to.equal('interrupted');
      const markAfter = state?.lowWaterMark ?? 0;
      const finishedBefore = seeded.filter((_s, i) => i + 1 <= markAfter).map((s) => s.key);
      expect(finishedBefore.length).to.be.at.least(3 * SMALL_CHUNK);
      // Forget what phase one asked of the server; phase two must not touch finished keys.
      fx.requests.clear();
      const second = producer(['--chunk-size', String(SMALL_CHUNK)]);
      expect(await second.exited, second.stderr).to.equal(0);
      const summary = summaryOf(second);
      expect(summary).to.include({ status: 'completed', exitCode: 0, total: SMALL, failed: 0, attempts: 2 });
      expect(summary.copied).to.equal(SMALL);
      for (const key of finishedBefore) {
        expect(fx.count('PUT', key), key).to.equal(0);
        expect(fx.count('HEAD', key), key).to.equal(0);
      }
      await stopAll([w]);
      await expectAllCopied(seeded);
    });

    it('a worker with another config refuses the job and exits 2; the chunk is reported, producer exit 1', async () => {
      await fx.seed(300);
      const otherBucket = await createBucket(admin, uniqueName('other'));
      try {
        const wrong = worker({}, await fx.otherConfig(otherBucket));
        await workerReady(wrong);
        const p = producer();
        expect(await wrong.exited, wrong.stderr).to.equal(2);
        expect(wrong.stdout).to.match(/refused a job of another migration/);
        expect(wrong.stderr).to.include(otherBucket).and.include('same config as the producer');
        const good = worker();
        expect(await p.exited, p.stderr).to.equal(1);
        const summary = summaryOf(p);
        expect(summary).to.include({ status: 'completed', exitCode: 1, total: 300 });
        // The wrong worker held at most its two jobs: those chunks failed, the rest was copied.
        expect(summary.failed).to.be.oneOf([CHUNK, 2 * CHUNK]);
        expect(summary.copied).to.equal(300 - (summary.failed as number));
        expect(p.stderr).to.match(/refused by worker/);
        await stopAll([good]);
        const leftInOther = await admin.send(
          new (await import('@aws-sdk/client-s3')).ListObjectsV2Command({ Bucket: otherBucket }),
        );
        expect(leftInOther.KeyCount ?? 0).to.equal(0);
      } finally {
        await deleteBucket(admin, otherBucket);
      }
    });

    it('--queue with a SQLite metadata file is refused, exit 2', async () => {
      const { writeFile } = await import('node:fs/promises');
      const { join } = await import('node:path');
      const dbFile = join(fx.dir, 'meta.sqlite');
      const { MetaDB } = await import('../../lib/meta/index.js');
      await (await MetaDB.open({ client: 'better-sqlite3', connection: { filename: dbFile } })).close();
      const cfg = join(fx.dir, 'sqlite.json');
      await writeFile(
        cfg,
        JSON.stringify({
          meta: { client: 'better-sqlite3', connection: { filename: dbFile } },
          old: { type: 'fs', root: join(fx.dir, 'old') },
          new: { type: 'fs', root: join(fx.dir, 'new') },
        }),
      );
      const c = startCli(['backfill', '-c', cfg, '--queue', 'redis://:pa55-w0rd-q@127.0.0.1:6379']);
      children.push(c);
      expect(await c.exited).to.equal(2);
      expect(c.stderr).to.match(/SQLite file cannot be shared/);
      expect(c.stderr + c.stdout).not.to.include('pa55-w0rd-q');
    });
  }
  for (const [i, database] of QUEUE_DATABASES.entries()) {
    const on = i === 0 ? '' : ` (${database.name})`;
    describe(`queue: producer and workers as child processes${on}`, function () {
      childProcessSuite.call(this, database, i === 0);
    });
  }
}
