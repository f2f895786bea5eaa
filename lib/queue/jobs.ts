/**
 * What the producer and the workers of a scale-out backfill share: the shape
 * of a chunk job and its result, the migration id both sides compute from
 * their config, deterministic job ids, and Redis connection settings.
 *
 * One job per chunk of metadata rows (never one per blob): a job holds only
 * the rows of its id range that need copying. Nothing here imports BullMQ or
 * ioredis at load time.
 */
import { createHash } from 'node:crypto';
import { PreflightError } from '../contract/errors.js';
import type { RunCounts } from '../contract/meta.js';
import { redactString } from '../contract/redact.js';
import type { MissingRecord } from '../engine/missing-log.js';

/** The job format this code reads and writes. */
export const JOB_VERSION = 1;
/** BullMQ job name of a chunk. */
export const CHUNK_JOB = 'chunk';

/** Printable descriptions (no secrets) of the three places a migration touches. */
export interface MigrationNames {
  meta: string;
  old: string;
  new: string;
}

/** One metadata row a worker copies. */
export interface JobRow {
  id: number;
  key: string;
  contentLength: number;
  contentType: string | null;
  type: string;
  parentId: string;
  /** The snapshot holds the key with another size: ask the new backend before copying. */
  check?: true;
}

export interface ChunkJobData {
  v: typeof JOB_VERSION;
  migrationId: string;
  migration: MigrationNames;
  run: string;
  shard: string;
  /** The chunk's id range: rows with `after < id <= upTo`. */
  after: number;
  upTo: number;
  rows: JobRow[];
}

export interface ChunkJobResult {
  v: typeof JOB_VERSION;
  migrationId: string;
  /** Counts of this chunk's job rows (`seconds` is 0). */
  counts: RunCounts;
  /** Rows not found or failed, for the producer's missing-blob log. */
  missing: MissingRecord[];
  /** `host:pid` of the worker that ran it. */
  worker: string;
}

/**
 * The migration id: a hash of the metadata database and table and of the old
 * and new backends, as each side's config describes them. A worker refuses a
 * job whose id differs from its own.
 */
export function migrationId(names: MigrationNames): string {
  return createHash('sha256')
    .update(JSON.stringify(['blobshift-migration', names.meta, names.old, names.new]))
    .digest('hex')
    .slice(0, 24);
}

/**
 * The job id of a chunk. The same migration, run, shard, run epoch (new on
 * `--reset`) and id range always give the same id, so enqueueing a chunk again
 * (a producer rerun) finds the existing job instead of adding a second one.
 */
export function chunkJobId(parts: {
  migrationId: string;
  run: string;
  shard: string;
  epoch: string;
  after: number;
  upTo: number;
}): string {
  return `${runJobPrefix(parts)}${parts.after}-${parts.upTo}`;
}

/** What every job id of one run (and epoch) starts with. */
export function runJobPrefix(parts: {
  migrationId: string;
  run: string;
  shard: string;
  epoch: string;
}): string {
  const shard = parts.shard === '' ? 'all' : parts.shard.replace('/', 'of');
  // BullMQ refuses ':' in custom ids; run names are [A-Za-z0-9._-].
  return `${parts.migrationId.slice(0, 16)}.${parts.run}.${shard}.${parts.epoch}.`;
}

/** ioredis connection settings, as far as blobshift sets them. */
export interface RedisConnection {
  host: string;
  port: number;
  db: number;
  username?: string;
  password?: string;
  tls?: Record<string, never>;
  maxRetriesPerRequest: number | null;
  enableReadyCheck?: boolean;
  connectTimeout?: number;
  lazyConnect?: boolean;
  retryStrategy?: (times: number) => number | null;
}

/**
 * Connection settings from a `redis://[user:password@]HOST[:PORT][/DB]` URL.
 * `blocking` connections (workers, queue events) wait forever on Redis
 * (`maxRetriesPerRequest: null`, as BullMQ requires); the producer's commands
 * give up after a few retries so a lost Redis ends the run (exit 3).
 */
export function redisConnection(url: string, opts: { blocking: boolean }): RedisConnection {
  const u = new URL(url);
  const db = u.pathname.replace(/^\//, '');
  const decode = (v: string) => {
    try {
      return decodeURIComponent(v);
    } catch {
      return v;
    }
  };
  return {
    host: u.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: u.port === '' ? 6379 : Number(u.port),
    db: db === '' ? 0 : Number(db),
    ...(u.username !== '' ? { username: decode(u.username) } : {}),
    ...(u.password !== '' ? { password: decode(u.password) } : {}),
    ...(u.protocol === 'rediss:' ? { tls: {} } : {}),
    maxRetriesPerRequest: opts.blocking ? null : 3,
    connectTimeout: 10_000,
  };
}

/** `redis://HOST:PORT/DB queue NAME`, without user or password. */
export function describeQueue(url: string, name: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname || '/0'} queue ${name}`;
  } catch {
    return redactString(`${url} queue ${name}`);
  }
}

/** Reaches Redis once (PING) or throws a `PreflightError` naming it (never its password). */
export async function checkRedis(url: string, name: string): Promise<void> {
  const { Redis } = await import('ioredis');
  const client = new Redis({
    ...redisConnection(url, { blocking: false }),
    lazyConnect: true,
    maxRetriesPerRequest: 1,
    connectTimeout: 5000,
    retryStrategy: () => null,
  });
  // The cause (a refused password, a refused connection) comes as an 'error'
  // event; the rejection itself often only says the connection closed.
  let cause: unknown;
  client.on('error', (err: unknown) => {
    cause ??= err;
  });
  try {
    await client.connect();
    await client.ping();
  } catch (err) {
    const reason = cause ?? err;
    const why = reason instanceof Error ? reason.message : String(reason);
    throw new PreflightError(
      `Redis ${describeQueue(url, name)}`,
      `it cannot be reached: ${redactString(why)}`,
      {
        cause: err,
      },
    );
  } finally {
    client.disconnect();
  }
}

/** `true` when `value` looks like a chunk job of this version. */
export function isChunkJobData(value: unknown): value is ChunkJobData {
  if (value === null || typeof value !== 'object') return false;
  const v = value as Partial<ChunkJobData>;
  return (
    v.v === JOB_VERSION &&
    typeof v.migrationId === 'string' &&
    typeof v.run === 'string' &&
    typeof v.after === 'number' &&
    typeof v.upTo === 'number' &&
    Array.isArray(v.rows)
  );
}
