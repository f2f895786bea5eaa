/**
 * Live app traffic: while a backfill runs (the real CLI, a child process), the
 * app in this process adds, overwrites and deletes blobs through
 * `BlobStore` over `MigratingBlobDB(new, old)` on the same MariaDB (or
 * PostgreSQL) metadata,
 * picking keys the backfill has reached and keys it has not. Afterwards every
 * added and overwritten blob in the new backend holds the app's last write,
 * every deleted blob is gone from both backends (nothing resurrected), and
 * every untouched blob is in the new backend, identical to the old copy.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { MigratingBlobDB } from '../../lib/app/migrating.js';
import { BlobStore } from '../../lib/app/store.js';
import { FilesystemBlobDB } from '../../lib/backends/fs/index.js';
import { createS3Client, S3BlobDB } from '../../lib/backends/s3/index.js';
import { isBlobNotFound } from '../../lib/contract/errors.js';
import type { BlobDB } from '../../lib/contract/types.js';
import { backfillArgs, readJsonLines, seedOldFs, sha256, startCli, writeConfig } from '../support/cli.js';
import { MARIADB, type MetaDatabase, POSTGRES } from '../support/databases.js';
import { announce, RGW_CREDENTIALS, RGW_ENDPOINT, uniqueName } from '../support/env.js';
import { TEST_SEED as SEED, seeded } from '../support/random.js';
import { createBucket, deleteBucket, rgwClientConfig } from '../support/s3rver.js';
import { sleep } from '../support/time.js';

/** App operations per test, spread over the backfill by a few concurrent app workers. */
const OPS = 400;
const APP_WORKERS = 4;
/** The CLI's line once the run is set up and copying. */
const STARTED = /backfill run "default", attempt \d+/;

/** sha256 of a blob, or undefined when the backend does not have it. */
async function blobSha(db: BlobDB, key: string): Promise<string | undefined> {
  let stream: AsyncIterable<Buffer>;
  try {
    stream = await db.get(key);
  } catch (err) {
    if (isBlobNotFound(err)) return undefined;
    throw err;
  }
  const h = createHash('sha256');
  for await (const chunk of stream) h.update(chunk);
  return h.digest('hex');
}

/** Runs `fn` over `items`, `n` at a time. */
async function eachLimit<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++] as T);
  };
  await Promise.all(Array.from({ length: n }, worker));
}

/** What the app did to a key, last write wins. */
type Fate = { kind: 'untouched'; sha: string } | { kind: 'written'; sha: string } | { kind: 'deleted' };

interface NewSide {
  /** The `new` section of the CLI's config. */
  config: Record<string, unknown>;
  /** The same backend for the app (and the checks) in this process. */
  db: BlobDB;
}

interface Tally {
  added: number;
  overwritten: number;
  deleted: number;
  /** Overwrites and deletes of seeded keys the new backend already held (the backfill had passed). */
  onCopied: number;
  /** …and of seeded keys it did not hold yet. */
  onNotYet: number;
  /** Ops that finished while the backfill was still running. */
  duringBackfill: number;
}

async function liveTraffic(
  database: MetaDatabase,
  count: number,
  maxRate: number,
  makeNew: (dir: string) => Promise<NewSide>,
): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'blobshift-live-'));
  const table = uniqueName('bs_');
  const rand = seeded(SEED);
  const { meta, drop } = await database.open(dir, { table });
  const oldDb = new FilesystemBlobDB({ root: join(dir, 'old') });
  let side: NewSide | undefined;
  try {
    const seededBlobs = await seedOldFs(meta, join(dir, 'old'), count, {
      sizeOf: (i) => 100 + ((i * 7919) % 1900),
    });
    side = await makeNew(dir);
    const store = new BlobStore({ db: new MigratingBlobDB(side.db, oldDb), meta });
    const config = await writeConfig(join(dir, 'blobshift.config.json'), {
      meta: database.configSection(table),
      old: { type: 'fs', root: './old' },
      new: side.config,
    });
    const running = startCli(
      backfillArgs(
        config,
        join(dir, 'logs'),
        '--concurrency',
        '4',
        '--chunk-size',
        '100',
        '--max-rate',
        String(maxRate),
        '--no-progress',
        '--json',
      ),
      { cwd: dir, timeoutMs: 85_000 },
    );
    let backfillDone = false;
    void running.done.then(() => {
      backfillDone = true;
    });

    // The app: wait for the run to start copying, then add, overwrite and
    // delete at random, never two ops on one key at once (an app's own
    // ordering for one key is its business).
    const fate = new Map<string, Fate>(seededBlobs.map((b) => [b.key, { kind: 'untouched', sha: b.sha256 }]));
    const seededKeys = new Set(seededBlobs.map((b) => b.key));
    const live = seededBlobs.map((b) => b.key);
    const busy = new Set<string>();
    /** Overwrites per key (a log record names how many the key had). */
    const writes = new Map<string, number>();
    const tally: Tally = {
      added: 0,
      overwritten: 0,
      deleted: 0,
      onCopied: 0,
      onNotYet: 0,
      duringBackfill: 0,
    };
    for (let waited = 0; !backfillDone && !STARTED.test(running.stderr) && waited < 60_000; waited += 50) {
      await sleep(50);
    }
    expect(
      backfillDone,
      `the backfill ended before the app started: ${running.stderr.slice(-2000)}`,
    ).to.equal(false);
    // Spread the ops over the first 60% of the run (at least `count / maxRate`
    // seconds long): op n is due n/OPS of the way through.
    const spanMs = (0.6 * count * 1000) / maxRate;
    const appStart = Date.now();
    let issued = 0;
    const pickLive = (): string | undefined => {
      for (let tries = 0; tries < 20; tries++) {
        const i = Math.floor(rand() * live.length);
        const key = live[i];
        if (key !== undefined && !busy.has(key)) {
          // Swap-remove keeps picks O(1); the caller puts it back if it stays live.
          live[i] = live[live.length - 1] as string;
          live.pop();
          return key;
        }
      }
      return undefined;
    };
    const appWorker = async () => {
      while (issued < OPS) {
        const due = appStart + (issued * spanMs) / OPS;
        issued++;
        await sleep(Math.max(0, due - Date.now()));
        const r = rand();
        const body = randomBytes(50 + Math.floor(rand() * 2500));
        if (r < 0.25) {
          const row = await store.put(body, { parentId: 'live', type: 'attachment' });
          fate.set(row.key, { kind: 'written', sha: sha256(body) });
          live.push(row.key);
          tally.added++;
        } else {
          const key = pickLive();
          if (key === undefined) continue;
          busy.add(key);
          try {
            if (seededKeys.has(key)) {
              if (await side?.db.exists(key)) tally.onCopied++;
              else tally.onNotYet++;
            }
            if (r < 0.65) {
              // Overwrite: blob first, then the row upsert.
              await store.put(body, { key, parentId: 'live', type: 'attachment' });
              fate.set(key, { kind: 'written', sha: sha256(body) });
              writes.set(key, (writes.get(key) ?? 0) + 1);
              live.push(key);
              tally.overwritten++;
            } else {
              // Delete: row first, then both backends.
              await store.delete(key);
              fate.set(key, { kind: 'deleted' });
              tally.deleted++;
            }
          } finally {
            busy.delete(key);
          }
        }
        if (!backfillDone) tally.duringBackfill++;
      }
    };
    await Promise.all(Array.from({ length: APP_WORKERS }, appWorker));
    const result = await running.done;
    const ops = tally.added + tally.overwritten + tally.deleted;
    const what = `seed ${SEED}: ${ops} ops (${tally.added} added, ${tally.overwritten} overwritten, ${tally.deleted} deleted; ${tally.onCopied} on keys already copied, ${tally.onNotYet} on keys not yet copied; ${tally.duringBackfill} while the backfill ran)`;
    expect(result.code, `${what}: ${result.stderr.slice(-2000)}`).to.be.oneOf([0, 1]);
    const summary = JSON.parse(result.stdout) as { status: string; logs: string[]; copied: number };
    expect(summary.status, what).to.equal('completed');

    // What the backfill logged as missing or failed: only ever keys the app deleted.
    const loggedLive = (await readJsonLines(summary.logs))
      .filter((r) => fate.get(String(r.key))?.kind !== 'deleted')
      .map((r) => {
        const key = String(r.key);
        return `${key} (${fate.get(key)?.kind}, ${writes.get(key) ?? 0} overwrites): ${String(r.error)}`;
      });
    expect(loggedLive, `${what}: logged missing or failed though the app never deleted them`).to.deep.equal(
      [],
    );

    // The end state, key by key.
    const lost: string[] = [];
    const overwritesLost: string[] = [];
    const resurrected: string[] = [];
    const changed: string[] = [];
    const rowsLeft: string[] = [];
    const newDb = side.db;
    await eachLimit([...fate], 16, async ([key, f]) => {
      if (f.kind === 'deleted') {
        if ((await newDb.exists(key)) || (await oldDb.exists(key))) resurrected.push(key);
        if (await meta.get(key)) rowsLeft.push(key);
        return;
      }
      const inNew = await blobSha(newDb, key);
      if (inNew === undefined) lost.push(key);
      else if (inNew !== f.sha) (f.kind === 'written' ? overwritesLost : changed).push(key);
      if (f.kind === 'untouched' && (await blobSha(oldDb, key)) !== f.sha) changed.push(`${key} (old copy)`);
    });
    const counts = `lost ${lost.length}, overwrites lost ${overwritesLost.length}, resurrected ${resurrected.length}, changed ${changed.length}`;
    expect(tally.duringBackfill, `${what}: too few ops overlapped the backfill`).to.be.at.least(OPS / 2);
    expect(tally.onNotYet, `${what}: no op on a key the backfill had not reached`).to.be.greaterThan(0);
    expect(tally.onCopied, `${what}: no op on a key the backfill had copied`).to.be.greaterThan(0);
    expect(overwritesLost, `${what}; ${counts}: overwrites lost`).to.deep.equal([]);
    expect(resurrected, `${what}; ${counts}: deleted blobs resurrected`).to.deep.equal([]);
    expect(lost, `${what}; ${counts}: blobs lost`).to.deep.equal([]);
    expect(changed, `${what}; ${counts}: untouched blobs not identical`).to.deep.equal([]);
    expect(rowsLeft, `${what}: rows of deleted blobs left`).to.deep.equal([]);
    return `${what}; exit ${result.code}, copied ${summary.copied}; ${counts}`;
  } finally {
    await side?.db.close().catch(() => {});
    await oldDb.close().catch(() => {});
    await drop().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

/** The live-traffic tests on one database: files → files, and files → RGW where `withRgw` and RGW is set. */
function describeLiveTraffic(database: MetaDatabase, withRgw: boolean): void {
  describe(`reliability: live app traffic during a backfill (${database.name} metadata)`, function () {
    this.timeout(180_000);

    it(`filesystem → filesystem, 2000 blobs, ${OPS} app ops: added and overwritten blobs hold the app's last write, deleted ones are in neither backend, the rest identical`, async function () {
      const result = await liveTraffic(database, 2000, 200, async (dir) => ({
        config: { type: 'fs', root: './new' },
        db: new FilesystemBlobDB({ root: join(dir, 'new') }),
      }));
      if (this.test) this.test.title += ` [${result}]`;
    });

    if (!withRgw) return;
    if (RGW_ENDPOINT) {
      const endpoint = RGW_ENDPOINT;
      it(`filesystem → RGW (conditional writes), 1500 blobs, ${OPS} app ops: added and overwritten blobs hold the app's last write, deleted ones are in neither backend, the rest identical`, async function () {
        const admin = createS3Client(rgwClientConfig());
        const bucket = await createBucket(admin);
        try {
          const result = await liveTraffic(database, 1500, 150, async () => ({
            config: {
              type: 's3',
              bucket,
              endpoint,
              region: 'us-east-1',
              forcePathStyle: true,
              credentials: { ...RGW_CREDENTIALS },
            },
            db: new S3BlobDB({ bucket, clientConfig: rgwClientConfig() }),
          }));
          if (this.test) this.test.title += ` [${result}]`;
        } finally {
          await deleteBucket(admin, bucket).catch(() => {});
          admin.destroy();
        }
      });
    } else {
      announce('BLOBSHIFT_TEST_RGW', 'RGW (reliability: live traffic)');
    }
  });
}

// MariaDB with files and with RGW; PostgreSQL with files (the CI budget: the
// app's reads and writes through BlobStore are what differs by database).
if (MARIADB) describeLiveTraffic(MARIADB, true);
else announce('BLOBSHIFT_TEST_MYSQL', 'MariaDB (reliability: live traffic)');
if (POSTGRES) describeLiveTraffic(POSTGRES, false);
else announce('BLOBSHIFT_TEST_PG', 'PostgreSQL (reliability: live traffic)');
