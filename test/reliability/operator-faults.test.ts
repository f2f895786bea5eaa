/**
 * What an operator does to a running migration, and what the tool must do
 * about it: a full disk under the new backend, SIGTERM at any moment,
 * `--reset` next to a live run, a Redis password kept off the command line,
 * a mistyped database name, Redis going away under the producer.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { BlobStore } from '../../lib/app/store.js';
import { FilesystemBlobDB } from '../../lib/backends/fs/index.js';
import { S3BlobDB } from '../../lib/backends/s3/index.js';
import { RunStateError } from '../../lib/contract/errors.js';
import { redact } from '../../lib/contract/redact.js';
import type { BlobBody, PutOptions } from '../../lib/contract/types.js';
import { backfill, freshRunState } from '../../lib/engine/backfill.js';
import { MetaDB } from '../../lib/meta/index.js';
import { backfillArgs, runCli, startCli, writeConfig } from '../support/cli.js';
import { MYSQL_URL, REDIS_URL, uniqueName } from '../support/env.js';
import { type FaultProxy, startFaultProxy } from '../support/fault-proxy.js';
import {
  createBucket,
  deleteBucket,
  emptyBucket,
  type S3rverHandle,
  startS3rver,
} from '../support/s3rver.js';
import { sleep } from '../support/time.js';

/** A filesystem backend whose disk can be made full: every put then fails with ENOSPC. */
class FullDisk extends FilesystemBlobDB {
  full = false;
  puts = 0;
  override async put(key: string, body: BlobBody, opts?: PutOptions) {
    this.puts++;
    if (this.full) {
      if (typeof body === 'object' && 'destroy' in body) body.destroy();
      throw Object.assign(new Error(`ENOSPC: no space left on device, write '${key}'`), {
        code: 'ENOSPC',
        errno: -28,
      });
    }
    return super.put(key, body, opts);
  }
}

describe('operator faults', function () {
  this.timeout(120_000);
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'blobshift-ops-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function seeded(n: number): Promise<{ meta: MetaDB; oldDb: FilesystemBlobDB; filename: string }> {
    const filename = join(dir, 'meta.sqlite');
    const meta = await MetaDB.open({ client: 'better-sqlite3', connection: { filename } });
    const oldDb = new FilesystemBlobDB({ root: join(dir, 'old') });
    const store = new BlobStore({ db: oldDb, meta });
    for (let i = 0; i < n; i++) await store.put(randomBytes(100 + i), { parentId: 'p', type: 't' });
    return { meta, oldDb, filename };
  }

  it('a full disk under the new backend stops the run as infrastructure lost (exit 3, checkpoint saved), without retrying each blob; the rerun resumes once space is freed', async () => {
    const { meta, oldDb } = await seeded(40);
    const newDb = new FullDisk({ root: join(dir, 'new') });
    newDb.full = true;
    const opts = { meta, oldDb, newDb, logDir: join(dir, 'logs'), concurrency: 4, chunkSize: 10 };
    const stopped = await backfill(opts);
    expect(stopped.status).to.equal('infrastructure');
    expect(stopped.exitCode).to.equal(3);
    expect(stopped.reason).to.match(/ENOSPC/);
    // One put a blob at most before the stop: no per-blob retries against a full disk.
    expect(newDb.puts).to.be.at.most(8);
    const saved = await meta.getRun('default', '');
    expect(saved?.status).to.equal('failed');
    expect(saved?.exitCode).to.equal(3);
    // Space is freed: the same command resumes and completes.
    newDb.full = false;
    const resumed = await backfill(opts);
    expect(resumed).to.include({ status: 'completed', exitCode: 0, failed: 0, notFound: 0 });
    expect(resumed.copied + resumed.present).to.equal(40);
    await meta.close();
  });

  it('--reset refuses a run another live process is running', async () => {
    const { meta, oldDb } = await seeded(3);
    const newDb = new FilesystemBlobDB({ root: join(dir, 'new') });
    const live: ChildProcess = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      const state = freshRunState('default', '', { types: [], shard: '', old: null, new: null });
      state.extra = { owner: { host: hostname(), pid: live.pid } };
      await meta.saveRun(state);
      const err = await backfill({ meta, oldDb, newDb, reset: true, logDir: join(dir, 'logs') }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).to.be.instanceOf(RunStateError);
      expect((err as Error).message).to.match(/is being run right now by process \d+/);
      expect((await meta.getRun('default', ''))?.extra.owner).to.deep.equal({
        host: hostname(),
        pid: live.pid,
      });
    } finally {
      live.kill('SIGKILL');
      await meta.close();
    }
  });

  describe('signals through the CLI (files → s3rver behind a proxy)', () => {
    let s3: S3rverHandle;
    let proxy: FaultProxy;
    let bucket: string;
    before(async () => {
      s3 = await startS3rver();
      proxy = await startFaultProxy({ target: s3.endpoint, stallMs: 2500 });
    });
    after(async () => {
      await proxy.stop();
      await s3.stop();
    });
    beforeEach(async () => {
      proxy.setRules([]);
      const admin = s3.client();
      bucket = await createBucket(admin);
      admin.destroy();
    });
    afterEach(async () => {
      const admin = s3.client();
      await emptyBucket(admin, bucket).catch(() => {});
      await deleteBucket(admin, bucket).catch(() => {});
      admin.destroy();
    });

    async function config(filename: string): Promise<string> {
      return writeConfig(join(dir, 'c.json'), {
        meta: { client: 'better-sqlite3', connection: { filename } },
        old: { type: 'fs', root: join(dir, 'old') },
        new: {
          type: 's3',
          bucket,
          endpoint: proxy.endpoint,
          region: 'us-east-1',
          forcePathStyle: true,
          credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
          requestChecksumCalculation: 'WHEN_REQUIRED',
          responseChecksumValidation: 'WHEN_REQUIRED',
        },
      });
    }

    const isListing = (path: string) => path.includes('list-type=2');
    const oneKey = (path: string) => /[?&]max-keys=1(&|$)/.test(path);
    async function until(what: () => boolean, ms = 30_000): Promise<void> {
      const end = Date.now() + ms;
      while (!what()) {
        if (Date.now() > end) throw new Error('timed out');
        await sleep(20);
      }
    }

    it('SIGTERM while cleanup-old lists exits 130 ("interrupted"), deleting nothing', async () => {
      const { meta, filename } = await seeded(20);
      await meta.close();
      const cfg = await config(filename);
      expect((await runCli(backfillArgs(cfg, join(dir, 'logs'), '--no-progress'))).code).to.equal(0);
      expect((await runCli(['verify', '-c', cfg, '--log-dir', join(dir, 'logs')])).code).to.equal(0);
      // Full listings stall (the preflight's one-key listing does not).
      proxy.setRules([{ rate: 1, kinds: ['stall'], match: (r) => isListing(r.path) && !oneKey(r.path) }]);
      const seen = proxy.requests.length;
      const child = startCli(['cleanup-old', '-c', cfg, '--yes', '--log-dir', join(dir, 'logs')]);
      await until(() => proxy.requests.slice(seen).some((r) => r.fault === 'stall'));
      child.child.kill('SIGTERM');
      const done = await child.done;
      expect(done.code, done.stdout + done.stderr).to.equal(130);
      expect(done.stderr).to.not.match(/unexpected error/);
      expect(done.stdout).to.contain('Interrupted: rerun cleanup-old to continue');
      expect(done.stdout).to.contain('Deleted from old: 0');
      const oldDb = new FilesystemBlobDB({ root: join(dir, 'old') });
      let left = 0;
      for await (const _ of oldDb.list()) left++;
      expect(left).to.equal(20);
    });

    it('SIGTERM during the setup of a backfill (its preflight waiting on the server) exits 130, not 143', async () => {
      const { meta, filename } = await seeded(5);
      await meta.close();
      const cfg = await config(filename);
      proxy.setRules([{ rate: 1, kinds: ['stall'], match: (r) => isListing(r.path) && oneKey(r.path) }]);
      const seen = proxy.requests.length;
      const child = startCli(backfillArgs(cfg, join(dir, 'logs'), '--no-progress'));
      await until(() => proxy.requests.slice(seen).some((r) => r.fault === 'stall'));
      child.child.kill('SIGTERM');
      proxy.setRules([]);
      const done = await child.done;
      expect(done.signal).to.equal(null, 'not killed by the signal');
      expect(done.code, done.stdout + done.stderr).to.equal(130);
      expect(done.stderr).to.match(/SIGTERM: stopping once the setup step in progress ends/);
      // Nothing was copied: the run never started copying.
      const newDb = new S3BlobDB({ bucket, clientConfig: s3.clientConfig() });
      let copied = 0;
      for await (const _ of newDb.list()) copied++;
      await newDb.close();
      expect(copied).to.equal(0);
    });
  });

  it('the access key id is redacted like the secret', () => {
    const printed = JSON.stringify(
      redact({
        new: { credentials: { accessKeyId: 'AKIAEXAMPLEKEY12345', secretAccessKey: 'x'.repeat(40) } },
      }),
    );
    expect(printed).to.not.contain('AKIAEXAMPLEKEY12345');
    expect(printed).to.contain('"accessKeyId":"[REDACTED]"');
  });

  if (MYSQL_URL) {
    const base = MYSQL_URL.replace(/\/[^/]*$/, '');
    it('a mistyped database name is one line, without the driver stack, in every command', async () => {
      const cfg = await writeConfig(join(dir, 'wrong.json'), {
        meta: { client: 'mysql2', connection: `${base}/no_such_database_here` },
        old: { type: 'fs', root: join(dir, 'o') },
        new: { type: 'fs', root: join(dir, 'n') },
      });
      for (const command of ['estimate', 'status', 'verify', 'backfill']) {
        const r = await runCli([command, '-c', cfg]);
        expect(r.code, `${command}: ${r.stderr}`).to.equal(2);
        expect(r.stderr, command).to.not.match(/Acquire connection error|\n\s+at /);
        expect(r.stderr.trim().split('\n'), command).to.have.length(1);
        expect(r.stderr, command).to.match(/no_such_database_here/);
        expect(r.stdout, command).to.equal('');
      }
    });
  }

  if (MYSQL_URL && REDIS_URL) {
    const mysql = MYSQL_URL;
    const redis = REDIS_URL;
    it('the Redis password comes from the config or the environment, never the command line, and is never printed', async () => {
      const { Redis } = await import('ioredis');
      const admin = new Redis(redis, { lazyConnect: true });
      await admin.connect();
      const user = uniqueName('bsuser');
      const secret = `pw-${randomBytes(8).toString('hex')}`;
      await admin.call('ACL', 'SETUSER', user, 'on', `>${secret}`, '~*', '&*', '+@all');
      const table = uniqueName('rq_');
      const meta = await MetaDB.open({ client: 'mysql2', connection: mysql }, { table });
      try {
        await meta.add({ key: 'k/1', parentId: 'p', type: 't', contentLength: 1 });
        const u = new URL(redis);
        const withUser = `redis://${user}@${u.host}`;
        const common = {
          meta: { client: 'mysql2', connection: mysql, table },
          old: { type: 'fs', root: join(dir, 'o') },
          new: { type: 'fs', root: join(dir, 'n') },
        };
        // The password from the config (itself from the environment): the worker gets in.
        const fromConfig = await writeConfig(join(dir, 'q1.json'), {
          ...common,
          queue: { url: withUser, password: '$QUEUE_PW' },
        });
        const worker = startCli(['worker', '-c', fromConfig, '--queue-name', uniqueName('q')], {
          env: { QUEUE_PW: secret },
        });
        const end = Date.now() + 60_000;
        while (!/worker ready/.test(worker.stderr) && worker.child.exitCode === null && Date.now() < end) {
          await sleep(50);
        }
        expect(worker.stderr).to.match(/worker ready/);
        worker.child.kill('SIGTERM');
        const stopped = await worker.done;
        expect(stopped.code).to.equal(130);
        expect(stopped.stdout + stopped.stderr).to.not.contain(secret);
        // A wrong password from the environment: refused, and the attempt is not printed either.
        const fromEnv = await writeConfig(join(dir, 'q2.json'), common);
        const wrong = `${secret}-wrong`;
        const refused = await runCli(['worker', '-c', fromEnv, '--queue', withUser], {
          env: { BLOBSHIFT_REDIS_PASSWORD: wrong },
        });
        expect(refused.code, refused.stderr).to.equal(2);
        expect(refused.stderr, refused.stderr).to.match(/Redis .* cannot be reached: WRONGPASS/);
        expect(refused.stdout + refused.stderr).to.not.contain(wrong);
        // No URL anywhere: said so.
        const noUrl = await runCli(['worker', '-c', fromEnv]);
        expect(noUrl.code).to.equal(2);
        expect(noUrl.stderr).to.match(/queue\.url/);
      } finally {
        await admin.call('ACL', 'DELUSER', user).catch(() => {});
        admin.disconnect();
        const k = meta.knex;
        for (const t of [table, `${table}_runs`, `${table}_migrations`, `${table}_migrations_lock`]) {
          await k.schema.dropTableIfExists(t);
        }
        await meta.close();
      }
    });

    it('the producer names Redis when Redis goes away, not the workers', async () => {
      const { queuedBackfill } = await import('../../lib/queue/producer.js');
      const target = new URL(redis);
      // A TCP proxy in front of Redis that can be pulled away.
      const sockets = new Set<Socket>();
      const server: Server = createServer((client) => {
        const upstream = connect(Number(target.port || 6379), target.hostname);
        client.pipe(upstream).pipe(client);
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on('error', () => {});
          s.on('close', () => sockets.delete(s));
        }
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server.address() as { port: number }).port;
      const table = uniqueName('rq_');
      const meta = await MetaDB.open({ client: 'mysql2', connection: mysql }, { table });
      const warnings: string[] = [];
      const ac = new AbortController();
      const hard = new AbortController();
      try {
        const oldDb = new FilesystemBlobDB({ root: join(dir, 'o') });
        const store = new BlobStore({ db: oldDb, meta });
        for (let i = 0; i < 5; i++) await store.put(`b${i}`, { parentId: 'p', type: 't' });
        const run = queuedBackfill({
          meta,
          newDb: new FilesystemBlobDB({ root: join(dir, 'n') }),
          queueUrl: `redis://127.0.0.1:${port}`,
          queueName: uniqueName('q'),
          migration: { meta: 'm', old: 'o', new: 'n' },
          chunkSize: 2,
          existence: 'head',
          logDir: join(dir, 'logs'),
          signal: ac.signal,
          hardSignal: hard.signal,
          logger: {
            info() {},
            warn: (m: string) => warnings.push(m),
            error: (m: string) => warnings.push(m),
          },
          onStart: () => {
            // Redis goes away once the chunks are queued (no worker runs).
            setTimeout(() => {
              server.close();
              for (const s of sockets) s.destroy();
            }, 500);
          },
        });
        const end = Date.now() + 20_000;
        while (!warnings.some((w) => /Redis .* does not answer/.test(w)) && Date.now() < end) {
          await sleep(100);
        }
        ac.abort();
        hard.abort();
        await run.catch(() => undefined);
        expect(
          warnings.some((w) => /Redis \(redis:\/\/127\.0\.0\.1:\d+\/0 queue .*\) does not answer/.test(w)),
        ).to.equal(true, warnings.join('\n'));
        expect(warnings.some((w) => /are workers running/.test(w))).to.equal(false);
      } finally {
        server.close();
        for (const s of sockets) s.destroy();
        const k = meta.knex;
        for (const t of [table, `${table}_runs`, `${table}_migrations`, `${table}_migrations_lock`]) {
          await k.schema.dropTableIfExists(t);
        }
        await meta.close();
      }
    });
  }
});
