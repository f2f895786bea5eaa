/**
 * The listing snapshot: what the new backend holds, listed once at the start
 * of a run (ListObjectsV2, 1000 keys a page on S3) into an on-disk SQLite file
 * of key → size. Chunks of metadata rows are joined against it, so existence
 * costs one listing instead of a request per blob, and memory stays flat
 * whatever the size of the bucket.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlobDB } from '../types.js';

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

export class PresentIndex {
  readonly #db: Database;
  readonly #dir: string;
  readonly #lookups = new Map<number, Statement>();
  #count = 0;
  #bytes = 0;
  #closed = false;

  private constructor(db: Database, dir: string) {
    this.#db = db;
    this.#dir = dir;
  }

  /** Lists `db` once into a new index. */
  static async build(db: BlobDB, opts: PresentIndexOptions = {}): Promise<PresentIndex> {
    const index = await PresentIndex.empty(opts.tempDir);
    try {
      const insert = index.#db.prepare('INSERT OR REPLACE INTO present (key, size) VALUES (?, ?)');
      const insertMany = index.#db.transaction((rows: [string, number][]) => {
        for (const [k, s] of rows) insert.run(k, s);
      });
      let batch: [string, number][] = [];
      for await (const info of db.list()) {
        opts.signal?.throwIfAborted();
        batch.push([info.key, info.size]);
        index.#count++;
        index.#bytes += info.size;
        if (batch.length >= INSERT_BATCH) {
          insertMany(batch);
          batch = [];
          opts.onProgress?.(index.#count);
        }
      }
      if (batch.length > 0) insertMany(batch);
      opts.onProgress?.(index.#count);
      return index;
    } catch (err) {
      await index.close();
      throw err;
    }
  }

  /** An index with nothing in it (tests, `--existence head`). */
  static async empty(tempDir?: string): Promise<PresentIndex> {
    const dir = await mkdtemp(join(tempDir ?? tmpdir(), 'blobshift-snapshot-'));
    const { default: BetterSqlite3 } = await import('better-sqlite3');
    const db = new BetterSqlite3(join(dir, 'present.sqlite'));
    db.pragma('journal_mode = OFF');
    db.pragma('synchronous = OFF');
    db.pragma('cache_size = -16000');
    // BLOB keys compare as bytes; the UTF-8 bytes of the key are stored.
    db.exec('CREATE TABLE present (key TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID');
    return new PresentIndex(db, dir);
  }

  /** Keys in the snapshot. */
  get count(): number {
    return this.#count;
  }

  /** Bytes in the snapshot. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Sizes of those `keys` that the snapshot holds. */
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

  /** Closes and deletes the index file. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#db.close();
    await rm(this.#dir, { recursive: true, force: true });
  }
}
