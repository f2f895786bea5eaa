/**
 * backfill on real backends: filesystem → S3, S3 → S3 (two buckets),
 * S3 → filesystem, on s3rver (and Ceph RGW when configured), through the
 * library; and the real CLI for exit codes, --json fields, a rerun that
 * reprints, shards and preflight refusals.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { BlobStore } from '../../lib/app/store.js';
import { FilesystemBlobDB } from '../../lib/backends/fs/index.js';
import { S3BlobDB, type S3ClientConfigLike } from '../../lib/backends/s3/index.js';
import { readAll } from '../../lib/contract/body.js';
import type { BlobDB } from '../../lib/contract/types.js';
import { backfill } from '../../lib/engine/backfill.js';
import { MetaDB } from '../../lib/meta/index.js';
import { RGW_ENDPOINT, uniqueName } from '../support/env.js';
import {
  createBucket,
  deleteBucket,
  rgwClientConfig,
  type S3rverHandle,
  startS3rver,
} from '../support/s3rver.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** tsx's loader by URL, so the child finds it from any working directory. */
const TSX = import.meta.resolve('tsx');

interface Env {
  dir: string;
  meta: MetaDB;
}

async function seedThroughStore(
  db: BlobDB,
  meta: MetaDB,
  n: number,
  type: string,
): Promise<Map<string, string>> {
  const store = new BlobStore({ db, meta });
  const hashes = new Map<string, string>();
  for (let i = 0; i < n; i++) {
    const body = randomBytes(1 + ((i * 977) % 9000));
    const row = await store.put(body, {
      parentId: `p${i % 5}`,
      type,
      contentType: i % 2 ? 'image/png' : 'application/pdf',
    });
    hashes.set(row.key, createHash('sha256').update(body).digest('hex'));
  }
  return hashes;
}

async function sha256Of(db: BlobDB, key: string): Promise<string> {
  return createHash('sha256')
    .update(await readAll(await db.get(key)))
    .digest('hex');
}

describe('backfill on real backends', function () {
  this.timeout(120_000);
  let s3: S3rverHandle;
  let env: Env;
  /** Buckets made by a test, deleted after it (RGW keeps them otherwise). */
  const created: { cfg: S3ClientConfigLike; bucket: string }[] = [];
  const s3Backend = async (cfg: S3ClientConfigLike): Promise<S3BlobDB> => {
    const { createS3Client } = await import('../../lib/backends/s3/index.js');
    const client = createS3Client(cfg);
    const bucket = await createBucket(client, uniqueName('bf'));
    client.destroy();
    created.push({ cfg, bucket });
    return new S3BlobDB({ bucket, clientConfig: cfg });
  };

  before(async () => {
    s3 = await startS3rver();
  });
  after(async () => {
    await s3.stop();
  });
  beforeEach(async () => {
    const dir = await mkdtemp(join(tmpdir(), 'blobshift-bf-e2e-'));
    env = {
      dir,
      meta: await MetaDB.open({ client: 'better-sqlite3', connection: { filename: join(dir, 'm.sqlite') } }),
    };
  });
  afterEach(async () => {
    await env.meta.close();
    await rm(env.dir, { recursive: true, force: true });
    const { createS3Client } = await import('../../lib/backends/s3/index.js');
    for (const { cfg, bucket } of created.splice(0)) {
      const client = createS3Client(cfg);
      await deleteBucket(client, bucket).catch(() => {});
      client.destroy();
    }
  });

  const servers: [string, () => S3ClientConfigLike][] = [['s3rver', () => s3.clientConfig()]];
  if (RGW_ENDPOINT) servers.push(['Ceph RGW', () => rgwClientConfig('WHEN_SUPPORTED')]);

  for (const [server, cfg] of servers) {
    const directions: [string, () => Promise<[BlobDB, BlobDB]>][] = [
      [
        'filesystem → S3',
        async () => [new FilesystemBlobDB({ root: join(env.dir, 'old') }), await s3Backend(cfg())],
      ],
      ['S3 → S3 (two buckets)', async () => [await s3Backend(cfg()), await s3Backend(cfg())]],
      [
        'S3 → filesystem',
        async () => [await s3Backend(cfg()), new FilesystemBlobDB({ root: join(env.dir, 'new') })],
      ],
    ];
    for (const [name, make] of directions) {
      it(`${name} on ${server}: byte-identical, content types carried, lost blobs logged`, async () => {
        const [oldDb, newDb] = await make();
        try {
          const hashes = await seedThroughStore(oldDb, env.meta, 40, 'attachment');
          const lostKey = 'lost/one';
          await env.meta.add({ key: lostKey, parentId: 'p', type: 'attachment', contentLength: 10 });
          const summary = await backfill({
            meta: env.meta,
            oldDb,
            newDb,
            logDir: join(env.dir, 'logs'),
            concurrency: 8,
          });
          expect(summary.copied).to.equal(40);
          expect(summary.notFound).to.equal(1);
          expect(summary.exitCode).to.equal(1);
          for (const [key, hash] of hashes) {
            expect(await sha256Of(newDb, key), key).to.equal(hash);
            const [a, b] = await Promise.all([oldDb.stat(key), newDb.stat(key)]);
            expect(b.contentType, key).to.equal(a.contentType);
          }
          expect(await newDb.exists(lostKey)).to.equal(false);
        } finally {
          await oldDb.close();
          await newDb.close();
        }
      });
    }
  }

  describe('the real CLI', () => {
    function cli(
      args: string[],
      cwd: string,
    ): Promise<{ code: number | null; stdout: string; stderr: string }> {
      return new Promise((resolvePromise, reject) => {
        const child = spawn(process.execPath, ['--import', TSX, join(REPO, 'scripts', 'cli.ts'), ...args], {
          cwd,
          env: {
            PATH: process.env.PATH ?? '/usr/bin:/bin',
            HOME: process.env.HOME ?? '/tmp',
            AWS_EC2_METADATA_DISABLED: 'true',
            S3_KEY: 'S3RVER',
            S3_SECRET: 'S3RVER',
          },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => {
          stdout += d.toString();
        });
        child.stderr.on('data', (d: Buffer) => {
          stderr += d.toString();
        });
        const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
        child.on('error', reject);
        child.on('exit', (code) => {
          clearTimeout(timer);
          resolvePromise({ code, stdout, stderr });
        });
      });
    }

    async function setup(bucketExists = true): Promise<{ config: string; keys: string[]; bucket: string }> {
      const oldDb = new FilesystemBlobDB({ root: join(env.dir, 'old') });
      const keys: string[] = [];
      for (const type of ['attachment', 'image', 'form']) {
        keys.push(...(await seedThroughStore(oldDb, env.meta, 15, type)).keys());
      }
      const client = s3.client();
      const bucket = bucketExists ? await createBucket(client, uniqueName('cli')) : uniqueName('absent');
      client.destroy();
      const config = join(env.dir, 'blobshift.config.json');
      await writeFile(
        config,
        JSON.stringify({
          meta: { client: 'better-sqlite3', connection: { filename: './m.sqlite' } },
          old: { type: 'fs', root: './old' },
          new: {
            type: 's3',
            bucket,
            endpoint: s3.endpoint,
            region: 'us-east-1',
            forcePathStyle: true,
            credentials: { accessKeyId: '$S3_KEY', secretAccessKey: '$S3_SECRET' },
            requestChecksumCalculation: 'WHEN_REQUIRED',
            responseChecksumValidation: 'WHEN_REQUIRED',
          },
        }),
      );
      return { config, keys, bucket };
    }

    it('exits 0 with every --json field, then reprints the finished run with the same exit code', async () => {
      const { config } = await setup();
      const first = await cli(['backfill', '-c', config, '--json', '--no-progress'], env.dir);
      expect(first.code, first.stderr).to.equal(0);
      const json = JSON.parse(first.stdout) as Record<string, unknown>;
      for (const field of [
        'copied',
        'present',
        'notFound',
        'failed',
        'deletedDuringMigration',
        'expired',
        'bytes',
        'seconds',
        'logs',
      ]) {
        expect(json, field).to.have.property(field);
      }
      expect(json.copied).to.equal(45);
      const again = await cli(['backfill', '-c', config, '--json', '--no-progress'], env.dir);
      expect(again.code).to.equal(0);
      const reprinted = JSON.parse(again.stdout) as Record<string, unknown>;
      expect(reprinted.reprinted).to.equal(true);
      expect(reprinted.copied).to.equal(45);
      const status = await cli(['status', '-c', config, '--json'], env.dir);
      expect(status.code).to.equal(0);
      expect((JSON.parse(status.stdout) as { state: string }[])[0]?.state).to.equal('completed');
    });

    it('exits 1 when blobs are lost and names the log and the next command', async () => {
      const { config } = await setup();
      await env.meta.add({ key: 'gone/1', parentId: 'p', type: 'image', contentLength: 5 });
      const r = await cli(['backfill', '-c', config, '--no-progress', '--log-dir', 'logs'], env.dir);
      expect(r.code, r.stderr).to.equal(1);
      expect(r.stdout).to.match(/not found:\s+1/);
      expect(r.stdout).to.match(/next: blobshift check-blob-logs logs\/backfill-default-\d{8}T\d{6}Z\.jsonl/);
      const check = await cli(
        ['check-blob-logs', '-c', config, ...(await logsIn(join(env.dir, 'logs')))],
        env.dir,
      );
      expect(check.code).to.equal(1);
      expect(check.stdout).to.include(
        'image: checked 1 records\n  Found in new db: 0\n  Found in old db: 0\n',
      );
    });

    it('SIGINT stops it with exit 130 and a saved checkpoint; the same command resumes and completes', async () => {
      const { config } = await setup();
      const child = spawn(
        process.execPath,
        [
          '--import',
          TSX,
          join(REPO, 'scripts', 'cli.ts'),
          'backfill',
          '-c',
          config,
          '--no-progress',
          '--max-rate',
          '5',
          '--concurrency',
          '2',
        ],
        {
          cwd: env.dir,
          env: {
            PATH: process.env.PATH ?? '/usr/bin:/bin',
            AWS_EC2_METADATA_DISABLED: 'true',
            S3_KEY: 'S3RVER',
            S3_SECRET: 'S3RVER',
          },
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let stderr = '';
      let stdout = '';
      child.stdout.on('data', (d: Buffer) => {
        stdout += d.toString();
      });
      const started = new Promise<void>((resolveStarted) => {
        child.stderr.on('data', (d: Buffer) => {
          stderr += d.toString();
          if (/attempt 1/.test(stderr)) resolveStarted();
        });
      });
      const exited = new Promise<number | null>((resolveExit) =>
        child.on('exit', (code) => resolveExit(code)),
      );
      await started;
      await new Promise((r) => setTimeout(r, 1500));
      child.kill('SIGINT');
      const code = await exited;
      expect(code, stderr).to.equal(130);
      expect(stdout).to.match(/interrupted; the checkpoint is saved/);
      const state = await env.meta.getRun('default', '');
      expect(state?.status).to.equal('interrupted');
      expect(state?.counts.total).to.be.greaterThan(0).and.lessThan(45);
      const again = await cli(['backfill', '-c', config, '--json', '--no-progress'], env.dir);
      expect(again.code, again.stderr).to.equal(0);
      const json = JSON.parse(again.stdout) as {
        copied: number;
        present: number;
        total: number;
        attempts: number;
      };
      expect(json.total).to.equal(45);
      expect(json.copied + json.present).to.equal(45);
      expect(json.attempts).to.equal(2);
    });

    it('three shards together copy every blob exactly once', async () => {
      const { config } = await setup();
      const results = await Promise.all(
        ['0/3', '1/3', '2/3'].map((s) =>
          cli(['backfill', '-c', config, '--shard', s, '--json', '--no-progress'], env.dir),
        ),
      );
      const copied = results.map((r) => (JSON.parse(r.stdout) as { copied: number }).copied);
      expect(results.map((r) => r.code)).to.deep.equal([0, 0, 0]);
      expect(copied.reduce((a, b) => a + b, 0)).to.equal(45);
    });

    it('a leftover write probe is swept by a run that writes, never by a dry run or a failed preflight', async () => {
      const { config, bucket } = await setup();
      const newDb = new S3BlobDB({ bucket, clientConfig: s3.clientConfig() });
      const leftover = 'blobshift-preflight-probe-kxyz0000-0123456789ab';
      try {
        await newDb.put(leftover, 'blobshift write probe');
        const dry = await cli(['backfill', '-c', config, '--dry-run', '--no-progress'], env.dir);
        expect(dry.code, dry.stderr).to.equal(0);
        expect(await newDb.exists(leftover), 'a dry run writes nothing').to.equal(true);

        const broken = join(env.dir, 'broken.json');
        // The old backend, a bucket that does not exist: the preflight fails
        // while the new backend's listing runs.
        const cfg = JSON.parse(await readFile(config, 'utf8')) as { old: unknown; new: { bucket: string } };
        cfg.old = { ...cfg.new, bucket: uniqueName('absent') };
        await writeFile(broken, JSON.stringify(cfg));
        const failed = await cli(['backfill', '-c', broken, '--no-progress'], env.dir);
        expect(failed.code, failed.stderr).to.equal(2);
        expect(failed.stderr).to.match(/preflight failed/);
        expect(await newDb.exists(leftover), 'a failed preflight writes nothing').to.equal(true);

        const real = await cli(['backfill', '-c', config, '--no-progress'], env.dir);
        expect(real.code, real.stderr).to.equal(0);
        expect(await newDb.exists(leftover), 'the run swept the leftover').to.equal(false);
        const probes: string[] = [];
        for await (const info of newDb.list({ prefix: 'blobshift-preflight-probe-' })) probes.push(info.key);
        expect(probes, 'its own probe removed too').to.deep.equal([]);
      } finally {
        await newDb.close();
      }
    });

    it('refuses, with exit 2 and nothing written, a missing bucket, a missing database and old = new', async () => {
      const { config } = await setup(false);
      const missingBucket = await cli(['backfill', '-c', config, '--no-progress'], env.dir);
      expect(missingBucket.code).to.equal(2);
      expect(missingBucket.stderr).to.match(/preflight failed/);
      expect(await env.meta.getRun('default', '')).to.equal(undefined);

      const noDb = join(env.dir, 'nodb.json');
      await writeFile(
        noDb,
        JSON.stringify({
          meta: { client: 'better-sqlite3', connection: { filename: './typo.sqlite' } },
          old: { type: 'fs', root: './old' },
          new: { type: 'fs', root: './new' },
        }),
      );
      const r2 = await cli(['backfill', '-c', noDb, '--no-progress'], env.dir);
      expect(r2.code).to.equal(2);
      expect(r2.stderr).to.match(/meta\.connection\.filename/);

      const same = join(env.dir, 'same.json');
      await writeFile(
        same,
        JSON.stringify({
          meta: { client: 'better-sqlite3', connection: { filename: './m.sqlite' } },
          old: { type: 'fs', root: './old' },
          new: { type: 'fs', root: './old/' },
        }),
      );
      const r3 = await cli(['backfill', '-c', same, '--no-progress'], env.dir);
      expect(r3.code).to.equal(2);
      expect(r3.stderr).to.match(/same place/);
      expect(r3.stderr).to.not.match(/\n\s+at /);
    });
  });
});

async function logsIn(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => f.startsWith('backfill-')).map((f) => join(dir, f));
}
