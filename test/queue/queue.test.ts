import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { expect } from 'chai';
import PQueue from 'p-queue';
import { MemoryBlobDB } from '../../lib/backends/memory/index.js';
import { ConfigError } from '../../lib/contract/errors.js';
import type { BackfillSummary } from '../../lib/engine/backfill.js';
import { ReferenceChecker } from '../../lib/engine/copy.js';
import { MetaDB } from '../../lib/meta/index.js';
import {
  type ChunkJobData,
  type ChunkJobResult,
  chunkJobId,
  describeQueue,
  JOB_VERSION,
  type MigrationNames,
  migrationId,
  redisConnection,
} from '../../lib/queue/jobs.js';
import { addRange, advanceMark, queuedBackfill } from '../../lib/queue/producer.js';
import { processChunk, runWorker, type WorkerSummary } from '../../lib/queue/worker.js';
import { announceDatabases, type MetaDatabase } from '../support/databases.js';
import { announce, REDIS_URL } from '../support/env.js';
import { type S3rverHandle, startS3rver } from '../support/s3rver.js';
import { connectionRefused, WrappedBlobDB } from '../support/wrap.js';
import { makeFixture, QUEUE_DATABASES, type QueueFixture, sha256Of } from './fixture.js';

const NAMES: MigrationNames = {
  meta: 'MySQL db:3306/app (table blob_meta)',
  old: 'fs:/srv/blobs',
  new: 's3://b/ at x',
};

function pickCounts(s: BackfillSummary) {
  const { status, exitCode, total, copied, present, expired, failed, notFound, deletedDuringMigration } = s;
  return { status, exitCode, total, copied, present, expired, failed, notFound, deletedDuringMigration };
}

describe('queue: job ids, migration ids, ranges', () => {
  it('the same chunk always gets the same job id; another range, run or epoch another one', () => {
    const parts = {
      migrationId: migrationId(NAMES),
      run: 'default',
      shard: '',
      epoch: 'e1',
      after: 0,
      upTo: 1000,
    };
    expect(chunkJobId(parts)).to.equal(chunkJobId({ ...parts }));
    expect(chunkJobId(parts)).not.to.include(':');
    expect(chunkJobId({ ...parts, upTo: 999 })).not.to.equal(chunkJobId(parts));
    expect(chunkJobId({ ...parts, run: 'other' })).not.to.equal(chunkJobId(parts));
    expect(chunkJobId({ ...parts, epoch: 'e2' })).not.to.equal(chunkJobId(parts));
    expect(chunkJobId({ ...parts, shard: '1/3' })).to.include('.1of3.');
  });

  it('the migration id changes with the database, the old or the new backend', () => {
    const id = migrationId(NAMES);
    expect(migrationId({ ...NAMES })).to.equal(id);
    expect(migrationId({ ...NAMES, meta: 'MySQL db:3306/app (table other)' })).not.to.equal(id);
    expect(migrationId({ ...NAMES, old: 'fs:/srv/other' })).not.to.equal(id);
    expect(migrationId({ ...NAMES, new: 's3://c/ at x' })).not.to.equal(id);
  });

  it('reads a Redis URL into connection settings and never prints its password', () => {
    const url = 'redis://user:s3cr%40t-pw@redis.internal:6380/4';
    expect(redisConnection(url, { blocking: true })).to.include({
      host: 'redis.internal',
      port: 6380,
      db: 4,
      username: 'user',
      password: 's3cr@t-pw',
      maxRetriesPerRequest: null,
    });
    expect(redisConnection('redis://h', { blocking: false })).to.include({
      port: 6379,
      db: 0,
      maxRetriesPerRequest: 3,
    });
    expect(redisConnection('rediss://h', { blocking: true }).tls).to.deep.equal({});
    const shown = describeQueue(url, 'q');
    expect(shown).to.equal('redis://redis.internal:6380/4 queue q');
    expect(shown).not.to.include('s3cr');
  });

  it('the low-water mark moves over the contiguous prefix of finished chunks only', () => {
    const ranges: [number, number][] = [];
    addRange(ranges, 200, 300);
    addRange(ranges, 100, 200);
    expect(advanceMark(ranges, 0)).to.equal(0);
    expect(ranges).to.deep.equal([[100, 300]]);
    addRange(ranges, 0, 100);
    expect(advanceMark(ranges, 0)).to.equal(300);
    expect(ranges).to.deep.equal([]);
    addRange(ranges, 400, 500);
    expect(advanceMark(ranges, 300)).to.equal(300);
    expect(ranges).to.deep.equal([[400, 500]]);
  });
});

describe('queue: processChunk (one chunk through the copy path)', () => {
  it('copies, finds present ones, logs missing and size mismatches, never overwrites', async () => {
    const oldDb = new MemoryBlobDB();
    const newDb = new MemoryBlobDB();
    const referenced = new Set(['a', 'b', 'c', 'd', 'e']);
    await oldDb.put('a', 'aaaa');
    await oldDb.put('b', 'bbbb');
    await newDb.put('b', 'bbbb');
    await oldDb.put('c', 'cc'); // the metadata says 4 bytes
    await newDb.put('e', 'eeeeee'); // in new with another size; check first
    const rows = ['a', 'b', 'c', 'd', 'e'].map((key, i) => ({
      id: i + 1,
      key,
      contentLength: 4,
      contentType: null,
      type: 't',
      parentId: 'p',
      ...(key === 'e' ? { check: true as const } : {}),
    }));
    const run = await processChunk(
      {
        oldDb,
        newDb,
        references: new ReferenceChecker({
          referenced: async (keys) => new Set(keys.filter((k) => referenced.has(k))),
        }),
        copies: new PQueue({ concurrency: 2 }),
        retry: { attempts: 1, baseDelayMs: 1, maxDelayMs: 1 },
      },
      rows,
    );
    expect(run.counts).to.include({ total: 5, copied: 1, present: 1, notFound: 1, failed: 2, bytes: 4 });
    expect(run.infrastructure).to.equal(undefined);
    expect(run.missing.map((m) => [m.key, m.error.split(':')[0]])).to.deep.equal([
      ['c', 'size mismatch'],
      ['d', 'not found'],
      ['e', 'size mismatch in the new backend'],
    ]);
    expect(await newDb.size('e')).to.equal(6);
  });
});

if (!REDIS_URL || QUEUE_DATABASES.length === 0) {
  announce(REDIS_URL ? 'BLOBSHIFT_TEST_MYSQL' : 'BLOBSHIFT_TEST_REDIS', 'scale-out queue (Redis + MariaDB)');
} else {
  const redisUrl = REDIS_URL;
  /** The in-process suite on one metadata database (registered for each below). */
  function inProcessSuite(this: Mocha.Suite, database: MetaDatabase): void {
    this.timeout(60_000);
    let s3: S3rverHandle;
    let admin: S3Client;
    let fx: QueueFixture;
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
    });
    afterEach(async () => {
      await fx.dispose();
    });

    const names = (): MigrationNames => ({
      meta: `MySQL (table ${fx.table})`,
      old: 'fs:old',
      new: `s3://${fx.bucket}/`,
    });

    function startWorker(extra: Partial<Parameters<typeof runWorker>[0]> = {}): {
      stop: AbortController;
      done: Promise<WorkerSummary>;
    } {
      const stop = new AbortController();
      const done = runWorker({
        queueUrl: redisUrl,
        queueName: fx.queueName,
        meta: fx.meta,
        oldDb: fx.oldDb,
        newDb: fx.newDb,
        migration: names(),
        concurrency: 4,
        signal: stop.signal,
        ...extra,
      });
      return { stop, done };
    }

    it('copies every blob once, settles expired and present rows itself, logs a key that always fails, exit 1', async () => {
      const seeded = await fx.seed(300);
      // One row whose size disagrees with the old file: fails on every attempt.
      const bad = seeded[123]!;
      await fx.meta.upsert({ key: bad.key, parentId: 'p', type: 'attachment', contentLength: bad.size + 1 });
      // One row already expired, one blob already in new.
      const expired = seeded[7]!;
      await fx.meta.upsert({
        key: expired.key,
        parentId: 'p',
        type: 'attachment',
        contentLength: expired.size,
        expiresOn: new Date(Date.now() - 60_000),
      });
      const present = seeded[250]!;
      await fx.newDb.put(present.key, await fx.oldDb.get(present.key), { size: present.size });
      const w1 = startWorker();
      const w2 = startWorker();
      const progress: number[] = [];
      const summary = await queuedBackfill({
        meta: fx.meta,
        newDb: fx.newDb,
        queueUrl: redisUrl,
        queueName: fx.queueName,
        migration: names(),
        chunkSize: 50,
        logDir: fx.logDir,
        onProgress: (p) => progress.push(p.done),
      });
      w1.stop.abort();
      w2.stop.abort();
      const [s1, s2] = await Promise.all([w1.done, w2.done]);
      expect(pickCounts(summary)).to.deep.equal({
        status: 'completed',
        exitCode: 1,
        total: 300,
        copied: 297,
        present: 1,
        expired: 1,
        failed: 1,
        notFound: 0,
        deletedDuringMigration: 0,
      });
      expect(s1.counts.total + s2.counts.total).to.equal(298); // expired and present never left the producer
      expect(progress.at(-1)).to.equal(300);
      const lines = (await readFile(summary.logs[0]!, 'utf8')).trim().split('\n');
      expect(lines).to.have.length(1);
      expect(JSON.parse(lines[0]!)).to.include({ key: bad.key, type: 'attachment' });
      expect(JSON.parse(lines[0]!).error).to.match(/size mismatch/);
      for (const s of seeded) {
        if (s === bad || s === expired) continue;
        if (s !== present) expect(fx.count('PUT', s.key), s.key).to.equal(1);
      }
      expect(fx.count('PUT', present.key)).to.equal(1); // the test's own put only
      expect(await sha256Of(await fx.newDb.get(seeded[42]!.key))).to.equal(seeded[42]!.sha256);
      const state = await fx.meta.getRun('default', '');
      expect(state?.status).to.equal('completed');
      expect(state?.lowWaterMark).to.equal(await fx.meta.maxId());
      expect((state?.extra.queue as { completed?: unknown[] } | undefined)?.completed).to.deep.equal([]);
      // A completed run reprints its summary.
      const again = await queuedBackfill({
        meta: fx.meta,
        newDb: fx.newDb,
        queueUrl: redisUrl,
        queueName: fx.queueName,
        migration: names(),
        logDir: fx.logDir,
      });
      expect(again).to.include({ reprinted: true, exitCode: 1, copied: 297 });
    });

    it('a worker with another config refuses the job and stops; the chunk is reported, exit 1', async () => {
      await fx.seed(120);
      const wrong = startWorker({ migration: { ...names(), new: 's3://another-bucket/' }, jobsAtOnce: 1 });
      const producing = queuedBackfill({
        meta: fx.meta,
        newDb: fx.newDb,
        queueUrl: redisUrl,
        queueName: fx.queueName,
        migration: names(),
        chunkSize: 40,
        logDir: fx.logDir,
      });
      const refused = await wrong.done;
      expect(refused.status).to.equal('refused');
      expect(refused.reason)
        .to.match(/another-bucket/)
        .and.match(/same config as the producer/);
      expect(refused.chunks).to.equal(0);
      const good = startWorker();
      const summary = await producing;
      good.stop.abort();
      await good.done;
      expect(summary).to.include({ status: 'completed', exitCode: 1, total: 120, copied: 80, failed: 40 });
      const records = (await readFile(summary.logs[0]!, 'utf8'))
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { error: string });
      expect(records).to.have.length(40);
      expect(records[0]!.error).to.match(/^chunk failed: refused by worker/);
      expect(fx.count('PUT')).to.equal(80);
    });

    it('a chunk that keeps failing on the infrastructure ends in the failed set and is reported, exit 1', async () => {
      await fx.seed(30);
      const broken = new WrappedBlobDB(fx.newDb, {
        before(method) {
          if (method === 'put') throw connectionRefused();
        },
      });
      const w = startWorker({ newDb: broken, retry: { attempts: 1, baseDelayMs: 1, maxDelayMs: 1 } });
      const summary = await queuedBackfill({
        meta: fx.meta,
        newDb: fx.newDb,
        queueUrl: redisUrl,
        queueName: fx.queueName,
        migration: names(),
        chunkSize: 30,
        attempts: 2,
        backoffMs: 50,
        logDir: fx.logDir,
      });
      w.stop.abort();
      await w.done;
      expect(summary).to.include({ status: 'completed', exitCode: 1, total: 30, failed: 30, copied: 0 });
      expect(broken.calls.put).to.equal(60); // 30 blobs × 2 attempts of the chunk
      const { Queue } = await import('bullmq');
      const q = new Queue(fx.queueName, { connection: redisConnection(redisUrl, { blocking: false }) });
      try {
        expect(await q.getFailedCount()).to.equal(1);
      } finally {
        await q.close();
      }
      const first = JSON.parse((await readFile(summary.logs[0]!, 'utf8')).split('\n')[0]!) as {
        error: string;
      };
      expect(first.error)
        .to.match(/failed on the infrastructure/)
        .and.match(/after 2 attempts/);
    });

    it('interrupted as a chunk finishes: the finished chunk is counted, never withdrawn with its result', async () => {
      await fx.seed(60);
      const interrupt = new AbortController();
      const producing = queuedBackfill({
        meta: fx.meta,
        newDb: fx.newDb,
        queueUrl: redisUrl,
        queueName: fx.queueName,
        migration: names(),
        chunkSize: 20,
        logDir: fx.logDir,
        signal: interrupt.signal,
      });
      const { Queue, Worker } = await import('bullmq');
      const connection = redisConnection(redisUrl, { blocking: false });
      const q = new Queue(fx.queueName, { connection });
      // A worker processed by hand: it takes one chunk, stores its result, and
      // the producer is interrupted at that moment, before it has seen the result.
      const hand = new Worker<ChunkJobData, ChunkJobResult>(fx.queueName, null, {
        connection: redisConnection(redisUrl, { blocking: true }),
      });
      try {
        for (let i = 0; (await q.getWaitingCount()) < 3; i++) {
          if (i > 200) throw new Error('the producer did not queue its three chunks');
          await new Promise((r) => setTimeout(r, 50));
        }
        const job = await hand.getNextJob('test-token');
        if (!job) throw new Error('no job to take');
        const run = await processChunk(
          {
            oldDb: fx.oldDb,
            newDb: fx.newDb,
            references: new ReferenceChecker(fx.meta),
            meta: fx.meta,
            copies: new PQueue({ concurrency: 4 }),
          },
          job.data.rows,
        );
        const result: ChunkJobResult = {
          v: JOB_VERSION,
          migrationId: migrationId(names()),
          counts: run.counts,
          missing: run.missing,
          worker: 'test',
        };
        await job.moveToCompleted(result, 'test-token', false);
        interrupt.abort();
        const summary = await producing;
        expect(summary).to.include({ status: 'interrupted', exitCode: 130, copied: 20, total: 20 });
        const state = await fx.meta.getRun('default', '');
        expect(state?.counts.copied).to.equal(20);
        expect(state?.lowWaterMark).to.equal(job.data.upTo);
      } finally {
        await hand.close(true);
        await q.close();
      }
      const w = startWorker();
      const rerun = await queuedBackfill({
        meta: fx.meta,
        newDb: fx.newDb,
        queueUrl: redisUrl,
        queueName: fx.queueName,
        migration: names(),
        chunkSize: 20,
        logDir: fx.logDir,
      });
      w.stop.abort();
      await w.done;
      expect(pickCounts(rerun)).to.deep.equal({
        status: 'completed',
        exitCode: 0,
        total: 60,
        copied: 60,
        present: 0,
        expired: 0,
        failed: 0,
        notFound: 0,
        deletedDuringMigration: 0,
      });
    });

    it('refuses a SQLite metadata database before touching Redis', async () => {
      const meta = await MetaDB.open({
        client: 'better-sqlite3',
        connection: { filename: join(fx.dir, 'm.sqlite') },
      });
      try {
        let caught: unknown;
        try {
          await queuedBackfill({
            meta,
            newDb: fx.newDb,
            queueUrl: 'redis://127.0.0.1:1',
            queueName: fx.queueName,
            migration: names(),
          });
        } catch (err) {
          caught = err;
        }
        expect(caught).to.be.instanceOf(ConfigError);
        expect((caught as Error).message).to.match(/SQLite file cannot be shared/);
      } finally {
        await meta.close();
      }
    });
  }
  for (const database of QUEUE_DATABASES) {
    describe(`queue: producer and workers in process (Redis, ${database.name}, s3rver)`, function () {
      inProcessSuite.call(this, database);
    });
  }
  announceDatabases('scale-out queue, in process');
}
