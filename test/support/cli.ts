/**
 * End-to-end helpers: spawn the real CLI (`node --import tsx scripts/cli.ts …`)
 * with its own environment and capture stdout, stderr and the exit code;
 * write a config file; seed an old filesystem backend plus metadata rows
 * quickly (plain files in the backend's layout, rows in batches).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import type { NewBlobMeta } from '../../lib/contract/meta.js';
import type { MetaDB } from '../../lib/meta/index.js';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = join(REPO, 'scripts', 'cli.ts');
/** tsx's loader by URL, so the child finds it from any working directory. */
const TSX = import.meta.resolve('tsx');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  cwd?: string;
  /** Added to a minimal environment (PATH, HOME, AWS_EC2_METADATA_DISABLED). */
  env?: Record<string, string>;
  /** Extra node options before the script (e.g. `--import`, a preload hook). */
  nodeArgs?: string[];
  /** The child is SIGKILLed after this long (default 90 s). */
  timeoutMs?: number;
}

function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? '/tmp',
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    // No credentials from the developer's own AWS files or environment.
    AWS_CONFIG_FILE: '/dev/null',
    AWS_SHARED_CREDENTIALS_FILE: '/dev/null',
    ...extra,
  };
}

export interface RunningCli {
  child: ChildProcess;
  /** Output so far. */
  readonly stdout: string;
  readonly stderr: string;
  done: Promise<CliResult>;
}

/** Starts the CLI; `done` resolves when it exits (never rejects). */
export function startCli(args: string[], opts: CliOptions = {}): RunningCli {
  const child = spawn(process.execPath, ['--import', TSX, ...(opts.nodeArgs ?? []), CLI, ...args], {
    cwd: opts.cwd ?? REPO,
    env: childEnv(opts.env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 90_000);
  const done = new Promise<CliResult>((resolvePromise) => {
    child.on('error', (err) => {
      stderr += String(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal, stdout, stderr });
    });
  });
  return {
    child,
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
    done,
  };
}

/** Runs the CLI to its end. */
export function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  return startCli(args, opts).done;
}

/** `backfill -c <config> --log-dir <logDir>`, then `flags` in their order. */
export function backfillArgs(config: string, logDir: string, ...flags: string[]): string[] {
  return ['backfill', '-c', config, '--log-dir', logDir, ...flags];
}

/** The `meta` section of a config for the SQLite database `meta.sqlite` in the CLI's working directory. */
export const SQLITE_META = { client: 'better-sqlite3', connection: { filename: './meta.sqlite' } };

/** Writes `config` as JSON to `file` (directories created). */
export async function writeConfig(file: string, config: unknown): Promise<string> {
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, `${JSON.stringify(config, null, 2)}\n`);
  return file;
}

export interface SeededBlob {
  key: string;
  size: number;
  sha256: string;
}

export function sha256(data: Buffer | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A key in the app's shape: two levels of fan-out, then a random name. */
export function blobKey(i: number): string {
  const h = createHash('sha1').update(String(i)).digest('hex');
  return `${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 20)}-${i}`;
}

/**
 * Writes `count` blobs (sizes from `sizeOf`, default 200 B – 4 KiB) as plain
 * files under `root` (the filesystem backend's layout) and their rows into
 * `meta`, in batches.
 */
export async function seedOldFs(
  meta: MetaDB,
  root: string,
  count: number,
  opts: { sizeOf?: (i: number) => number; type?: string; keyOf?: (i: number) => string } = {},
): Promise<SeededBlob[]> {
  const sizeOf = opts.sizeOf ?? ((i: number) => 200 + ((i * 7919) % 3900));
  const keyOf = opts.keyOf ?? blobKey;
  const blobs: SeededBlob[] = [];
  const made = new Set<string>();
  const BATCH = 500;
  for (let start = 0; start < count; start += BATCH) {
    const rows: NewBlobMeta[] = [];
    const writes: Promise<void>[] = [];
    for (let i = start; i < Math.min(count, start + BATCH); i++) {
      const key = keyOf(i);
      const data = randomBytes(sizeOf(i));
      const digest = sha256(data);
      blobs.push({ key, size: data.length, sha256: digest });
      const file = join(root, key);
      const dir = dirname(file);
      writes.push(
        (async () => {
          if (!made.has(dir)) {
            await mkdir(dir, { recursive: true });
            made.add(dir);
          }
          await writeFile(file, data);
        })(),
      );
      rows.push({
        key,
        parentId: `case-${i % 53}`,
        type: opts.type ?? 'attachment',
        contentLength: data.length,
        sha256: digest,
      });
    }
    await Promise.all(writes);
    await meta.addMany(rows);
  }
  return blobs;
}

/** sha256 of a file, or undefined when it is not there. */
export async function fileSha(file: string): Promise<string | undefined> {
  try {
    return sha256(await readFile(file));
  } catch {
    return undefined;
  }
}

/** The lines of the JSON-lines files given, parsed (torn lines skipped). */
export async function readJsonLines(files: string[]): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for (const f of files) {
    for (const line of (await readFile(f, 'utf8')).split('\n')) {
      if (!line.trim()) continue;
      try {
        out.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // a torn last line
      }
    }
  }
  return out;
}

/** Every object in a bucket: key → size. */
export async function listBucket(client: S3Client, bucket: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  let token: string | undefined;
  do {
    const page = await client.send(
      new ListObjectsV2Command({ Bucket: bucket, ...(token ? { ContinuationToken: token } : {}) }),
    );
    for (const o of page.Contents ?? []) if (o.Key) out.set(o.Key, o.Size ?? -1);
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return out;
}

/** sha256 of every listed blob, fetched 32 at a time. */
export async function bucketShas(
  client: S3Client,
  bucket: string,
  keys: string[],
): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  let next = 0;
  const worker = async () => {
    while (next < keys.length) {
      const key = keys[next++] as string;
      const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      const bytes = await res.Body?.transformToByteArray();
      out.set(key, sha256(bytes ?? new Uint8Array()));
    }
  };
  await Promise.all(Array.from({ length: 32 }, worker));
  return out;
}
