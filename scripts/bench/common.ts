/**
 * Shared pieces of the benchmarks: an s3rver in a child process (so the
 * server has its own core and the contenders theirs), a counting HTTP proxy
 * on 127.0.0.1, seeding of blob files and metadata rows, the real CLI run as
 * a child with its peak RSS, rclone runs, and the result rows of the table.
 *
 * Every benchmark is a ratio of two figures measured side by side in the same
 * run: absolute figures do not hold from one run (or machine) to the next.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { Agent, createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

process.env.AWS_EC2_METADATA_DISABLED = 'true';
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };
/** Ceph RGW's test user (BLOBSHIFT_TEST_RGW_KEY / _SECRET, as the tests take them). */
export const RGW_CREDENTIALS = {
  accessKeyId: process.env.BLOBSHIFT_TEST_RGW_KEY || 'TESTACCESSKEY',
  secretAccessKey: process.env.BLOBSHIFT_TEST_RGW_SECRET || 'TESTSECRETKEY',
};

/** A short tag that makes bucket names unique on a server that outlives the run (RGW). */
export function uniqueTag(): string {
  return `${Date.now().toString(36)}${Math.floor(Math.random() * 36 ** 4).toString(36)}`;
}

/** A number from the environment, or the default. */
export function envNumber(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got ${raw}`);
  return n;
}

export const MiB = 1024 * 1024;

/** One row of the final table. */
export interface BenchRow {
  target: string;
  ours: string;
  comparison: string;
  ratio: string;
  met: boolean | undefined;
  note?: string;
}

export function fmt(n: number, digits = 0): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function ratioText(r: number): string {
  return Number.isFinite(r) ? `${r.toFixed(2)}×` : 'n/a';
}

export function log(text: string): void {
  process.stderr.write(`[bench] ${text}\n`);
}

/** A fresh scratch directory under the OS temp dir (or BENCH_DIR). */
export async function scratch(name: string): Promise<string> {
  const base = process.env.BENCH_DIR ?? tmpdir();
  await mkdir(base, { recursive: true });
  return mkdtemp(join(base, `blobshift-bench-${name}-`));
}

// ---------------------------------------------------------------------------
// Child processes

export interface ChildResult {
  code: number;
  stdout: string;
  stderr: string;
  seconds: number;
  /** Peak resident set of the child, in bytes (Linux: from its own resourceUsage). */
  maxRss: number | undefined;
}

/** Writes the child's peak RSS (kB) to BENCH_RSS_FILE when it exits. */
const RSS_PROBE = `data:text/javascript,${encodeURIComponent(
  'import { writeFileSync } from "node:fs";' +
    'process.on("exit", () => { const f = process.env.BENCH_RSS_FILE;' +
    ' if (f) writeFileSync(f, String(process.resourceUsage().maxRSS)); });',
)}`;

/** Runs a command; resolves its output, wall time and (for node children) peak RSS. */
export async function run(
  command: string,
  args: string[],
  opts: {
    env?: NodeJS.ProcessEnv;
    /** The child's whole environment (instead of this process's plus `env`). */
    exactEnv?: NodeJS.ProcessEnv;
    cwd?: string;
    node?: boolean;
    timeoutMs?: number;
  } = {},
): Promise<ChildResult> {
  const rssDir = opts.node ? await mkdtemp(join(tmpdir(), 'blobshift-bench-rss-')) : undefined;
  const rssFile = rssDir ? join(rssDir, 'rss') : undefined;
  const env: NodeJS.ProcessEnv = opts.exactEnv ?? { ...process.env, ...opts.env };
  if (rssFile) env.BENCH_RSS_FILE = rssFile;
  const started = performance.now();
  const child = spawn(command, opts.node ? ['--import', RSS_PROBE, ...args] : args, {
    cwd: opts.cwd ?? REPO,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 15 * 60_000);
  const code = await new Promise<number>((resolvePromise, reject) => {
    child.on('error', reject);
    child.on('close', (c, signal) => resolvePromise(c ?? (signal ? 128 : 1)));
  });
  clearTimeout(timer);
  const seconds = (performance.now() - started) / 1000;
  let maxRss: number | undefined;
  if (rssFile && rssDir) {
    const text = await readFile(rssFile, 'utf8').catch(() => undefined);
    if (text !== undefined) maxRss = Number(text) * 1024;
    await rm(rssDir, { recursive: true, force: true });
  }
  return { code, stdout, stderr, seconds, maxRss };
}

/** The CLI as users run it: the compiled `dist/` when built, else through tsx. */
export function cliCommand(): { args: string[]; compiled: boolean } {
  const compiled = join(REPO, 'dist', 'scripts', 'cli.js');
  if (existsSync(compiled)) return { args: [compiled], compiled: true };
  return { args: ['--import', 'tsx', join(REPO, 'scripts', 'cli.ts')], compiled: false };
}

/** Runs `blobshift …` as a child (compiled when built), with its peak RSS. */
export function runCli(args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}) {
  // BENCH_CLI_NODE_ARGS: extra node flags for the CLI, e.g. `--cpu-prof --cpu-prof-dir=prof`.
  const nodeArgs = (opts.env?.BENCH_CLI_NODE_ARGS ?? process.env.BENCH_CLI_NODE_ARGS ?? '')
    .split(' ')
    .filter(Boolean);
  return run(process.execPath, [...nodeArgs, ...cliCommand().args, ...args], { ...opts, node: true });
}

/** Runs one of the bench's helper scripts (TypeScript, through tsx) as a child. */
export function runHelper(script: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}) {
  return run(process.execPath, ['--import', 'tsx', join(REPO, 'scripts', 'bench', script), ...args], {
    ...opts,
    node: true,
  });
}

/** The last line of a child's stdout, parsed as JSON. */
export function lastJson<T>(r: ChildResult, what: string): T {
  // One JSON document: the whole output, or (after other lines) the last line.
  const text = r.stdout.trim();
  const lines = text.split('\n');
  try {
    if (text.startsWith('{')) return JSON.parse(text) as T;
    return JSON.parse(lines[lines.length - 1] ?? '') as T;
  } catch {
    throw new Error(
      `${what} exited ${r.code} without a JSON result:\n${r.stdout}\n${r.stderr}`.slice(0, 4000),
    );
  }
}

// ---------------------------------------------------------------------------
// s3rver in a child process

export interface S3rverChild {
  endpoint: string;
  directory: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** Starts s3rver as a child process (legacy OpenSSL provider for its listing tokens) on 127.0.0.1. */
export async function startS3rverChild(): Promise<S3rverChild> {
  const directory = await scratch('s3rver');
  const child = spawn(
    process.execPath,
    [
      '--openssl-legacy-provider',
      '--import',
      'tsx',
      join(REPO, 'scripts', 'bench', 's3rver-child.ts'),
      directory,
    ],
    { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const port = await new Promise<number>((resolvePromise, reject) => {
    let buf = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      const m = /port (\d+)/.exec(buf);
      if (m?.[1]) resolvePromise(Number(m[1]));
    });
    child.on('exit', (code) => reject(new Error(`s3rver exited ${code} before listening`)));
    child.on('error', reject);
  });
  return {
    endpoint: `http://127.0.0.1:${port}`,
    directory,
    child,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/** Client settings for s3rver (checksums only where required: s3rver stores aws-chunked framing). */
export function s3rverClientConfig(endpoint: string) {
  return {
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { ...S3RVER_CREDENTIALS },
    requestChecksumCalculation: 'WHEN_REQUIRED' as const,
    responseChecksumValidation: 'WHEN_REQUIRED' as const,
  };
}

/** A plain SDK client for setting up and tearing down buckets (no blobshift settings). */
async function adminClient(endpoint: string, credentials: { accessKeyId: string; secretAccessKey: string }) {
  const { S3Client } = await import('@aws-sdk/client-s3');
  return new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { ...credentials },
  });
}

export async function createBuckets(endpoint: string, names: string[], credentials = S3RVER_CREDENTIALS) {
  const { CreateBucketCommand } = await import('@aws-sdk/client-s3');
  const client = await adminClient(endpoint, credentials);
  try {
    for (const Bucket of names) await client.send(new CreateBucketCommand({ Bucket }));
  } finally {
    client.destroy();
  }
}

/** Empties and deletes buckets (best effort per object). */
export async function deleteBuckets(endpoint: string, names: string[], credentials = S3RVER_CREDENTIALS) {
  const { DeleteBucketCommand, DeleteObjectsCommand, ListObjectsV2Command } = await import(
    '@aws-sdk/client-s3'
  );
  const client = await adminClient(endpoint, credentials);
  try {
    for (const Bucket of names) {
      for (;;) {
        const page = await client.send(new ListObjectsV2Command({ Bucket, MaxKeys: 1000 }));
        const keys = (page.Contents ?? []).flatMap((o) => (o.Key ? [{ Key: o.Key }] : []));
        if (keys.length === 0) break;
        await client.send(new DeleteObjectsCommand({ Bucket, Delete: { Objects: keys, Quiet: true } }));
      }
      await client.send(new DeleteBucketCommand({ Bucket }));
    }
  } finally {
    client.destroy();
  }
}

// ---------------------------------------------------------------------------
// A counting proxy

export interface CountingProxy {
  endpoint: string;
  /** Requests seen since the last reset, by `METHOD kind` (kind: list, object, bucket). */
  counts(): Record<string, number>;
  total(): number;
  /** Response body bytes sent back to clients since the last reset. */
  bytesOut(): number;
  reset(): void;
  close(): Promise<void>;
}

/** An HTTP proxy on 127.0.0.1 in front of `target` that counts every request it forwards. */
export async function startCountingProxy(target: string): Promise<CountingProxy> {
  const url = new URL(target);
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  let counts: Record<string, number> = {};
  let bytes = 0;
  const server: Server = createServer((req, res) => {
    const path = req.url ?? '/';
    const [pathname = '/', query = ''] = path.split('?');
    const segments = pathname.split('/').filter(Boolean).length;
    const kind =
      query.includes('list-type') || (segments === 1 && req.method === 'GET')
        ? 'list'
        : segments > 1
          ? 'object'
          : 'bucket';
    const name = `${req.method} ${kind}`;
    counts[name] = (counts[name] ?? 0) + 1;
    const upstream = httpRequest(
      { host: url.hostname, port: url.port, method: req.method, path, headers: req.headers, agent },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.on('data', (d: Buffer) => {
          bytes += d.length;
        });
        up.pipe(res);
      },
    );
    upstream.on('error', () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    req.pipe(upstream);
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    counts: () => ({ ...counts }),
    total: () => Object.values(counts).reduce((a, b) => a + b, 0),
    bytesOut: () => bytes,
    reset() {
      counts = {};
      bytes = 0;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      agent.destroy();
    },
  };
}

// ---------------------------------------------------------------------------
// Seeding

/** Fixed-width keys: byte order = number order = any server's directory order. */
export function keyFor(prefix: string, i: number): string {
  return `${prefix}${String(i).padStart(8, '0')}`;
}

/** Writes `count` files of `size` random-ish bytes straight into a filesystem backend's root. */
export async function seedFiles(
  root: string,
  prefix: string,
  count: number,
  size: number,
): Promise<string[]> {
  await mkdir(root, { recursive: true });
  const keys: string[] = [];
  const base = Buffer.alloc(size);
  for (let i = 0; i < size; i++) base[i] = (i * 31 + 7) & 0xff;
  const batch: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    const key = keyFor(prefix, i);
    keys.push(key);
    const body = Buffer.from(base);
    body.writeUInt32BE(i, 0);
    batch.push(writeFile(join(root, key), body));
    if (batch.length >= 64) await Promise.all(batch.splice(0));
  }
  await Promise.all(batch);
  return keys;
}

/** Creates a SQLite metadata database with one row per key. */
export async function seedMeta(file: string, rows: { key: string; size: number }[]): Promise<void> {
  const { MetaDB } = await import('../../lib/meta/index.js');
  const meta = await MetaDB.open(
    { client: 'better-sqlite3', connection: { filename: file }, useNullAsDefault: true },
    { create: true },
  );
  try {
    await meta.addMany(
      rows.map((r) => ({ key: r.key, parentId: 'bench', type: 'file', contentLength: r.size })),
    );
  } finally {
    await meta.close();
  }
}

/** Writes a blobshift config file; returns its path. */
export async function writeConfig(dir: string, config: Record<string, unknown>): Promise<string> {
  const file = join(dir, 'blobshift.config.json');
  await writeFile(file, `${JSON.stringify(config, null, 2)}\n`);
  return file;
}

export function s3BackendConfig(endpoint: string, bucket: string, credentials = S3RVER_CREDENTIALS) {
  return {
    type: 's3',
    bucket,
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { ...credentials },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  };
}

export function sqliteMetaConfig(file: string) {
  return { client: 'better-sqlite3', connection: { filename: file } };
}

/** Parses the JSON summary `blobshift backfill --json` prints. */
export interface BackfillJson {
  status: string;
  exitCode: number;
  total: number;
  copied: number;
  present: number;
  failed: number;
  notFound: number;
  bytes: number;
  seconds: number;
  rate: number;
}

/** `blobshift backfill --json --no-progress` with a config; throws unless it completed cleanly. */
export async function backfillCli(
  config: string,
  extra: string[],
  opts: { env?: NodeJS.ProcessEnv } = {},
): Promise<{ result: ChildResult; summary: BackfillJson }> {
  const logDir = join(dirname(config), 'logs');
  const result = await runCli(
    [
      'backfill',
      '-c',
      config,
      '--log-dir',
      logDir,
      '--json',
      '--no-progress',
      '--log-format',
      'json',
      ...extra,
    ],
    opts,
  );
  const summary = lastJson<BackfillJson>(result, 'blobshift backfill');
  if (summary.exitCode !== 0) {
    throw new Error(`backfill exited ${summary.exitCode}: ${result.stdout}\n${result.stderr}`.slice(0, 4000));
  }
  return { result, summary };
}

// ---------------------------------------------------------------------------
// rclone

export function rcloneAvailable(): boolean {
  return ['/usr/bin/rclone', '/usr/local/bin/rclone'].some((p) => existsSync(p));
}

/** An rclone config with one S3 remote `dst` (provider Other, path style). */
export async function rcloneConfig(dir: string, endpoint: string, credentials = S3RVER_CREDENTIALS) {
  const file = join(dir, 'rclone.conf');
  await writeFile(
    file,
    [
      '[dst]',
      'type = s3',
      'provider = Other',
      `access_key_id = ${credentials.accessKeyId}`,
      `secret_access_key = ${credentials.secretAccessKey}`,
      `endpoint = ${endpoint}`,
      'region = us-east-1',
      'force_path_style = true',
      '',
    ].join('\n'),
  );
  return file;
}

/** Runs rclone; AWS_CA_BUNDLE is unset for it alone (its S3 backend fails to start with it). */
export function rclone(args: string[], configFile: string): Promise<ChildResult> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.AWS_CA_BUNDLE;
  return run('rclone', ['--config', configFile, ...args], { exactEnv: env });
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** The table every benchmark prints (and `index.ts` prints once for all). */
export function formatTable(rows: BenchRow[]): string {
  const head = ['target', 'our figure', 'comparison figure', 'ratio', 'target met?'];
  const body = rows.map((r) => [
    r.target,
    r.ours,
    r.comparison,
    r.ratio,
    r.met === undefined ? 'n/a' : r.met ? 'yes' : 'NO',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => (row[i] ?? '').length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  const out = [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...body.map(line)];
  const notes = rows.filter((r) => r.note).map((r) => `- ${r.target}: ${r.note}`);
  return [...out, ...(notes.length ? ['', ...notes] : [])].join('\n');
}

/** Runs one benchmark file on its own: prints its rows as the table. */
export async function standalone(bench: () => Promise<BenchRow[]>): Promise<void> {
  try {
    const rows = await bench();
    process.stdout.write(`${formatTable(rows)}\n`);
  } catch (err) {
    process.stderr.write(
      `bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exitCode = 1;
  }
}

/** True when this module is the process's entry point. */
export function isMain(url: string): boolean {
  return process.argv[1] !== undefined && fileURLToPath(url) === resolve(process.argv[1]);
}
