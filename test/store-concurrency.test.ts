/**
 * BlobStore: a put and a delete of the same key at the same time end in a
 * consistent state, a row exactly when there is a blob. First the two
 * interleavings that broke it, made certain with gates (a slow row write, a
 * slow blob delete); then many real concurrent put/delete pairs from two
 * stores (for MariaDB: two connection pools, as two app instances have) on
 * the filesystem and on S3, with the row writes slowed at random.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { MigratingBlobDB } from '../lib/app/migrating.js';
import { BlobStore } from '../lib/app/store.js';
import { FilesystemBlobDB } from '../lib/backends/fs/index.js';
import { S3BlobDB, type S3ClientConfigLike } from '../lib/backends/s3/index.js';
import { readAll } from '../lib/contract/body.js';
import { ConcurrentDeleteError } from '../lib/contract/errors.js';
import type { MetaStore } from '../lib/contract/meta.js';
import type { BlobBody, BlobDB, ListOptions, PutOptions } from '../lib/contract/types.js';
import { createKnex, MetaDB } from '../lib/meta/index.js';
import { dropOwnTables, POSTGRES } from './support/databases.js';
import { announce, MYSQL_URL, RGW_ENDPOINT, uniqueName } from './support/env.js';
import { tempDirs } from './support/fs.js';
import {
  createBucket,
  deleteBucket,
  rgwClientConfig,
  type S3rverHandle,
  startS3rver,
} from './support/s3rver.js';
import { sleep } from './support/time.js';
import { WrappedBlobDB } from './support/wrap.js';

const sha = (data: string) => createHash('sha256').update(data).digest('hex');

function gate(): { wait: () => Promise<void>; open: () => void } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { wait: () => opened, open };
}

interface MetaHooks {
  beforeUpsert?(key: string): Promise<void>;
  beforeDelete?(key: string): Promise<void>;
  /** Hide the optional `deleteIf`, as a MetaStore of the app's own making may lack it. */
  withoutDeleteIf?: boolean;
}

/** `meta` with its row writes delayed by hooks (the fault injection: a slow database). */
function hooked(meta: MetaStore, hooks: MetaHooks): MetaStore {
  return new Proxy(meta, {
    get(target, prop) {
      if (prop === 'deleteIf' && hooks.withoutDeleteIf) return undefined;
      const v = Reflect.get(target, prop, target) as unknown;
      if (typeof v !== 'function') return v;
      if (prop === 'upsert' && hooks.beforeUpsert) {
        return async (m: { key: string }) => {
          await hooks.beforeUpsert?.(m.key);
          return (v as (m: unknown) => Promise<unknown>).call(target, m);
        };
      }
      if (prop === 'delete' && hooks.beforeDelete) {
        return async (key: string) => {
          await hooks.beforeDelete?.(key);
          return (v as (k: string) => Promise<unknown>).call(target, key);
        };
      }
      return v.bind(target);
    },
  });
}

interface MetaPair {
  /** What the putting store uses. */
  a: MetaStore;
  /** What the deleting store uses: another pool where the database has them (two app instances). */
  b: MetaStore;
  close(): Promise<void>;
}

interface MetaTarget {
  name: string;
  open(): Promise<MetaPair>;
}

const metaTargets: MetaTarget[] = [
  {
    // One connection per process is how SQLite is shared (another process has its own).
    name: 'SQLite',
    async open() {
      const dir = await mkdtemp(join(tmpdir(), 'blobshift-race-'));
      const meta = await MetaDB.open({
        client: 'better-sqlite3',
        connection: { filename: join(dir, 'meta.sqlite') },
      });
      return {
        a: meta,
        b: meta,
        async close() {
          await meta.close();
          await rm(dir, { recursive: true, force: true });
        },
      };
    },
  },
];
if (MYSQL_URL) {
  const url = MYSQL_URL;
  metaTargets.push({
    name: 'MariaDB',
    async open() {
      const table = uniqueName('race_');
      const a = await MetaDB.open({ client: 'mysql2', connection: url }, { table });
      const b = await MetaDB.open({ client: 'mysql2', connection: url }, { table });
      return {
        a,
        b,
        async close() {
          await a.close();
          await b.close();
          const k = await createKnex({ client: 'mysql2', connection: url });
          try {
            for (const t of [table, `${table}_runs`, `${table}_migrations`, `${table}_migrations_lock`])
              await k.schema.dropTableIfExists(t);
          } finally {
            await k.destroy();
          }
        },
      };
    },
  });
} else {
  announce('BLOBSHIFT_TEST_MYSQL', 'MariaDB (BlobStore put/delete races)');
}
if (POSTGRES) {
  const pg = POSTGRES;
  metaTargets.push({
    name: 'PostgreSQL',
    async open() {
      const table = uniqueName('race_');
      const a = await MetaDB.open(pg.knexConfig(''), { table });
      const b = await MetaDB.open(pg.knexConfig(''), { table });
      return {
        a,
        b,
        async close() {
          await a.close();
          await b.close();
          await dropOwnTables(pg.knexConfig(''), table);
        },
      };
    },
  });
} else {
  announce('BLOBSHIFT_TEST_PG', 'PostgreSQL (BlobStore put/delete races)');
}

interface DbTarget {
  name: string;
  /** A MigratingBlobDB for one test, and how to release what it made. */
  open(): Promise<{ db: MigratingBlobDB; close(): Promise<void> }>;
}

const freshDir = tempDirs('blobshift-race-fs-');

let s3rver: S3rverHandle | undefined;
after(async () => {
  await s3rver?.stop();
});

/** New on S3 (a fresh bucket), old on files: the app's wiring during a migration. */
/**
 * s3rver handles a PUT and a DELETE of one key at the same moment in its own
 * files, unguarded: the DELETE can pull the object's file from under the
 * PUT, which then throws in the server (an uncaught ENOENT), where S3 and
 * RGW apply each request whole (it also prunes a deleted key's emptied
 * directory under other keys' PUTs: the racing keys are flat). For s3rver the requests to one key go one at
 * a time (the steps of puts and deletes still interleave between requests,
 * which is what these tests race); RGW gets them all at once.
 */
class OneRequestPerKey implements BlobDB {
  readonly #inner: BlobDB;
  readonly #tails = new Map<string, Promise<unknown>>();
  constructor(inner: BlobDB) {
    this.#inner = inner;
  }
  get capabilities() {
    return this.#inner.capabilities;
  }
  #one<T>(key: string, op: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    const run = previous.then(op, op);
    const tail = run.catch(() => undefined);
    this.#tails.set(key, tail);
    void tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    });
    return run;
  }
  put(key: string, body: BlobBody, opts?: PutOptions) {
    return this.#one(key, () => this.#inner.put(key, body, opts));
  }
  get(key: string) {
    return this.#one(key, () => this.#inner.get(key));
  }
  stat(key: string) {
    return this.#one(key, () => this.#inner.stat(key));
  }
  exists(key: string) {
    return this.#one(key, () => this.#inner.exists(key));
  }
  size(key: string) {
    return this.#one(key, () => this.#inner.size(key));
  }
  delete(key: string) {
    return this.#one(key, () => this.#inner.delete(key));
  }
  bulkDelete(keys: string[]) {
    return this.#inner.bulkDelete(keys);
  }
  list(opts?: ListOptions) {
    return this.#inner.list(opts);
  }
  close() {
    return this.#inner.close();
  }
}

function s3Target(
  name: string,
  clientConfig: () => Promise<S3ClientConfigLike>,
  oneRequestPerKey = false,
): DbTarget {
  return {
    name,
    async open() {
      const config = await clientConfig();
      const admin = new S3BlobDB({ bucket: 'unused', clientConfig: config });
      const bucket = await createBucket(admin.client);
      const s3 = new S3BlobDB({ bucket, clientConfig: config });
      const db = new MigratingBlobDB(
        oneRequestPerKey ? new OneRequestPerKey(s3) : s3,
        new FilesystemBlobDB({ root: await freshDir() }),
      );
      return {
        db,
        async close() {
          await db.close();
          await deleteBucket(admin.client, bucket);
          await admin.close();
        },
      };
    },
  };
}

const dbTargets: DbTarget[] = [
  {
    name: 'MigratingBlobDB(files, files)',
    async open() {
      const db = new MigratingBlobDB(
        new FilesystemBlobDB({ root: await freshDir() }),
        new FilesystemBlobDB({ root: await freshDir() }),
      );
      return { db, close: () => db.close() };
    },
  },
  s3Target(
    'MigratingBlobDB(S3 on s3rver, files)',
    async () => {
      s3rver ??= await startS3rver();
      return s3rver.clientConfig();
    },
    true,
  ),
];
if (RGW_ENDPOINT) {
  dbTargets.push(s3Target('MigratingBlobDB(S3 on RGW, files)', async () => rgwClientConfig()));
} else {
  announce('BLOBSHIFT_TEST_RGW', 'Ceph RGW (BlobStore put/delete races)');
}

/** Row ⇔ blob for every key, and a row's hash is its blob's. */
async function expectConsistent(meta: MetaStore, db: BlobDB, keys: string[]): Promise<void> {
  for (const key of keys) {
    const row = await meta.get(key);
    const blob = await db.exists(key);
    expect(blob, `${key}: ${row ? 'a row without its blob' : 'a blob without a row'}`).to.equal(
      row !== undefined,
    );
    if (row) {
      const bytes = await readAll(await db.get(key));
      expect(createHash('sha256').update(bytes).digest('hex'), `${key}: the row's sha256`).to.equal(
        row.sha256,
      );
    }
  }
}

for (const mt of metaTargets) {
  describe(`BlobStore put and delete of one key at once (${mt.name})`, function () {
    this.timeout(60_000);
    let metas: MetaPair;
    let base: MigratingBlobDB;
    let closeDb: () => Promise<void>;

    beforeEach(async () => {
      metas = await mt.open();
      ({ db: base, close: closeDb } = await (dbTargets[0] as DbTarget).open());
    });
    afterEach(async () => {
      await closeDb();
      await metas.close();
    });

    it('a delete between the put’s blob and its row: the put fails with ConcurrentDeleteError, nothing stays', async () => {
      const key = 'race/put-then-delete';
      const blobWritten = gate();
      const rowMayGo = gate();
      const putter = new BlobStore({
        db: new WrappedBlobDB(base, { afterPut: () => blobWritten.open() }),
        meta: hooked(metas.a, { beforeUpsert: () => rowMayGo.wait() }),
      });
      const deleter = new BlobStore({ db: base, meta: metas.b });
      const put = putter.put('new bytes', { parentId: 'p', type: 't', key }).then(
        () => undefined,
        (err: unknown) => err,
      );
      await blobWritten.wait();
      expect(await deleter.delete(key), 'the delete found the blob').to.equal(true);
      rowMayGo.open();
      const err = await put;
      expect(err).to.be.instanceOf(ConcurrentDeleteError);
      expect(err).to.have.property('code', 'E_CONCURRENT_DELETE');
      expect(err).to.have.property('key', key);
      expect(await metas.a.get(key)).to.equal(undefined);
      expect(await base.exists(key)).to.equal(false);
    });

    for (const withoutDeleteIf of [false, true]) {
      it(`a put between the delete’s row and its blob: the delete takes the put’s row too${withoutDeleteIf ? ' (a MetaStore without deleteIf)' : ''}`, async () => {
        const key = 'race/delete-then-put';
        const writer = new BlobStore({ db: base, meta: metas.a });
        await writer.put('old bytes', { parentId: 'p', type: 't', key });
        const rowGone = gate();
        const blobMayGo = gate();
        const deleter = new BlobStore({
          db: new WrappedBlobDB(base, {
            async before(method) {
              if (method !== 'delete') return;
              rowGone.open();
              await blobMayGo.wait();
            },
          }),
          meta: hooked(metas.b, { withoutDeleteIf }),
        });
        const del = deleter.delete(key);
        await rowGone.wait();
        // The put completes while the delete waits to remove the blob: put, then delete.
        const row = await writer.put('new bytes', { parentId: 'p', type: 't', key });
        expect(row.sha256).to.equal(sha('new bytes'));
        blobMayGo.open();
        expect(await del).to.equal(true);
        expect(await metas.a.get(key)).to.equal(undefined);
        expect(await base.exists(key)).to.equal(false);
      });
    }

    it('bulkDelete: a put between its rows and its blobs loses its row too', async () => {
      const writer = new BlobStore({ db: base, meta: metas.a });
      const keys = ['bulk/a', 'bulk/b', 'bulk/c'];
      for (const key of keys) await writer.put(`old ${key}`, { parentId: 'p', type: 't', key });
      const rowsGone = gate();
      const blobsMayGo = gate();
      const deleter = new BlobStore({
        db: new WrappedBlobDB(base, {
          async before(method) {
            if (method !== 'bulkDelete') return;
            rowsGone.open();
            await blobsMayGo.wait();
          },
        }),
        meta: metas.b,
      });
      const del = deleter.bulkDelete(keys);
      await rowsGone.wait();
      await writer.put('new b', { parentId: 'p', type: 't', key: 'bulk/b' });
      blobsMayGo.open();
      expect((await del).errors).to.deep.equal([]);
      await expectConsistent(metas.a, base, keys);
      expect(await metas.a.get('bulk/b')).to.equal(undefined);
    });

    it('a put whose row write fails removes the blob it wrote for a new key, never one a row references', async () => {
      const broken = new BlobStore({
        db: base,
        meta: hooked(metas.a, {
          async beforeUpsert() {
            throw Object.assign(new Error('Connection lost: The server closed the connection.'), {
              code: 'PROTOCOL_CONNECTION_LOST',
            });
          },
        }),
      });
      const err = await broken
        .put('never recorded', { parentId: 'p', type: 't', key: 'fail/new' })
        .catch((e: unknown) => e);
      expect(err).to.have.property('code', 'E_METADATA');
      expect((err as Error).message).to.include('PROTOCOL_CONNECTION_LOST');
      expect(await base.exists('fail/new'), 'no orphan').to.equal(false);
      // An overwrite: the committed row keeps a blob (the new bytes; the old are gone).
      const writer = new BlobStore({ db: base, meta: metas.a });
      await writer.put('recorded', { parentId: 'p', type: 't', key: 'fail/old' });
      await broken.put('rewritten', { parentId: 'p', type: 't', key: 'fail/old' }).catch(() => undefined);
      expect(await metas.a.get('fail/old')).to.not.equal(undefined);
      expect(await base.exists('fail/old')).to.equal(true);
    });
  });

  for (const dt of dbTargets) {
    describe(`BlobStore put/delete pairs at once end row ⇔ blob (${mt.name}, ${dt.name})`, function () {
      this.timeout(120_000);

      it('30 keys × 3 rounds of a put and a delete racing, row writes and blob deletes slowed at random', async () => {
        const metas = await mt.open();
        const { db, close } = await dt.open();
        try {
          const jitter = () => sleep(Math.floor(Math.random() * 6));
          // The blob deletes are slowed too, so both orders of the steps come up.
          const slowDeletes = new WrappedBlobDB(db, {
            before: (method) => (method === 'delete' ? jitter() : undefined),
          });
          const putter = new BlobStore({
            db: slowDeletes,
            meta: hooked(metas.a, { beforeUpsert: jitter, beforeDelete: jitter }),
          });
          const deleter = new BlobStore({
            db: slowDeletes,
            meta: hooked(metas.b, { beforeUpsert: jitter, beforeDelete: jitter }),
          });
          // Flat keys: s3rver removes a key's emptied directory under another key's PUT.
          const keys = Array.from({ length: 30 }, (_, i) => `pair-${i}`);
          const outcomes = { stored: 0, lost: 0 };
          const settled = await Promise.allSettled(
            keys.map(async (key, i) => {
              for (let round = 0; round < 3; round++) {
                const body = `${key} round ${round} ${'x'.repeat(i)}`;
                await Promise.all([
                  (async () => {
                    await jitter();
                    try {
                      await putter.put(body, { parentId: 'p', type: 't', key });
                      outcomes.stored++;
                    } catch (err) {
                      if (!(err instanceof ConcurrentDeleteError)) throw err;
                      outcomes.lost++;
                    }
                  })(),
                  (async () => {
                    await jitter();
                    await deleter.delete(key);
                  })(),
                ]);
              }
            }),
          );
          // Every pair settled before anything is judged (or cleaned up).
          for (const r of settled) if (r.status === 'rejected') throw r.reason;
          expect(outcomes.stored + outcomes.lost).to.equal(90);
          await expectConsistent(metas.a, db, keys);
        } finally {
          await close();
          await metas.close();
        }
      });
    });
  }
}

const PERIOD = 100;

describe('BlobStore put/delete pairs at once from two processes on one SQLite file', function () {
  this.timeout(60_000);

  it('12 keys × 8 rounds: puts here, deletes in a child process, then row ⇔ blob', async () => {
    const dir = await freshDir();
    const sqlite = join(dir, 'meta.sqlite');
    const newRoot = join(dir, 'new');
    const oldRoot = join(dir, 'old');
    const meta = await MetaDB.open({ client: 'better-sqlite3', connection: { filename: sqlite } });
    const db = new MigratingBlobDB(
      new FilesystemBlobDB({ root: newRoot }),
      new FilesystemBlobDB({ root: oldRoot }),
    );
    try {
      const keys = Array.from({ length: 12 }, (_, i) => `procs/${i}`);
      const script = join(dirname(fileURLToPath(import.meta.url)), 'support', 'race-deleter.ts');
      const child = spawn(
        process.execPath,
        [
          '--import',
          'tsx',
          script,
          JSON.stringify({ sqlite, newRoot, oldRoot, keys, rounds: 8, period: PERIOD }),
        ],
        { stdio: ['pipe', 'pipe', 'pipe'], cwd: join(dirname(script), '..', '..') },
      );
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => {
          if (d.toString().includes('ready')) resolve();
        });
        child.on('exit', () => reject(new Error(`the child exited before it was ready: ${stderr}`)));
      });
      const jitter = () => sleep(Math.floor(Math.random() * 6));
      const putter = new BlobStore({ db, meta: hooked(meta, { beforeUpsert: jitter }) });
      // Both processes run round r of every key at start + r × PERIOD, so the
      // last round races too (a lone put or delete at the end would heal any key).
      const start = Date.now() + 100;
      child.stdin.end(`${start}\n`);
      const settled = await Promise.allSettled(
        keys.map(async (key) => {
          for (let round = 0; round < 8; round++) {
            await sleep(start + round * PERIOD - Date.now());
            await jitter();
            await putter
              .put(`${key} round ${round}`, { parentId: 'p', type: 't', key })
              .catch((err: unknown) => {
                if (!(err instanceof ConcurrentDeleteError)) throw err;
              });
          }
        }),
      );
      expect(await exited, stderr).to.equal(0);
      for (const r of settled) if (r.status === 'rejected') throw r.reason;
      await expectConsistent(meta, db, keys);
    } finally {
      await meta.close();
    }
  });
});
