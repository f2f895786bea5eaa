/**
 * Report files written by check-blob-logs, verify and cleanup-old: JSON
 * lines, UTF-8, created 0600 in a 0700 directory, never overwritten (a name
 * that exists gets a `-2`, `-3`… suffix). Lines are buffered and written in
 * batches; `sync()` makes everything written so far durable.
 */
import { type FileHandle, open } from 'node:fs/promises';
import { join } from 'node:path';
import { BlobShiftError, errorMessage, isErrnoException } from '../contract/errors.js';
import { ensureLogDir } from './missing-log.js';

/** Lines buffered before they are written out (without a sync). */
const WRITE_EVERY = 512;

export class JsonLinesFile {
  readonly path: string;
  #handle: FileHandle;
  #pending: string[] = [];
  /** Writes to one handle must not overlap: each waits for the one before. */
  #chain: Promise<void> = Promise.resolve();
  #count = 0;
  #closed = false;

  private constructor(path: string, handle: FileHandle) {
    this.path = path;
    this.#handle = handle;
  }

  /** Creates `name` in `dir` (made 0700 when new); never reuses an existing file. */
  static async create(dir: string, name: string): Promise<JsonLinesFile> {
    await ensureLogDir(dir);
    const dot = name.lastIndexOf('.');
    const base = dot > 0 ? name.slice(0, dot) : name;
    const ext = dot > 0 ? name.slice(dot) : '';
    for (let i = 1; i <= 100; i++) {
      const path = join(dir, i === 1 ? name : `${base}-${i}${ext}`);
      try {
        return new JsonLinesFile(path, await open(path, 'wx', 0o600));
      } catch (err) {
        if (!isErrnoException(err, 'EEXIST')) {
          throw new BlobShiftError(`cannot create ${path}: ${errorMessage(err)}`, { cause: err });
        }
      }
    }
    throw new BlobShiftError(`cannot find a free file name for ${name} in ${dir}`);
  }

  /** Lines written so far. */
  get count(): number {
    return this.#count;
  }

  /** Queues one JSON line; written out in batches. */
  async write(value: unknown): Promise<void> {
    if (this.#closed) throw new BlobShiftError(`${this.path} is closed`);
    this.#pending.push(`${JSON.stringify(value)}\n`);
    this.#count++;
    if (this.#pending.length >= WRITE_EVERY) await this.#writeOut();
  }

  /** Writes what is buffered and syncs it to disk. */
  async sync(): Promise<void> {
    await this.#writeOut();
    await this.#serial(() => this.#handle.datasync());
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.sync();
    } finally {
      this.#closed = true;
      await this.#handle.close();
    }
  }

  async #writeOut(): Promise<void> {
    if (this.#pending.length === 0) return;
    const text = this.#pending.join('');
    this.#pending = [];
    await this.#serial(async () => {
      await this.#handle.write(text);
    });
  }

  #serial(fn: () => Promise<void>): Promise<void> {
    const next = this.#chain.then(fn);
    this.#chain = next.catch(() => {});
    return next;
  }
}

/**
 * A JSON-lines file that exists only once something is written to it, so a
 * class of problems with no members leaves no empty file behind.
 */
export class LazyJsonLinesFile {
  readonly #dir: string;
  readonly #name: string;
  #file: Promise<JsonLinesFile> | undefined;
  #count = 0;

  constructor(dir: string, name: string) {
    this.#dir = dir;
    this.#name = name;
  }

  get count(): number {
    return this.#count;
  }

  async write(value: unknown): Promise<void> {
    this.#count++;
    this.#file ??= JsonLinesFile.create(this.#dir, this.#name);
    await (await this.#file).write(value);
  }

  /** Closes the file; resolves its path, or undefined when nothing was written. */
  async close(): Promise<string | undefined> {
    if (!this.#file) return undefined;
    const file = await this.#file;
    await file.close();
    return file.path;
  }
}
