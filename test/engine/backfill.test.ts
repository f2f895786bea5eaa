import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { MemoryBlobDB } from '../../lib/backends/memory/index.js';
import { readAll } from '../../lib/contract/body.js';
import { RunStateError } from '../../lib/contract/errors.js';
import type { NewBlobMeta } from '../../lib/contract/meta.js';
import type { BlobInfo, ListOptions } from '../../lib/contract/types.js';
import { type BackfillOptions, backfill } from '../../lib/engine/backfill.js';
import { type MissingRecord, readMissingLog } from '../../lib/engine/missing-log.js';
import type { MetaDB } from '../../lib/meta/index.js';
import { announceDatabases, META_DATABASES, type MetaDatabase, SQLITE } from '../support/databases.js';
import { connectionRefused, slowDown, WrappedBlobDB } from '../support/wrap.js';

interface Fixture {
  dir: string;
  meta: MetaDB;
  dropMeta(): Promise<void>;
  oldDb: MemoryBlobDB;
  newDb: MemoryBlobDB;
  logDir: string;
}

async function fixture(database: MetaDatabase = SQLITE): Promise<Fixture> {
  const dir = await mkdtemp(join(tmpdir(), 'blobshift-backfill-'));
  const { meta, drop } = await database.open(dir);
  return {
    dir,
    meta,
    dropMeta: drop,
    oldDb: new MemoryBlobDB(),
    newDb: new MemoryBlobDB(),
    logDir: join(dir, 'logs'),
  };
}

async function dispose(f: Fixture): Promise<void> {
  await f.dropMeta();
  await rm(f.dir, { recursive: true, force: true });
}

/** Seeds `n` blobs of `type` into old (and rows into meta); returns their keys. */
async function seed(
  f: Fixture,
  n: number,
  opts: { type?: string; inOld?: boolean; size?: number; prefix?: string; ordered?: boolean } = {},
): Promise<string[]> {
  const type = opts.type ?? 'attachment';
  const rows: NewBlobMeta[] = [];
  const keys: string[] = [];
  for (let i = 0; i < n; i++) {
    // ordered: key order is id order, so a listing passes the rows in walk order.
    const name = opts.ordered ? String(i).padStart(6, '0') : randomBytes(8).toString('hex');
    const key = `${opts.prefix ?? type}/${name}`;
    const body = randomBytes(opts.size ?? 100 + (i % 50));
    if (opts.inOld !== false) await f.oldDb.put(key, body, { contentType: 'application/x-test' });
    rows.push({
      key,
      parentId: `case-${i % 7}`,
      type,
      name: `file-${i}.bin`,
      contentLength: body.length,
      contentType: 'application/x-test',
      sha256: createHash('sha256').update(body).digest('hex'),
    });
    keys.push(key);
  }
  await f.meta.addMany(rows);
  return keys;
}

async function logRecords(files: string[]): Promise<MissingRecord[]> {
  const out: MissingRecord[] = [];
  for (const file of files) {
    await readMissingLog(
      file,
      (r) => {
        out.push(r);
      },
      (p) => {
        throw new Error(`unexpected log problem ${p.file}:${p.line}: ${p.why}`);
      },
    );
  }
  return out;
}

function opts(f: Fixture, extra: Partial<BackfillOptions> = {}): BackfillOptions {
  return {
    meta: f.meta,
    oldDb: f.oldDb,
    newDb: f.newDb,
    logDir: f.logDir,
    chunkSize: 50,
    concurrency: 8,
    ...extra,
  };
}

async function sameBytes(a: MemoryBlobDB, b: MemoryBlobDB, key: string): Promise<boolean> {
  const [x, y] = await Promise.all([readAll(await a.get(key)), readAll(await b.get(key))]);
  return x.equals(y);
}

/** The engine's suite, on one metadata database (registered for each below). */
function backfillEngineSuite(this: Mocha.Suite, database: MetaDatabase): void {
  this.timeout(60_000);
  let f: Fixture;
  beforeEach(async () => {
    f = await fixture(database);
  });
  afterEach(async () => {
    await dispose(f);
  });

  it('copies every referenced blob byte-identical, with its content type', async () => {
    const keys = await seed(f, 230);
    const summary = await backfill(opts(f));
    expect(summary.status).to.equal('completed');
    expect(summary.exitCode).to.equal(0);
    expect(summary.total).to.equal(230);
    expect(summary.copied).to.equal(230);
    expect(summary.present + summary.notFound + summary.failed).to.equal(0);
    for (const key of keys) {
      expect(await sameBytes(f.oldDb, f.newDb, key), key).to.equal(true);
      expect((await f.newDb.stat(key)).contentType).to.equal('application/x-test');
    }
    const state = await f.meta.getRun('default', '');
    expect(state?.status).to.equal('completed');
    expect(state?.lowWaterMark).to.equal(await f.meta.maxId());
  });

  it('logs exactly the blobs in neither backend, exits 1, and reprints the same summary when run again', async () => {
    const present: string[] = [];
    const lost: string[] = [];
    for (const type of ['attachment', 'image', 'form']) {
      present.push(...(await seed(f, 20, { type })));
      lost.push(...(await seed(f, 3, { type, inOld: false })));
    }
    const first = await backfill(opts(f));
    expect(first.exitCode).to.equal(1);
    expect(first.notFound).to.equal(9);
    expect(first.copied).to.equal(60);
    const records = await logRecords(first.logs);
    expect(new Set(records.map((r) => r.key))).to.deep.equal(new Set(lost));
    for (const r of records) expect(r.error).to.equal('not found');
    const inNew = new Set<string>();
    for await (const info of f.newDb.list()) inNew.add(info.key);
    expect(inNew).to.deep.equal(new Set(present));
    const logMode = (await stat(first.logs[0] as string)).mode & 0o777;
    expect(logMode).to.equal(0o600);

    const again = await backfill(opts(f));
    expect(again.reprinted).to.equal(true);
    expect(again.exitCode).to.equal(1);
    const { reprinted: _a, ...restFirst } = first;
    const { reprinted: _b, ...restAgain } = again;
    expect(restAgain).to.deep.equal(restFirst);
  });

  it('counts blobs already in new as present without writing them', async () => {
    const keys = await seed(f, 40);
    for (const key of keys.slice(0, 25)) await f.newDb.put(key, await f.oldDb.get(key));
    const newDb = new WrappedBlobDB(f.newDb);
    const summary = await backfill(opts(f, { newDb }));
    expect(summary.present).to.equal(25);
    expect(summary.copied).to.equal(15);
    expect(newDb.calls.put).to.equal(15);
  });

  it('never overwrites a blob the app wrote to new after the snapshot', async () => {
    const key = (await seed(f, 1, { size: 64 }))[0] as string;
    const appBytes = Buffer.alloc(64, 7);
    // The app writes between the snapshot and the copy.
    const newDb = new WrappedBlobDB(f.newDb, {
      before: async (method, k) => {
        if (method === 'put' && k === key && !(await f.newDb.exists(key))) await f.newDb.put(key, appBytes);
      },
    });
    const summary = await backfill(opts(f, { newDb }));
    expect(summary.present).to.equal(1);
    expect((await readAll(await f.newDb.get(key))).equals(appBytes)).to.equal(true);
  });

  it('never counts a copy of another size already in new as present: a truncated leftover is a failure, not overwritten', async () => {
    const key = (await seed(f, 1, { size: 64 }))[0] as string;
    // What a killed client can leave on a server that stores partial uploads (s3rver): a
    // shorter object under the key, appearing after the snapshot was taken.
    const leftover = Buffer.alloc(0);
    const newDb = new WrappedBlobDB(f.newDb, {
      before: async (method, k) => {
        if (method === 'put' && k === key && !(await f.newDb.exists(key))) await f.newDb.put(key, leftover);
      },
    });
    const summary = await backfill(opts(f, { newDb }));
    expect(summary).to.include({ present: 0, copied: 0, failed: 1, exitCode: 1 });
    const records = await logRecords(summary.logs);
    expect(records.map((r) => [r.key, r.error])).to.deep.equal([
      [key, 'size mismatch in the new backend: it holds 0 bytes, the metadata says 64; not overwritten'],
    ]);
    expect((await readAll(await f.newDb.get(key))).length).to.equal(0, 'never overwritten');
  });

  it('takes a blob the app rewrote twice meanwhile as present, not as a size mismatch', async () => {
    const key = (await seed(f, 1, { size: 10 }))[0] as string;
    const rewrite = async (n: number) => {
      await f.newDb.put(key, Buffer.alloc(n, n));
      await f.meta.upsert({ key, parentId: 'p', type: 'attachment', contentLength: n });
    };
    // First rewrite after the snapshot, before the walk reads the row (row: 20
    // bytes, old still 10); second one just before the copy (new and row: 30).
    const meta = new Proxy(f.meta, {
      get(target, prop, receiver) {
        if (prop === 'walk') {
          return (o: Parameters<MetaDB['walk']>[0]) =>
            (async function* () {
              await rewrite(20);
              yield* target.walk(o);
            })();
        }
        const value = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    let rewritten = false;
    const oldDb = new WrappedBlobDB(f.oldDb, {
      before: async (method, k) => {
        if (method === 'stat' && k === key && !rewritten) {
          rewritten = true;
          await rewrite(30);
        }
      },
    });
    const summary = await backfill(opts(f, { meta, oldDb }));
    expect(summary.failed, JSON.stringify(summary)).to.equal(0);
    expect(summary.present).to.equal(1);
    expect(summary.exitCode).to.equal(0);
    expect((await readAll(await f.newDb.get(key))).equals(Buffer.alloc(30, 30))).to.equal(true);
  });

  it('takes a blob the app is overwriting (new version in new, its row written a moment later) as present, not as a size mismatch', async () => {
    // BlobStore.put writes the blob, then its row: for a moment new holds the
    // new version while the row still gives the old size. One key met by the
    // copy path (old is asked first), one the snapshot lists with the new size.
    const [viaCopy, viaSnapshot] = (await seed(f, 2, { size: 10 })) as [string, string];
    const rowLater = (key: string, n: number) =>
      setTimeout(() => void f.meta.upsert({ key, parentId: 'p', type: 'attachment', contentLength: n }), 150);
    await f.newDb.put(viaSnapshot, Buffer.alloc(20, 20));
    let overwritten = false;
    const oldDb = new WrappedBlobDB(f.oldDb, {
      before: async (method, k) => {
        if (method === 'stat' && k === viaCopy && !overwritten) {
          overwritten = true;
          await f.newDb.put(viaCopy, Buffer.alloc(30, 30));
          rowLater(viaCopy, 30);
        }
      },
    });
    rowLater(viaSnapshot, 20);
    const summary = await backfill(opts(f, { oldDb }));
    expect(summary.failed, JSON.stringify(summary)).to.equal(0);
    expect(summary.present).to.equal(2);
    expect(summary.exitCode).to.equal(0);
    expect((await readAll(await f.newDb.get(viaCopy))).equals(Buffer.alloc(30, 30))).to.equal(true);
    expect((await readAll(await f.newDb.get(viaSnapshot))).equals(Buffer.alloc(20, 20))).to.equal(true);
  });

  it('does not resurrect a blob deleted by the app while it was being copied', async () => {
    const keys = await seed(f, 10);
    const victim = keys[4] as string;
    const newDb = new WrappedBlobDB(f.newDb, {
      afterPut: async (k) => {
        if (k === victim) {
          // The app deletes: row first, then the blob in both backends (it was not in new yet).
          await f.meta.delete(k);
          await f.oldDb.delete(k);
        }
      },
    });
    const summary = await backfill(opts(f, { newDb }));
    expect(summary.deletedDuringMigration).to.equal(1);
    expect(summary.copied).to.equal(9);
    expect(await f.newDb.exists(victim)).to.equal(false);
    expect(summary.exitCode).to.equal(0);
  });

  it('a put whose response was lost is rechecked on its retry like any copy of ours (no resurrection)', async () => {
    const keys = await seed(f, 10);
    const victim = keys[4] as string;
    let lost = false;
    const newDb = new WrappedBlobDB(f.newDb, {
      afterPut: async (k) => {
        if (k === victim && !lost) {
          lost = true;
          // The app deletes meanwhile (the blob was not in new yet), then the
          // put's response is lost: the put landed, the copy sees an error.
          await f.meta.delete(k);
          await f.oldDb.delete(k);
          throw connectionRefused();
        }
      },
    });
    const summary = await backfill(opts(f, { newDb, retry: { attempts: 3, baseDelayMs: 1, maxDelayMs: 1 } }));
    expect(summary.retries).to.be.at.least(1);
    expect(summary.deletedDuringMigration).to.equal(1);
    expect(await f.newDb.exists(victim), 'the copy that landed was taken back').to.equal(false);
    expect(summary.exitCode).to.equal(0);
  });

  it('a reference recheck that fails once is retried without a second put, and still takes a copy back', async () => {
    const keys = await seed(f, 10);
    const victim = keys[4] as string;
    let failed = false;
    const meta = new Proxy(f.meta, {
      get(target, prop, receiver) {
        if (prop === 'referenced') {
          return async (ks: string[]) => {
            if (ks.includes(victim) && !failed) {
              failed = true;
              // The app deleted the blob while it was being copied, and the
              // first recheck does not get through.
              await target.delete(victim);
              await f.oldDb.delete(victim);
              throw connectionRefused();
            }
            return target.referenced(ks);
          };
        }
        const value = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const newDb = new WrappedBlobDB(f.newDb);
    const summary = await backfill(
      opts(f, { meta, newDb, concurrency: 1, retry: { attempts: 3, baseDelayMs: 1, maxDelayMs: 1 } }),
    );
    expect(failed).to.equal(true);
    expect(newDb.putKeys.filter((k) => k === victim)).to.have.length(1);
    expect(summary.deletedDuringMigration).to.equal(1);
    expect(await f.newDb.exists(victim), 'the copy was taken back').to.equal(false);
    expect(summary.exitCode).to.equal(0);
  });

  it('counts a row deleted before its copy as deleted during migration, not as lost', async () => {
    const keys = await seed(f, 5);
    const victim = keys[2] as string;
    const oldDb = new WrappedBlobDB(f.oldDb, {
      before: async (method, k) => {
        if (method === 'stat' && k === victim) {
          await f.meta.delete(victim);
          await f.oldDb.delete(victim);
        }
      },
    });
    const summary = await backfill(opts(f, { oldDb }));
    expect(summary.deletedDuringMigration).to.equal(1);
    expect(summary.notFound).to.equal(0);
    expect(summary.exitCode).to.equal(0);
  });

  it('skips expired blobs and counts them', async () => {
    await seed(f, 5);
    await f.meta.add({
      key: 'expired/one',
      parentId: 'p',
      type: 'attachment',
      contentLength: 3,
      expiresOn: new Date(Date.now() - 1000),
    });
    const summary = await backfill(opts(f));
    expect(summary.expired).to.equal(1);
    expect(summary.copied).to.equal(5);
    expect(summary.exitCode).to.equal(0);
  });

  it('logs a row with an absurd size as failed and goes on', async () => {
    await seed(f, 3);
    await f.meta.add({ key: 'bad/size', parentId: 'p', type: 'attachment', contentLength: 5 });
    // MetaDB refuses such a row; an app's own table may still hold one.
    await f.meta.knex(f.meta.table).where('key', 'bad/size').update({ content_length: -5 });
    const summary = await backfill(opts(f));
    expect(summary.failed).to.equal(1);
    expect(summary.copied).to.equal(3);
    const records = await logRecords(summary.logs);
    expect(records.map((r) => r.key)).to.deep.equal(['bad/size']);
    expect(records[0]?.error).to.match(/invalid metadata row: the size -5/);
  });

  it('logs a blob whose old copy disagrees with the metadata size, never copying it', async () => {
    const [key] = await seed(f, 1, { size: 10 });
    await f.oldDb.put(key as string, Buffer.alloc(11));
    const summary = await backfill(opts(f));
    expect(summary.failed).to.equal(1);
    expect(await f.newDb.exists(key as string)).to.equal(false);
  });

  it('filters by type and splits into shards that cover every blob exactly once', async () => {
    await seed(f, 30, { type: 'a' });
    await seed(f, 30, { type: 'b' });
    await seed(f, 30, { type: 'c' });
    const newDb = new WrappedBlobDB(f.newDb);
    const results = await Promise.all(
      [0, 1, 2].map((index) => backfill(opts(f, { newDb, types: ['a', 'c'], shard: { index, count: 3 } }))),
    );
    expect(results.reduce((n, r) => n + r.copied, 0)).to.equal(60);
    expect(newDb.putKeys.length).to.equal(60);
    expect(new Set(newDb.putKeys).size).to.equal(60);
    expect(newDb.putKeys.every((k) => k.startsWith('a/') || k.startsWith('c/'))).to.equal(true);
    for (const r of results) expect(r.logs[0]).to.match(/-shard-\d-of-3\.jsonl$/);
  });

  it('refuses to resume a run with other types or another shard', async () => {
    await seed(f, 20);
    const ac = new AbortController();
    ac.abort();
    const first = await backfill(opts(f, { types: ['attachment'], signal: ac.signal }));
    expect(first.status).to.equal('interrupted');
    let err: unknown;
    try {
      await backfill(opts(f, { types: ['image'] }));
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(RunStateError);
    expect((err as Error).message).to.match(/--types attachment then, image now/);
    const reset = await backfill(opts(f, { types: ['image'], reset: true }));
    expect(reset.status).to.equal('completed');
  });

  it('resumes a state row as the previous version stored it (options and extra as plain JSON)', async () => {
    await seed(f, 100);
    const ids: number[] = [];
    for await (const chunk of f.meta.walk({ chunkSize: 1000 })) ids.push(...chunk.map((r) => r.id));
    const mark = ids[39] as number;
    const table = f.meta.knex(f.meta.runsTable);
    const runs = f.meta.schema ? table.withSchema(f.meta.schema) : table;
    // The row exactly as the earlier writer stored it: counts without `replaced`,
    // untyped options, an owner that is gone, and a field this version does not know.
    await runs.insert({
      name: 'default',
      shard: '',
      status: 'interrupted',
      low_water_mark: mark,
      counts: JSON.stringify({
        total: 40,
        copied: 40,
        present: 0,
        notFound: 0,
        failed: 0,
        deletedDuringMigration: 0,
        expired: 0,
        bytes: 4000,
        retries: 0,
        seconds: 1.5,
      }),
      logs: JSON.stringify(['backfill-default-20260101T000000Z.jsonl']),
      options: JSON.stringify({ types: [], shard: '', old: null, new: null }),
      attempts: 1,
      exit_code: 130,
      started_at: new Date('2026-01-01T00:00:00.000Z'),
      updated_at: new Date('2026-01-01T00:05:00.000Z'),
      finished_at: null,
      extra: JSON.stringify({ owner: { host: 'gone.example', pid: 1 }, note: 'kept' }),
    });
    const refused = await backfill(opts(f, { types: ['image'] })).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(refused).to.be.instanceOf(RunStateError);
    expect((refused as Error).message).to.match(/--types \(all\) then, image now/);
    const summary = await backfill(opts(f));
    // The counts go on from the row's; the rows at or below its mark are not walked again.
    expect(summary).to.include({ status: 'completed', exitCode: 0, attempts: 2, total: 100, copied: 100 });
    let inNew = 0;
    for await (const _ of f.newDb.list()) inNew++;
    expect(inNew).to.equal(60);
    expect(summary.logs[0]).to.equal('backfill-default-20260101T000000Z.jsonl');
    const state = await f.meta.getRun('default', '');
    expect(state?.options).to.deep.equal({ types: [], shard: '', old: null, new: null });
    expect(state?.extra.note).to.equal('kept');
    expect(state?.extra.owner?.pid).to.equal(process.pid);
    expect(state?.counts.replaced).to.equal(0);
  });

  it('resumes after an interruption, re-doing at most the in-flight window', async () => {
    await seed(f, 300);
    const ac = new AbortController();
    const newDb = new WrappedBlobDB(f.newDb, {
      before: (method) => {
        if (method === 'put' && newDb.calls.put === 120) ac.abort();
      },
    });
    const first = await backfill(opts(f, { newDb, signal: ac.signal, concurrency: 8 }));
    expect(first.status).to.equal('interrupted');
    expect(first.exitCode).to.equal(130);
    const state = await f.meta.getRun('default', '');
    expect(state?.status).to.equal('interrupted');
    expect(state?.lowWaterMark).to.be.greaterThan(0);
    const second = await backfill(opts(f, { newDb, concurrency: 8 }));
    expect(second.status).to.equal('completed');
    expect(second.total).to.equal(300);
    expect(second.copied + second.present).to.equal(300);
    expect(second.attempts).to.equal(2);
    expect(second.logs).to.have.length(2);
    expect(newDb.putKeys.length).to.be.at.most(300 + 8);
    const inNew = new Set<string>();
    for await (const info of f.newDb.list()) inNew.add(info.key);
    expect(inNew.size).to.equal(300);
  });

  it('keeps dispatch within the window of the low-water mark', async () => {
    await seed(f, 200);
    let maxAhead = 0;
    const slow = new Set<number>([3, 77]);
    const ids = new Map<string, number>();
    for await (const chunk of f.meta.walk({ chunkSize: 500 })) for (const r of chunk) ids.set(r.key, r.id);
    let lowest = 0;
    const inflight = new Set<number>();
    const newDb = new WrappedBlobDB(f.newDb, {
      before: async (method, key) => {
        if (method !== 'put' || key === undefined) return;
        const id = ids.get(key) ?? 0;
        inflight.add(id);
        lowest = Math.min(...inflight);
        maxAhead = Math.max(maxAhead, id - lowest);
        if (slow.has(id)) await new Promise((r) => setTimeout(r, 100));
      },
      afterPut: (key) => {
        inflight.delete(ids.get(key) ?? 0);
      },
    });
    const summary = await backfill(opts(f, { newDb, concurrency: 4 }));
    expect(summary.copied).to.equal(200);
    expect(maxAhead).to.be.lessThan(4);
  });

  it('retries transient failures, reopening the source, and counts the retries', async () => {
    const keys = await seed(f, 20);
    const failures = new Map<string, number>();
    const newDb = new WrappedBlobDB(f.newDb, {
      before: (method, key) => {
        if (method !== 'put' || key === undefined) return;
        const n = failures.get(key) ?? 0;
        if (n < 2) {
          failures.set(key, n + 1);
          throw slowDown();
        }
      },
    });
    const summary = await backfill(opts(f, { newDb, retry: { baseDelayMs: 1, maxDelayMs: 2 } }));
    expect(summary.copied).to.equal(20);
    expect(summary.retries).to.equal(40);
    for (const key of keys) expect(await sameBytes(f.oldDb, f.newDb, key)).to.equal(true);
  });

  it('logs "too many retries" for a key that always fails, goes on, and exits 1', async () => {
    const keys = await seed(f, 30);
    const bad = keys[10] as string;
    const newDb = new WrappedBlobDB(f.newDb, {
      before: (method, key) => {
        if (method === 'put' && key === bad) throw slowDown();
      },
    });
    const summary = await backfill(opts(f, { newDb, retry: { baseDelayMs: 1, maxDelayMs: 2, attempts: 3 } }));
    expect(summary.status).to.equal('completed');
    expect(summary.exitCode).to.equal(1);
    expect(summary.failed).to.equal(1);
    expect(summary.copied).to.equal(29);
    const records = await logRecords(summary.logs);
    expect(records).to.have.length(1);
    expect(records[0]).to.include({ key: bad, error: 'too many retries' });
  });

  it('at --concurrency 1 a single always-failing key is logged and the run goes on (not taken for an outage)', async () => {
    const keys = await seed(f, 10);
    const bad = keys[3] as string;
    const newDb = new WrappedBlobDB(f.newDb, {
      before: (method, key) => {
        if (method === 'put' && key === bad) throw connectionRefused();
      },
    });
    const summary = await backfill(
      opts(f, { newDb, concurrency: 1, retry: { baseDelayMs: 1, maxDelayMs: 2 } }),
    );
    expect(summary.status).to.equal('completed');
    expect(summary.exitCode).to.equal(1);
    expect(summary.failed).to.equal(1);
    expect(summary.copied).to.equal(9);
  });

  it('stops with exit 3 when the new backend is gone, keeps the checkpoint, and a rerun completes', async () => {
    await seed(f, 100);
    let down = false;
    const newDb = new WrappedBlobDB(f.newDb, {
      before: (method) => {
        if (method === 'put' && newDb.calls.put > 40) down = true;
        if (down && method !== 'list') throw connectionRefused();
      },
    });
    const first = await backfill(opts(f, { newDb, retry: { baseDelayMs: 1, maxDelayMs: 2 } }));
    expect(first.status).to.equal('infrastructure');
    expect(first.exitCode).to.equal(3);
    expect(first.reason).to.match(/ECONNREFUSED/);
    const state = await f.meta.getRun('default', '');
    expect(state?.status).to.equal('failed');
    expect(state?.counts.failed).to.equal(0);
    down = false;
    newDb.hooks = {};
    const second = await backfill(opts(f, { newDb }));
    expect(second.status).to.equal('completed');
    expect(second.exitCode).to.equal(0);
    expect(second.copied + second.present).to.equal(100);
    expect(second.failed).to.equal(0);
  });

  it('losing the database while the run sets up saves the checkpoint and exits 3', async () => {
    await seed(f, 10);
    let down = true;
    const meta = new Proxy(f.meta, {
      get(target, prop, receiver) {
        if (prop === 'estimate' && down) return () => Promise.reject(connectionRefused());
        const value = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const first = await backfill(opts(f, { meta }));
    expect(first.status).to.equal('infrastructure');
    expect(first.exitCode).to.equal(3);
    expect((await f.meta.getRun('default', ''))?.status).to.equal('failed');
    down = false;
    const second = await backfill(opts(f, { meta }));
    expect(second.exitCode).to.equal(0);
    expect(second.copied).to.equal(10);
  });

  it('dry run reports what it would copy and writes nothing', async () => {
    const keys = await seed(f, 12);
    await f.newDb.put(keys[0] as string, await f.oldDb.get(keys[0] as string));
    const newDb = new WrappedBlobDB(f.newDb);
    const summary = await backfill(opts(f, { newDb, dryRun: true }));
    expect(summary.status).to.equal('dry-run');
    expect(summary.present).to.equal(1);
    expect(summary.toCopy).to.equal(11);
    expect(newDb.calls.put).to.equal(0);
    expect(await f.meta.getRun('default', '')).to.equal(undefined);
    expect(await readdir(f.logDir).catch(() => [])).to.deep.equal([]);
  });

  it('uses a HEAD per blob with existence "head" and still copies only what is missing', async () => {
    const keys = await seed(f, 10);
    await f.newDb.put(keys[0] as string, await f.oldDb.get(keys[0] as string));
    const newDb = new WrappedBlobDB(f.newDb);
    const summary = await backfill(opts(f, { newDb, existence: 'head' }));
    expect(newDb.calls.list).to.equal(0);
    expect(summary.present).to.equal(1);
    expect(summary.copied).to.equal(9);
    expect(newDb.calls.stat).to.be.at.least(10);
  });

  describe('while the listing of the new backend runs', () => {
    /** The new backend, listed slowly (a pause every 100 keys); `fail` ends the listing with an error at that key. */
    class SlowListing extends WrappedBlobDB {
      readonly events: string[] = [];
      fail: { at: number; error: () => Error; before?: () => Promise<void> } | undefined;
      override async *list(opts?: ListOptions): AsyncIterable<BlobInfo> {
        let n = 0;
        for await (const info of this.inner.list(opts)) {
          if (this.fail && n === this.fail.at) {
            await this.fail.before?.();
            throw this.fail.error();
          }
          if (n++ % 100 === 0) await new Promise((r) => setTimeout(r, 2));
          yield info;
        }
        this.events.push('listed');
      }
    }
    const slowNew = (f: Fixture) => {
      const db = new SlowListing(f.newDb, {
        afterPut: () => {
          if (!db.events.includes('put')) db.events.push('put');
        },
      });
      return db;
    };
    const migrated = async (f: Fixture, keys: string[]) => {
      for (const key of keys) await f.newDb.put(key, await f.oldDb.get(key));
    };

    it('copies rows the listing has passed before it ends, and only what is missing', async () => {
      const keys = await seed(f, 3000, { ordered: true, size: 10 });
      await migrated(f, keys.slice(100));
      const newDb = slowNew(f);
      const summary = await backfill(opts(f, { newDb, chunkSize: 500 }));
      expect(summary.copied).to.equal(100);
      expect(summary.present).to.equal(2900);
      expect(newDb.putKeys.sort()).to.deep.equal(keys.slice(0, 100));
      expect(newDb.events, 'the first copy came before the listing ended').to.deep.equal(['put', 'listed']);
      expect(newDb.calls.stat, 'no HEAD: every row was answered by the snapshot').to.equal(0);
    });

    it('a listing that breaks midway (not an outage): rows it passed are decided from it, the rest get a HEAD', async () => {
      const keys = await seed(f, 3000, { ordered: true, size: 10 });
      await migrated(f, keys.slice(0, 2000));
      const newDb = slowNew(f);
      newDb.fail = { at: 1200, error: () => new Error('the server sent a garbled page') };
      const summary = await backfill(opts(f, { newDb }));
      expect(summary.exitCode).to.equal(0);
      expect(summary.present).to.equal(2000);
      expect(summary.copied).to.equal(1000);
      expect(summary.failed).to.equal(0);
      // Rows 1–1000 came from the listing; the others asked the new backend.
      expect(newDb.calls.stat).to.be.within(1000, 2000);
      for (const key of keys) expect(await sameBytes(f.oldDb, f.newDb, key), key).to.equal(true);
    });

    it('an outage of the listing midway stops the run with exit 3, and the rerun completes', async () => {
      const keys = await seed(f, 3000, { ordered: true, size: 10 });
      await migrated(f, keys.slice(0, 2000));
      const newDb = slowNew(f);
      newDb.fail = { at: 1200, error: connectionRefused };
      const first = await backfill(opts(f, { newDb }));
      expect(first.status).to.equal('infrastructure');
      expect(first.exitCode).to.equal(3);
      expect(first.reason).to.match(/listing the new backend failed.*ECONNREFUSED/);
      newDb.fail = undefined;
      const second = await backfill(opts(f, { newDb }));
      expect(second.exitCode).to.equal(0);
      // Counts are the run's, over both attempts.
      expect(second.copied).to.equal(1000);
      expect(second.present).to.equal(2000);
      for (const key of keys) expect(await sameBytes(f.oldDb, f.newDb, key), key).to.equal(true);
    });

    it('an outage of the listing waits for the copies already running before the run ends', async () => {
      const keys = await seed(f, 3000, { ordered: true, size: 10 });
      // Rows 995–999 are missing. The snapshot answers in steps of 1,000 keys:
      // after the first step (through row 1004) their copies start, the walk
      // goes on to row 1005 and waits for the listing, which then fails.
      await migrated(f, [...keys.slice(0, 995), ...keys.slice(1000, 2000)]);
      const newDb = slowNew(f);
      let running = 0;
      newDb.fail = {
        at: 1500,
        error: connectionRefused,
        // The listing fails once those copies are under way.
        before: async () => {
          while (running < 5) await new Promise((r) => setTimeout(r, 5));
        },
      };
      let finished = 0;
      newDb.hooks.before = async (method) => {
        if (method !== 'put') return;
        running++;
        // Slow puts: the listing fails while they are still running.
        await new Promise((r) => setTimeout(r, 150));
      };
      newDb.hooks.afterPut = () => {
        running--;
        finished++;
      };
      const first = await backfill(opts(f, { newDb, concurrency: 32 }));
      expect(first.exitCode).to.equal(3);
      expect(finished, 'some copies started before the outage').to.be.greaterThan(0);
      expect(running, 'no copy still running when the run ended').to.equal(0);
      expect(first.copied, 'every finished copy was counted').to.equal(finished);
      newDb.fail = undefined;
      newDb.hooks = {};
      const second = await backfill(opts(f, { newDb }));
      expect(second.exitCode).to.equal(0);
      expect(second.copied).to.equal(1005);
      for (const key of keys) expect(await sameBytes(f.oldDb, f.newDb, key), key).to.equal(true);
    });
  });

  it('writes log files that never overwrite an earlier attempt', async () => {
    await seed(f, 2, { inOld: false });
    const a = await backfill(opts(f, { run: 'r1' }));
    const b = await backfill(opts(f, { run: 'r1', reset: true }));
    expect(a.logs[0]).to.not.equal(b.logs[0]);
    expect(await readFile(a.logs[0] as string, 'utf8')).to.match(/not found/);
  });
}

for (const database of META_DATABASES) {
  const on = database === SQLITE ? '' : `, ${database.name} metadata`;
  describe(`backfill (engine)${on}`, function () {
    backfillEngineSuite.call(this, database);
  });
}
announceDatabases('backfill engine');
