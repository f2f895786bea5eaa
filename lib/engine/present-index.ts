/**
 * The listing snapshot: what the new backend holds, listed once at the start
 * of a run (ListObjectsV2, 1000 keys a page on S3) into an on-disk SQLite file
 * of key → size. Chunks of metadata rows are joined against it, so existence
 * costs one listing instead of a request per blob, and memory stays flat
 * whatever the size of the bucket.
 *
 * A listing comes in ascending byte order, so while it runs every key up to
 * the last one listed (`position`) is already known to be there or not: a
 * backfill decides those rows at once and waits (`waitListed`) only for rows
 * beyond, so the listing and the copying overlap.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BackendError, describeKey } from '../contract/errors.js';
import { compareKeys } from '../contract/keys.js';
import type { BlobDB } from '../contract/types.js';

type Database = import('better-sqlite3').Database;
type Statement = import('better-sqlite3').Statement;

const INSERT_BATCH = 1000;
/** SQLite's default limit of bound variables is 32766; stay well below. */
const LOOKUP_BATCH = 900;

export interface PresentIndexOptions {
  /** Directory for the temporary index file (default: the OS temp dir). */
  tempDir?: string;
  signal?: AbortSignal;
  /** Called every page of keys with the running count. */
  onProgress?: (keys: number) => void;
}

/**
 * A snapshot being listed (`PresentIndex.start`). `index` is usable at once:
 * it answers for the keys listed so far (`listedThrough`, `waitListed`).
 * `ready` resolves with it once the listing is complete and rejects if the
 * listing fails (the keys listed before stay answered). `cancel()` stops a
 * listing still running and closes the index; it is idempotent, and the
 * owner calls it when done.
 */
export interface SnapshotBuild {
  readonly index: PresentIndex;
  readonly ready: Promise<PresentIndex>;
  cancel(): Promise<void>;
}

interface Waiter {
  key: string;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export class PresentIndex {
  readonly #db: Database;
  readonly #dir: string;
  readonly #lookups = new Map<number, Statement>();
  #count = 0;
  #bytes = 0;
  #closed = false;
  /** The last key inserted by the listing; every key up to it is known. */
  #position: string | undefined;
  /** The listing has ended (every key is known), or it never ran (`empty`). */
  #complete = true;
  #failure: unknown;
  #waiters: Waiter[] = [];

  private constructor(db: Database, dir: string) {
    this.#db = db;
    this.#dir = dir;
  }

  /** Lists `db` once into a new index. */
  static async build(db: BlobDB, opts: PresentIndexOptions = {}): Promise<PresentIndex> {
    const index = await PresentIndex.empty(opts.tempDir);
    try {
      await index.#fill(db, opts);
      return index;
    } catch (err) {
      await index.close();
      throw err;
    }
  }

  /**
   * Creates the index file and starts the listing (its first request is on
   * its way), then resolves: the listing goes on while the caller does other
   * work. Nothing is written anywhere but the index's temporary file, so a
   * command may start its snapshot before its preflight and cancel it if the
   * preflight fails.
   */
  static async start(db: BlobDB, opts: PresentIndexOptions = {}): Promise<SnapshotBuild> {
    const index = await PresentIndex.empty(opts.tempDir);
    const controller = new AbortController();
    const signal = opts.signal ? AbortSignal.any([opts.signal, controller.signal]) : controller.signal;
    const ready = index.#fill(db, { ...opts, signal }).then(() => index);
    // The owner awaits `ready` (or not); a failed listing is never an unhandled rejection.
    ready.catch(() => {});
    return {
      index,
      ready,
      async cancel() {
        controller.abort();
        await ready.catch(() => {});
        await index.close();
      },
    };
  }

  async #fill(db: BlobDB, opts: PresentIndexOptions): Promise<void> {
    this.#complete = false;
    const insert = this.#db.prepare('INSERT OR REPLACE INTO present (key, size) VALUES (?, ?)');
    const insertMany = this.#db.transaction((rows: [string, number][]) => {
      for (const [k, s] of rows) insert.run(k, s);
    });
    const flush = (rows: [string, number][]) => {
      insertMany(rows);
      this.#position = rows[rows.length - 1]?.[0] ?? this.#position;
      opts.onProgress?.(this.#count);
      this.#wake();
    };
    try {
      let batch: [string, number][] = [];
      let previous: string | undefined;
      for await (const info of db.list()) {
        opts.signal?.throwIfAborted();
        // Rows are decided against the keys listed so far: the order is what makes that sound.
        if (previous !== undefined && compareKeys(info.key, previous) <= 0) {
          throw new BackendError(
            `the new backend listed ${describeKey(info.key)} after ${describeKey(previous)}: not in ascending byte order, as a BlobDB listing must be`,
          );
        }
        previous = info.key;
        batch.push([info.key, info.size]);
        this.#count++;
        this.#bytes += info.size;
        if (batch.length >= INSERT_BATCH) {
          flush(batch);
          batch = [];
        }
      }
      if (batch.length > 0) flush(batch);
      this.#complete = true;
      this.#wake();
    } catch (err) {
      this.#failure = err;
      this.#wake();
      throw err;
    }
  }

  /** An index with nothing in it (tests, `--existence head`). */
  static async empty(tempDir?: string): Promise<PresentIndex> {
    const dir = await mkdtemp(join(tempDir ?? tmpdir(), 'blobshift-snapshot-'));
    let db: import('better-sqlite3').Database | undefined;
    try {
      const { default: BetterSqlite3 } = await import('better-sqlite3');
      db = new BetterSqlite3(join(dir, 'present.sqlite'));
      db.pragma('journal_mode = OFF');
      db.pragma('synchronous = OFF');
      db.pragma('cache_size = -16000');
      // BLOB keys compare as bytes; the UTF-8 bytes of the key are stored.
      db.exec('CREATE TABLE present (key TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID');
      return new PresentIndex(db, dir);
    } catch (err) {
      // Nothing left behind: not the database, not its directory.
      db?.close();
      await rm(dir, { recursive: true, force: true }).catch(() => {});
      throw err;
    }
  }

  /** Keys in the snapshot (so far, while the listing runs). */
  get count(): number {
    return this.#count;
  }

  /** Bytes in the snapshot (so far, while the listing runs). */
  get bytes(): number {
    return this.#bytes;
  }

  /** The last key listed so far (`undefined` before the first page). */
  get position(): string | undefined {
    return this.#position;
  }

  /** The listing has ended: the index answers for every key. */
  get complete(): boolean {
    return this.#complete;
  }

  /** Whether the index already answers for `key`: the listing is complete or has passed it. */
  listedThrough(key: string): boolean {
    return this.#complete || (this.#position !== undefined && compareKeys(key, this.#position) <= 0);
  }

  /**
   * Resolves once the index answers for `key` (see `listedThrough`); rejects
   * with the listing's error if it fails before.
   */
  waitListed(key: string): Promise<void> {
    if (this.listedThrough(key)) return Promise.resolve();
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => this.#waiters.push({ key, resolve, reject }));
  }

  #wake(): void {
    if (this.#waiters.length === 0) return;
    const still: Waiter[] = [];
    for (const w of this.#waiters) {
      if (this.listedThrough(w.key)) w.resolve();
      else if (this.#failure !== undefined) w.reject(this.#failure);
      else still.push(w);
    }
    this.#waiters = still;
  }

  /** Sizes of those `keys` that the snapshot holds (of the keys listed so far). */
  lookup(keys: readonly string[]): Map<string, number> {
    const found = new Map<string, number>();
    for (let i = 0; i < keys.length; i += LOOKUP_BATCH) {
      const part = keys.slice(i, i + LOOKUP_BATCH);
      const rows = this.#statement(part.length).all(...part) as { key: string; size: number }[];
      for (const row of rows) found.set(row.key, row.size);
    }
    return found;
  }

  /** Adds or replaces one entry (what the run itself copied). */
  add(key: string, size: number): void {
    this.#db.prepare('INSERT OR REPLACE INTO present (key, size) VALUES (?, ?)').run(key, size);
    this.#count++;
  }

  /** The keys that start with `prefix`, in byte order (they are contiguous in that order). */
  *keysWithPrefix(prefix: string): Generator<string> {
    for (const row of this.#db
      .prepare('SELECT key FROM present WHERE key >= ? ORDER BY key')
      .iterate(prefix)) {
      const key = (row as { key: string }).key;
      if (!key.startsWith(prefix)) return;
      yield key;
    }
  }

  /** Every key in byte order (for orphan reports). */
  *keys(): Generator<{ key: string; size: number }> {
    for (const row of this.#db.prepare('SELECT key, size FROM present ORDER BY key').iterate()) {
      yield row as { key: string; size: number };
    }
  }

  #statement(n: number): Statement {
    let st = this.#lookups.get(n);
    if (!st) {
      st = this.#db.prepare(
        `SELECT key, size FROM present WHERE key IN (${new Array(n).fill('?').join(',')})`,
      );
      this.#lookups.set(n, st);
    }
    return st;
  }

  /** Closes and deletes the index file. Waiters still waiting are rejected. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#failure ??= new Error('the listing snapshot was closed');
    this.#wake();
    this.#db.close();
    await rm(this.#dir, { recursive: true, force: true });
  }
}
