/**
 * Shared set-up for the check-blob-logs, verify and cleanup-old tests: two
 * backends, metadata on a fresh SQLite file (and on MariaDB and PostgreSQL
 * when BLOBSHIFT_TEST_MYSQL and BLOBSHIFT_TEST_PG are set), a log
 * directory, and a BlobDB wrapper that counts calls and lets a test change
 * what one method answers.
 *
 * Which backends meet which databases (the CI budget): memory backends with
 * SQLite and MariaDB; filesystem backends with every database; s3rver with
 * SQLite; Ceph RGW with MariaDB and PostgreSQL (without RGW, PostgreSQL
 * meets s3rver instead), so PostgreSQL runs with files and with one S3.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import { FilesystemBlobDB } from '../../lib/backends/fs/index.js';
import { MemoryBlobDB } from '../../lib/backends/memory/index.js';
import { createS3Client, S3BlobDB, type S3ClientConfigLike } from '../../lib/backends/s3/index.js';
import type { NewBlobMeta } from '../../lib/contract/meta.js';
import type {
  BlobBody,
  BlobDB,
  BlobInfo,
  BulkDeleteResult,
  Capabilities,
  ListOptions,
  PutOptions,
} from '../../lib/contract/types.js';
import type { MetaDB } from '../../lib/meta/index.js';
import { announceDatabases, META_DATABASES, type MetaDatabase } from '../support/databases.js';
import { announce, RGW_ENDPOINT } from '../support/env.js';
import {
  createBucket,
  deleteBucket,
  rgwClientConfig,
  type S3rverHandle,
  startS3rver,
} from '../support/s3rver.js';

export interface Fixture {
  dir: string;
  logDir: string;
  meta: MetaDB;
  oldDb: BlobDB;
  newDb: BlobDB;
  dispose(): Promise<void>;
}

export interface Target {
  name: string;
  /** Starts what the target's tests share (an S3 server); `after` stops it. */
  before(): Promise<void>;
  after(): Promise<void>;
  make(): Promise<Fixture>;
}

type MetaTarget = MetaDatabase;

interface BackendTarget {
  name: string;
  before?(): Promise<void>;
  after?(): Promise<void>;
  /** The old and the new backend of one test, and how to remove what they leave. */
  create(dir: string): Promise<{ oldDb: BlobDB; newDb: BlobDB; drop(): Promise<void> }>;
  /** Metadata databases to pair it with (default: every one). */
  metas?: (all: MetaTarget[]) => MetaTarget[];
}

const metaTargets: MetaTarget[] = META_DATABASES;
announceDatabases('check-blob-logs, verify, cleanup-old');

const named =
  (...names: string[]) =>
  (all: MetaTarget[]) =>
    all.filter((m) => names.includes(m.name));

/** A new S3 bucket per test for the new backend; the old one on files, the usual migration. */
function s3Target(
  name: string,
  config: () => S3ClientConfigLike,
  start?: () => Promise<() => Promise<void>>,
) {
  let admin: S3Client | undefined;
  let stop: (() => Promise<void>) | undefined;
  const target: BackendTarget = {
    name,
    async before() {
      if (start) stop = await start();
      admin = createS3Client(config());
    },
    async after() {
      admin?.destroy();
      await stop?.();
    },
    async create(dir) {
      if (!admin) throw new Error(`${name}: before() did not run`);
      const client = admin;
      const bucket = await createBucket(client);
      const newDb = new S3BlobDB({ bucket, clientConfig: config() });
      return {
        oldDb: new FilesystemBlobDB({ root: join(dir, 'old') }),
        newDb,
        drop: () => deleteBucket(client, bucket),
      };
    },
  };
  return target;
}

let s3rver: S3rverHandle | undefined;
const backendTargets: BackendTarget[] = [
  {
    name: 'memory',
    create: async () => ({ oldDb: new MemoryBlobDB(), newDb: new MemoryBlobDB(), drop: async () => {} }),
    metas: named('SQLite', 'MariaDB'),
  },
  {
    name: 'filesystem',
    create: async (dir) => ({
      oldDb: new FilesystemBlobDB({ root: join(dir, 'old') }),
      newDb: new FilesystemBlobDB({ root: join(dir, 'new') }),
      drop: async () => {},
    }),
  },
  {
    ...s3Target(
      's3rver (new) and filesystem (old)',
      () => {
        if (!s3rver) throw new Error('s3rver is not running');
        return s3rver.clientConfig();
      },
      async () => {
        const server = await startS3rver();
        s3rver = server;
        return () => server.stop();
      },
    ),
    metas: RGW_ENDPOINT ? named('SQLite') : named('SQLite', 'PostgreSQL'),
  },
];
if (RGW_ENDPOINT) {
  backendTargets.push({
    ...s3Target('Ceph RGW (new) and filesystem (old)', () => rgwClientConfig()),
    metas: named('MariaDB', 'PostgreSQL'),
  });
} else {
  announce('BLOBSHIFT_TEST_RGW', 'Ceph RGW (check-blob-logs, verify, cleanup-old)');
}

/** Every combination of backends and metadata database the suites run on (S3 ones on one database each). */
export const TARGETS: Target[] = backendTargets.flatMap((b) =>
  (b.metas ? b.metas(metaTargets) : metaTargets).map((m) => ({
    name: `${b.name} backends, ${m.name} metadata`,
    before: async () => {
      await b.before?.();
    },
    after: async () => {
      await b.after?.();
    },
    async make(): Promise<Fixture> {
      const dir = await mkdtemp(join(tmpdir(), 'blobshift-close-'));
      const { meta, drop } = await m.open(dir);
      const { oldDb, newDb, drop: dropBackends } = await b.create(dir);
      return {
        dir,
        logDir: join(dir, 'logs'),
        meta,
        oldDb,
        newDb,
        async dispose() {
          await dropBackends();
          await oldDb.close();
          await newDb.close();
          await meta.close();
          await drop();
          await rm(dir, { recursive: true, force: true });
        },
      };
    },
  })),
);

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export interface SeedOptions {
  type?: string;
  key?: string;
  body?: Buffer;
  /** Store in old (default true). */
  inOld?: boolean;
  /** Store in new (default false). */
  inNew?: boolean;
  /** Add a metadata row (default true). */
  row?: boolean;
  /** Put the sha256 in the row (default true). */
  withSha?: boolean;
  expiresOn?: Date;
}

/** One blob, where the options say; resolves its key and body. */
export async function seed(f: Fixture, opts: SeedOptions = {}): Promise<{ key: string; body: Buffer }> {
  const type = opts.type ?? 'attachment';
  const key = opts.key ?? `${type}/${randomBytes(6).toString('hex')}`;
  const body = opts.body ?? randomBytes(64 + Math.floor(Math.random() * 64));
  if (opts.inOld !== false) await f.oldDb.put(key, body, { contentType: 'application/x-test' });
  if (opts.inNew === true) await f.newDb.put(key, body, { contentType: 'application/x-test' });
  if (opts.row !== false) {
    const row: NewBlobMeta = {
      key,
      parentId: 'case-1',
      type,
      name: 'file.bin',
      contentLength: body.length,
      contentType: 'application/x-test',
      sha256: opts.withSha === false ? null : sha256(body),
      ...(opts.expiresOn ? { expiresOn: opts.expiresOn } : {}),
    };
    await f.meta.add(row);
  }
  return { key, body };
}

export async function readStream(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(typeof c === 'string' ? Buffer.from(c) : (c as Buffer));
  return Buffer.concat(chunks);
}

type Method = 'put' | 'get' | 'stat' | 'exists' | 'size' | 'delete' | 'bulkDelete' | 'list';

/** Delegates to `inner`, counting calls per method; `override` replaces a method's answer. */
export class CountingBlobDB implements BlobDB {
  readonly calls: Record<Method, number> = {
    put: 0,
    get: 0,
    stat: 0,
    exists: 0,
    size: 0,
    delete: 0,
    bulkDelete: 0,
    list: 0,
  };
  readonly inner: BlobDB;
  override: {
    list?: (opts?: ListOptions) => AsyncIterable<BlobInfo>;
    bulkDelete?: (keys: string[]) => Promise<BulkDeleteResult>;
    exists?: (key: string) => Promise<boolean>;
    stat?: (key: string) => Promise<BlobInfo>;
    get?: (key: string) => Promise<Readable>;
  } = {};

  constructor(inner: BlobDB) {
    this.inner = inner;
  }

  get capabilities(): Capabilities {
    return this.inner.capabilities;
  }

  put(key: string, body: BlobBody, opts?: PutOptions): Promise<BlobInfo> {
    this.calls.put++;
    return this.inner.put(key, body, opts);
  }
  get(key: string): Promise<Readable> {
    this.calls.get++;
    return this.override.get ? this.override.get(key) : this.inner.get(key);
  }
  stat(key: string): Promise<BlobInfo> {
    this.calls.stat++;
    return this.override.stat ? this.override.stat(key) : this.inner.stat(key);
  }
  exists(key: string): Promise<boolean> {
    this.calls.exists++;
    return this.override.exists ? this.override.exists(key) : this.inner.exists(key);
  }
  size(key: string): Promise<number> {
    this.calls.size++;
    return this.inner.size(key);
  }
  delete(key: string): Promise<boolean> {
    this.calls.delete++;
    return this.inner.delete(key);
  }
  bulkDelete(keys: string[]): Promise<BulkDeleteResult> {
    this.calls.bulkDelete++;
    return this.override.bulkDelete ? this.override.bulkDelete(keys) : this.inner.bulkDelete(keys);
  }
  list(opts?: ListOptions): AsyncIterable<BlobInfo> {
    this.calls.list++;
    return this.override.list ? this.override.list(opts) : this.inner.list(opts);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
