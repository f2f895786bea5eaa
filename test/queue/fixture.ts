/**
 * Set-up for the scale-out tests: blobs as plain files (the old backend), an
 * s3rver bucket (the new one) with a per-key request tally taken at the
 * server, so requests from worker child processes count too; metadata in a
 * fresh table on MariaDB or PostgreSQL (a database every host can reach); a
 * unique BullMQ queue name whose Redis keys are removed afterwards; a config
 * file for the CLI; and a child-process runner.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { S3Client } from '@aws-sdk/client-s3';
import { FilesystemBlobDB } from '../../lib/backends/fs/index.js';
import { S3BlobDB } from '../../lib/backends/s3/index.js';
import type { NewBlobMeta } from '../../lib/contract/meta.js';
import type { MetaDB } from '../../lib/meta/index.js';
import { MARIADB, type MetaDatabase, POSTGRES } from '../support/databases.js';
import { REDIS_URL, uniqueName } from '../support/env.js';
import { createBucket, deleteBucket, type S3rverHandle } from '../support/s3rver.js';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface Seeded {
  key: string;
  size: number;
  sha256: string;
}

export interface QueueFixture {
  dir: string;
  logDir: string;
  table: string;
  queueName: string;
  bucket: string;
  meta: MetaDB;
  oldDb: FilesystemBlobDB;
  newDb: S3BlobDB;
  configFile: string;
  /** Requests the s3rver saw for this bucket's object keys: method → key → count. */
  requests: Map<string, Map<string, number>>;
  count(method: string, key?: string): number;
  seed(n: number, opts?: { sizeOf?: (i: number) => number }): Promise<Seeded[]>;
  /** A config file for the same migration, with another bucket for `new` (a misconfigured worker). */
  otherConfig(bucket: string): Promise<string>;
  dispose(): Promise<void>;
}

/** The databases a queue can run on (shared by every host): MariaDB and PostgreSQL, where set. */
export const QUEUE_DATABASES: MetaDatabase[] = [MARIADB, POSTGRES].filter(
  (d): d is MetaDatabase => d !== undefined,
);

export async function makeFixture(
  s3: S3rverHandle,
  admin: S3Client,
  database: MetaDatabase | undefined = QUEUE_DATABASES[0],
): Promise<QueueFixture> {
  if (!database || !REDIS_URL) throw new Error('queue fixture needs MariaDB or PostgreSQL, and Redis');
  const dir = await mkdtemp(join(tmpdir(), 'blobshift-queue-'));
  const table = uniqueName('bq_');
  const queueName = uniqueName('q');
  const bucket = await createBucket(admin);
  const { meta, drop } = await database.open(dir, { table });
  const oldRoot = join(dir, 'old');
  await mkdir(oldRoot, { recursive: true });
  const oldDb = new FilesystemBlobDB({ root: oldRoot });
  const newDb = new S3BlobDB({ bucket, clientConfig: s3.clientConfig() });
  const requests = new Map<string, Map<string, number>>();
  const prefix = `/${bucket}/`;
  const onRequest = (req: IncomingMessage) => {
    const path = (req.url ?? '').split('?')[0] ?? '';
    if (!path.startsWith(prefix) || path.length === prefix.length) return;
    const key = decodeURIComponent(path.slice(prefix.length));
    const method = req.method ?? '';
    let byKey = requests.get(method);
    if (!byKey) {
      byKey = new Map();
      requests.set(method, byKey);
    }
    byKey.set(key, (byKey.get(key) ?? 0) + 1);
  };
  s3.httpServer.on('request', onRequest);
  const config = (b: string) => ({
    meta: database.configSection(table),
    old: { type: 'fs', root: oldRoot },
    new: {
      type: 's3',
      bucket: b,
      endpoint: s3.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    },
  });
  const configFile = join(dir, 'blobshift.config.json');
  await writeFile(configFile, JSON.stringify(config(bucket), null, 2));
  return {
    dir,
    logDir: join(dir, 'logs'),
    table,
    queueName,
    bucket,
    meta,
    oldDb,
    newDb,
    configFile,
    requests,
    count(method, key) {
      const byKey = requests.get(method);
      if (!byKey) return 0;
      if (key !== undefined) return byKey.get(key) ?? 0;
      let n = 0;
      for (const [k, v] of byKey) if (k.startsWith('k/')) n += v;
      return n;
    },
    async seed(n, opts = {}) {
      const seeded: Seeded[] = [];
      const rows: NewBlobMeta[] = [];
      for (let i = 0; i < n; i++) {
        const size = opts.sizeOf?.(i) ?? 200 + ((i * 7919) % 3000);
        const body = randomBytes(size);
        const key = `k/${String(i).padStart(6, '0')}-${randomBytes(3).toString('hex')}`;
        const file = join(oldRoot, key);
        await mkdir(dirname(file), { recursive: true });
        await writeFile(file, body);
        const sha256 = createHash('sha256').update(body).digest('hex');
        seeded.push({ key, size, sha256 });
        rows.push({ key, parentId: `p${i % 17}`, type: 'attachment', contentLength: size, sha256 });
      }
      await meta.addMany(rows);
      return seeded;
    },
    async otherConfig(other) {
      const file = join(dir, `other-${other}.json`);
      await writeFile(file, JSON.stringify(config(other), null, 2));
      return file;
    },
    async dispose() {
      s3.httpServer.off('request', onRequest);
      await newDb.close().catch(() => {});
      await oldDb.close().catch(() => {});
      await obliterate(queueName);
      await drop();
      await deleteBucket(admin, bucket).catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Removes every Redis key of a queue. */
export async function obliterate(queueName: string): Promise<void> {
  if (!REDIS_URL) return;
  const { Queue } = await import('bullmq');
  const { redisConnection } = await import('../../lib/queue/jobs.js');
  const queue = new Queue(queueName, { connection: redisConnection(REDIS_URL, { blocking: false }) });
  try {
    await queue.obliterate({ force: true });
  } finally {
    await queue.close();
  }
}

/** SHA-256 of a stream. */
export async function sha256Of(stream: Readable): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export interface Child {
  proc: ChildProcess;
  stdout: string;
  stderr: string;
  /** Resolves with the exit code (or the signal's name). */
  exited: Promise<number | string>;
}

/** Starts the real CLI from source as a child process. */
export function startCli(args: string[], env: NodeJS.ProcessEnv = {}): Child {
  const proc = spawn(
    process.execPath,
    ['--openssl-legacy-provider', '--import', 'tsx', join(ROOT, 'scripts', 'cli.ts'), ...args],
    { cwd: ROOT, env: { ...process.env, NO_COLOR: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const child: Child = {
    proc,
    stdout: '',
    stderr: '',
    exited: new Promise((resolveExit) => {
      proc.on('exit', (code, signal) => resolveExit(code ?? signal ?? -1));
    }),
  };
  proc.stdout?.setEncoding('utf8').on('data', (d: string) => {
    child.stdout += d;
  });
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
    child.stderr += d;
  });
  return child;
}

/** Waits until `check` holds, polling every 50 ms, or fails after `ms`. */
export async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  ms = 30_000,
): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Waits for a worker child to say it is ready. */
export function workerReady(child: Child): Promise<void> {
  return waitFor('a worker to be ready', () => child.stderr.includes('worker ready'), 30_000);
}
