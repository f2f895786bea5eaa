/**
 * Scale-out benchmark: does a queue backfill speed up with workers? A delay
 * proxy on 127.0.0.1 adds 50 ms to every S3 request (as a remote store
 * would), in front of an s3rver. The same blobs are migrated with 1, 2 and 4
 * workers (child processes, `--concurrency 4` each), each time into a fresh
 * bucket; prints blobs/s for each and the 4-vs-1 ratio (target ≥ 3×).
 *
 * Needs Redis and MariaDB:
 *   BENCH_REDIS (default redis://127.0.0.1:6379), BENCH_MYSQL (default
 *   mysql://root@127.0.0.1:3306/test); BENCH_BLOBS (default 1200),
 *   BENCH_DELAY_MS (default 50), BENCH_CHUNK (default 25).
 * Run: node --openssl-legacy-provider --import tsx scripts/bench/scale-out.ts
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

process.env.AWS_EC2_METADATA_DISABLED = 'true';
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const REDIS = process.env.BENCH_REDIS ?? 'redis://127.0.0.1:6379';
const MYSQL = process.env.BENCH_MYSQL ?? 'mysql://root@127.0.0.1:3306/test';
const BLOBS = Number(process.env.BENCH_BLOBS ?? 1200);
const DELAY_MS = Number(process.env.BENCH_DELAY_MS ?? 50);
const CHUNK = Number(process.env.BENCH_CHUNK ?? 25);
const CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

function log(text: string): void {
  process.stderr.write(`[scale-out] ${text}\n`);
}

/** Forwards every request to `target` after `delayMs`. */
async function startDelayProxy(target: string, delayMs: number) {
  const t = new URL(target);
  const server = createServer((req, res) => {
    setTimeout(() => {
      const up = httpRequest(
        { host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers },
        (upRes) => {
          res.writeHead(upRes.statusCode ?? 502, upRes.headers);
          upRes.pipe(res);
        },
      );
      up.on('error', () => res.destroy());
      req.pipe(up);
    }, delayMs);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

interface Proc {
  proc: ChildProcess;
  out: string;
  err: string;
  exited: Promise<number | string>;
}

function cli(args: string[]): Proc {
  const proc = spawn(
    process.execPath,
    ['--openssl-legacy-provider', '--import', 'tsx', join(REPO, 'scripts', 'cli.ts'), ...args],
    { cwd: REPO, env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const p: Proc = {
    proc,
    out: '',
    err: '',
    exited: new Promise((r) => proc.on('exit', (code, sig) => r(code ?? sig ?? -1))),
  };
  proc.stdout?.setEncoding('utf8').on('data', (d: string) => {
    p.out += d;
  });
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
    p.err += d;
  });
  return p;
}

async function until(what: string, check: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function main(): Promise<void> {
  const require = createRequire(import.meta.url);
  const S3rver = require('s3rver') as new (
    o: Record<string, unknown>,
  ) => { run(): Promise<AddressInfo>; close(): Promise<void> };
  const [{ MetaDB, createKnex }, { createS3Client }, { CreateBucketCommand }] = await Promise.all([
    import('../../lib/meta/index.js'),
    import('../../lib/backends/s3/index.js'),
    import('@aws-sdk/client-s3'),
  ]);
  const dir = await mkdtemp(join(tmpdir(), 'blobshift-scale-out-'));
  const s3dir = join(dir, 's3');
  await mkdir(s3dir);
  const s3 = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: s3dir });
  const s3port = (await s3.run()).port;
  const proxy = await startDelayProxy(`http://127.0.0.1:${s3port}`, DELAY_MS);
  const admin = createS3Client({
    endpoint: `http://127.0.0.1:${s3port}`,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { ...CREDENTIALS },
  });
  const table = `bench_so_${Date.now().toString(36)}`;
  const oldRoot = join(dir, 'old');
  const results: { workers: number; rate: number; seconds: number }[] = [];
  try {
    log(`seeding ${BLOBS} blobs of 4 KiB (metadata table ${table})`);
    const meta = await MetaDB.open({ client: 'mysql2', connection: MYSQL }, { table });
    const rows = [];
    for (let i = 0; i < BLOBS; i++) {
      const key = `b/${String(i).padStart(6, '0')}`;
      const file = join(oldRoot, key);
      await mkdir(dirname(file), { recursive: true });
      await writeFile(file, randomBytes(4096));
      rows.push({ key, parentId: 'p', type: 'bench', contentLength: 4096 });
    }
    await meta.addMany(rows);
    await meta.close();

    for (const workers of [1, 2, 4]) {
      const bucket = `bench-${workers}-${randomBytes(3).toString('hex')}`;
      await admin.send(new CreateBucketCommand({ Bucket: bucket }));
      const queueName = `bench-${randomBytes(4).toString('hex')}`;
      const config = join(dir, `config-${workers}.json`);
      await writeFile(
        config,
        JSON.stringify({
          meta: { client: 'mysql2', connection: MYSQL, table },
          old: { type: 'fs', root: oldRoot },
          new: {
            type: 's3',
            bucket,
            endpoint: proxy.endpoint,
            region: 'us-east-1',
            forcePathStyle: true,
            credentials: { ...CREDENTIALS },
            requestChecksumCalculation: 'WHEN_REQUIRED',
            responseChecksumValidation: 'WHEN_REQUIRED',
          },
        }),
      );
      const queue = ['--queue', REDIS, '--queue-name', queueName];
      const ws = Array.from({ length: workers }, () =>
        cli(['worker', '-c', config, ...queue, '--concurrency', '4']),
      );
      await until('workers ready', () => ws.every((w) => w.err.includes('worker ready')), 60_000).catch(
        (err: unknown) => {
          for (const w of ws) w.proc.kill('SIGKILL');
          throw new Error(`${err instanceof Error ? err.message : String(err)}: ${ws[0]?.err ?? ''}`);
        },
      );
      const producer = cli([
        'backfill',
        '-c',
        config,
        ...queue,
        '--run',
        `w${workers}`,
        '--chunk-size',
        String(CHUNK),
        '--log-dir',
        join(dir, 'logs'),
        '--json',
        '--no-progress',
      ]);
      const code = await producer.exited;
      for (const w of ws) w.proc.kill('SIGTERM');
      await Promise.all(ws.map((w) => w.exited));
      if (code !== 0) throw new Error(`producer exited ${code}: ${producer.err}`);
      const summary = JSON.parse(producer.out) as { copied: number; seconds: number };
      if (summary.copied !== BLOBS) throw new Error(`copied ${summary.copied} of ${BLOBS}`);
      const rate = summary.copied / summary.seconds;
      results.push({ workers, rate, seconds: summary.seconds });
      log(
        `${workers} worker(s): ${BLOBS} blobs in ${summary.seconds.toFixed(1)} s = ${rate.toFixed(1)} blobs/s`,
      );
      const { Queue } = await import('bullmq');
      const { redisConnection } = await import('../../lib/queue/jobs.js');
      const q = new Queue(queueName, { connection: redisConnection(REDIS, { blocking: false }) });
      await q.obliterate({ force: true });
      await q.close();
    }
  } finally {
    const k = await createKnex({ client: 'mysql2', connection: MYSQL });
    for (const t of [table, `${table}_runs`, `${table}_migrations`, `${table}_migrations_lock`]) {
      await k.schema.dropTableIfExists(t);
    }
    await k.destroy();
    admin.destroy();
    await proxy.close();
    await s3.close();
    await rm(dir, { recursive: true, force: true });
  }
  const one = results.find((r) => r.workers === 1)?.rate ?? 0;
  const four = results.find((r) => r.workers === 4)?.rate ?? 0;
  const ratio = one > 0 ? four / one : 0;
  process.stdout.write(
    `scale-out: ${BLOBS} blobs of 4 KiB, +${DELAY_MS} ms per S3 request, --concurrency 4 per worker, chunks of ${CHUNK}\n`,
  );
  for (const r of results) {
    process.stdout.write(
      `  ${r.workers} worker(s): ${r.rate.toFixed(1)} blobs/s (${r.seconds.toFixed(1)} s)\n`,
    );
  }
  process.stdout.write(`  4 vs 1: ${ratio.toFixed(2)}× (target ≥ 3×: ${ratio >= 3 ? 'met' : 'NOT met'})\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`scale-out benchmark failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
