/**
 * `BlobStore`: the app-facing store that keeps a blob and its metadata row
 * together. Works with any `BlobDB` (a backend, or `MigratingBlobDB` during a
 * migration) and any `MetaStore`.
 *
 * Ordering is what keeps them consistent, a row exactly when there is a blob:
 *
 * - `put`: every row field is checked first (nothing is written for a bad
 *   one); then the blob is written, then the row; then the blob is checked to
 *   be still there. A `delete` of the same key that ran in between took the
 *   blob: the put takes its row back and rejects `ConcurrentDeleteError`.
 * - `delete`: the row first, then the blob (in every backend); then, if a row
 *   for the key is back (a `put` wrote it in between, its blob now gone), that
 *   row is removed too.
 *
 * So a put and a delete of one key that overlap, in one process or in
 * several, end as if one came after the other: the put after the delete (row
 * and blob stay, the put resolves), or the put before it (neither stays; the
 * put resolves, or rejects `ConcurrentDeleteError` when it saw the blob go).
 * The row of a key whose blob is missing is removed under the row's lock
 * (`MetaStore.deleteIf`), and only while the blob is still missing, so a
 * newer put's row is never taken. A crash between two steps leaves at most a
 * blob without a row (an orphan, which `verify` lists and nothing reads),
 * never a row without a blob.
 */
import { createHash, randomBytes } from 'node:crypto';
import { pipeline, type Readable } from 'node:stream';
import { ByteCounter, bodyBuffer, getWithInfo, isValidSize } from '../contract/body.js';
import {
  BlobShiftError,
  ConcurrentDeleteError,
  describeKey,
  errorMessage,
  InvalidFieldError,
  MetadataError,
  NotSupportedError,
  ReadOnlyError,
} from '../contract/errors.js';
import { validateKey } from '../contract/keys.js';
import type { MetaStore } from '../contract/meta.js';
import type {
  BlobBody,
  BlobDB,
  BlobInfo,
  BlobMeta,
  BlobWithInfo,
  BulkDeleteResult,
  HttpMeta,
  SignedUrlOptions,
} from '../contract/types.js';

export interface BlobStoreOptions {
  /** Where the bytes go: a backend, or a `MigratingBlobDB`. */
  db: BlobDB;
  /** Where the rows go. Must be writable (not an app's mapped table). */
  meta: MetaStore;
}

/**
 * What `BlobStore.put` takes. The text fields are checked against their
 * columns ({@link ROW_LIMITS}, in characters) before anything is written:
 * no NUL, no unpaired surrogates; `InvalidFieldError` names the one that
 * does not fit.
 */
export interface StorePutOptions {
  /** The owning object in the app; up to 255 characters. */
  parentId: string;
  /** The blob's kind (`attachment`, `image`…); up to 255 characters. */
  type: string;
  /** A display name (a file name); default `''`; up to 1024 characters. */
  name?: string;
  /** A MIME type, up to 255 printable ASCII characters (it becomes an HTTP header). */
  contentType?: string;
  /** The key to store under; default a new random key (see {@link randomKey}). An existing key is overwritten. */
  key?: string;
  /** A valid date between the years 1000 and 9999 (MySQL's DATETIME), or null. */
  expiresOn?: Date | null;
  httpMeta?: HttpMeta;
  /** The expected byte count; a body of another length fails before anything is stored. */
  size?: number;
}

/**
 * A new random key: 128 random bits as 32 lower-case hex digits, fanned out
 * under two one-byte directories taken from its start, e.g.
 * `3f/2a/3f2a9c…` — so a filesystem backend never holds millions of files in
 * one directory. Always a valid key.
 */
export function randomKey(): string {
  const hex = randomBytes(16).toString('hex');
  return `${hex.slice(0, 2)}/${hex.slice(2, 4)}/${hex}`;
}

/** Keys per row-deletion batch in `bulkDelete`. */
const DELETE_BATCH = 1000;

interface BatchDeleter {
  deleteMany(keys: string[]): Promise<number>;
}

function hasDeleteMany(meta: MetaStore): meta is MetaStore & BatchDeleter {
  return typeof (meta as Partial<BatchDeleter>).deleteMany === 'function';
}

export class BlobStore {
  readonly db: BlobDB;
  readonly meta: MetaStore;

  constructor(opts: BlobStoreOptions) {
    this.db = opts.db;
    this.meta = opts.meta;
  }

  /**
   * Stores `body` and records its row. Every row field is checked against its
   * column first (`InvalidFieldError`, nothing written). Then the blob is
   * written, its SHA-256 computed while it streams; then the row is upserted
   * with the byte count and hash (an existing row for the key keeps its id);
   * then the blob is checked to be still there (one `exists`: a HEAD on S3).
   * Resolves the row.
   *
   * Rejects `ConcurrentDeleteError` when a `delete` of the same key removed
   * the blob between its write and the row's: the row is taken back and
   * nothing is stored (see the class comment). A row write that fails rejects
   * `MetadataError` (naming the field where the database says which; never
   * SQL text or values); the blob just written is then removed when no row
   * references the key (read again first: a row from before, or a commit
   * whose answer was lost, keeps its blob).
   */
  async put(body: BlobBody, opts: StorePutOptions): Promise<BlobMeta> {
    if (this.meta.readOnly) {
      throw new ReadOnlyError(`cannot put: the metadata table ${this.meta.table} is mapped read-only`);
    }
    const fields = rowFields(opts);
    const key = validateKey(opts.key ?? randomKey());
    const putOpts = {
      ...(fields.contentType !== null ? { contentType: fields.contentType } : {}),
      ...(opts.httpMeta !== undefined ? { httpMeta: opts.httpMeta } : {}),
    };

    let contentLength: number;
    let sha256: string;
    const buf = bodyBuffer(body);
    if (buf !== undefined) {
      // In memory: hash it here and hand the buffer on, so the backend knows its length.
      sha256 = createHash('sha256').update(buf).digest('hex');
      contentLength = buf.byteLength;
      await this.db.put(key, buf, { ...putOpts, size: opts.size ?? buf.byteLength });
    } else {
      const counter = new ByteCounter(key, opts.size, { hash: 'sha256' });
      // Errors travel both ways: a failing source fails the counter the backend
      // reads; a backend that gives up destroys the counter and so the source.
      pipeline(body as Readable, counter, () => {});
      try {
        await this.db.put(key, counter, opts.size === undefined ? putOpts : { ...putOpts, size: opts.size });
      } catch (err) {
        counter.destroy();
        throw err;
      }
      contentLength = counter.bytes;
      sha256 = counter.digest() as string;
    }

    let row: BlobMeta;
    try {
      row = await retryLocks(() => this.meta.upsert({ key, ...fields, contentLength, sha256 }));
    } catch (err) {
      throw await this.#failedRowWrite(key, err);
    }
    // A delete of the key may have run between the blob and the row: its blob
    // is then gone, and this row must not stay without it.
    if (!(await this.db.exists(key))) {
      try {
        await this.#dropIfBlobGone(key);
      } catch (err) {
        throw this.#metaError(
          'delete',
          key,
          err,
          '; a concurrent delete took the blob, and its row may remain: delete the key again',
        );
      }
      throw new ConcurrentDeleteError(key);
    }
    return row;
  }

  /**
   * The row write failed after the blob was written. Removes the blob when
   * no row references the key, and says what became of it.
   */
  async #failedRowWrite(key: string, err: unknown): Promise<Error> {
    let row: BlobMeta | undefined;
    try {
      row = await this.meta.get(key);
    } catch (readErr) {
      return this.#metaError(
        'write',
        key,
        err,
        `; the blob written for it may remain unreferenced (the row could not be read again: ${describeDbError(readErr)})`,
      );
    }
    if (row !== undefined) {
      return this.#metaError('write', key, err, '; a row references the key, so its blob stays');
    }
    try {
      await this.db.delete(key);
      await this.#settle(key);
    } catch (deleteErr) {
      return this.#metaError(
        'write',
        key,
        err,
        `; the blob written for it could not be removed and remains unreferenced: ${errorMessage(deleteErr)}`,
      );
    }
    return this.#metaError('write', key, err, '; the blob written for it was removed');
  }

  #metaError(op: 'write' | 'delete' | 'read', key: string | undefined, err: unknown, tail = ''): Error {
    if (err instanceof BlobShiftError && tail === '') return err;
    const field = err instanceof BlobShiftError ? undefined : failedField(err);
    const what = key === undefined ? `${op} rows` : `${op} the metadata row of ${describeKey(key)}`;
    const why =
      err instanceof BlobShiftError
        ? err.message
        : field !== undefined
          ? `the database refused ${field} (${describeDbError(err)})`
          : `the database answered ${describeDbError(err)}`;
    return new MetadataError(`could not ${what} in ${this.meta.table}: ${why}${tail}`, {
      cause: err,
      ...(key !== undefined ? { key } : {}),
      ...(field !== undefined ? { field } : {}),
    });
  }

  /** After a blob delete: a row for `key` that came back meanwhile (a racing put) must not stay without its blob. */
  async #settle(key: string): Promise<void> {
    if ((await this.meta.get(key)) !== undefined) await this.#dropIfBlobGone(key);
  }

  /**
   * Removes the row of `key` if its blob is missing, under the row's lock
   * (`MetaStore.deleteIf`), so a put that writes the blob and the row again
   * meanwhile keeps its row. A MetaStore without `deleteIf` gets a read,
   * check and delete in a row, which a racing put can slip between.
   */
  async #dropIfBlobGone(key: string): Promise<void> {
    const blobGone = async (): Promise<boolean> => !(await this.db.exists(key));
    const { meta } = this;
    if (meta.deleteIf) {
      await retryLocks(() => (meta.deleteIf as NonNullable<MetaStore['deleteIf']>).call(meta, key, blobGone));
      return;
    }
    if ((await meta.get(key)) !== undefined && (await blobGone())) await retryLocks(() => meta.delete(key));
  }

  /** The blob's bytes; rejects `BlobNotFoundError` before handing back a stream. */
  get(key: string): Promise<Readable> {
    return this.db.get(key);
  }

  /**
   * The blob's bytes with what the backend knows of it (size, content type,
   * HTTP metadata, ETag), in one request where the backend can (one GetObject
   * on S3, one open on disk): what a download handler needs for its
   * `Content-Type` and `Content-Length`. Rejects `BlobNotFoundError` before
   * any stream exists. The caller consumes `body` or destroys it.
   */
  getWithInfo(key: string): Promise<BlobWithInfo> {
    return getWithInfo(this.db, key);
  }

  /**
   * A URL that reads the blob without credentials until it expires (a
   * presigned S3 GetObject), where the backend can sign one (`S3BlobDB`, and
   * `MigratingBlobDB` when the backend holding the blob can). Rejects
   * `NotSupportedError` on a backend that cannot (files, memory): serve the
   * bytes through the app with {@link getWithInfo} there.
   */
  getSignedUrl(key: string, opts?: SignedUrlOptions): Promise<string> {
    if (!this.db.getSignedUrl) {
      validateKey(key);
      return Promise.reject(
        new NotSupportedError(
          'getSignedUrl',
          `this store's backend cannot sign URLs for ${describeKey(key)}; serve the bytes through the app with getWithInfo`,
        ),
      );
    }
    return this.db.getSignedUrl(key, opts);
  }

  /** The backend's view of the blob; rejects `BlobNotFoundError`. */
  stat(key: string): Promise<BlobInfo> {
    return this.db.stat(key);
  }

  exists(key: string): Promise<boolean> {
    return this.db.exists(key);
  }

  size(key: string): Promise<number> {
    return this.db.size(key);
  }

  /** The metadata row, or `undefined`. */
  row(key: string): Promise<BlobMeta | undefined> {
    return this.meta.get(key);
  }

  /**
   * Deletes the row, then the blob in every backend (`MigratingBlobDB`
   * deletes both copies), then reads the row again: a `put` of the key that
   * wrote its row in between lost its blob to this delete, and that row is
   * removed too (under its lock, only while the blob is missing). Resolves
   * true when a row or a blob was there. Idempotent. If the row delete
   * fails, the blob is left alone (`MetadataError`).
   */
  async delete(key: string): Promise<boolean> {
    validateKey(key);
    let row: boolean;
    try {
      row = await retryLocks(() => this.meta.delete(key));
    } catch (err) {
      throw this.#metaError('delete', key, err);
    }
    const blob = await this.db.delete(key);
    try {
      await this.#settle(key);
    } catch (err) {
      throw this.#metaError('delete', key, err, '; the blob is deleted, a row written meanwhile may remain');
    }
    return row || blob;
  }

  /**
   * Deletes many: rows first (in batches), then the blobs of every key whose
   * row delete succeeded, then (as `delete` does) the rows that racing puts
   * wrote meanwhile, found with one query per batch. Keys whose row or blob
   * could not be deleted are returned with their error; a key whose row
   * delete failed keeps its blob.
   */
  async bulkDelete(keys: string[]): Promise<BulkDeleteResult> {
    const errors: BulkDeleteResult['errors'] = [];
    const rowsGone: string[] = [];
    const unique = [...new Set(keys)];
    if (this.meta.readOnly) {
      throw new ReadOnlyError(`cannot delete: the metadata table ${this.meta.table} is mapped read-only`);
    }
    for (let i = 0; i < unique.length; i += DELETE_BATCH) {
      await this.#deleteRows(unique.slice(i, i + DELETE_BATCH), rowsGone, errors);
    }
    if (rowsGone.length === 0) return { errors };
    const result = await this.db.bulkDelete(rowsGone);
    errors.push(...result.errors);
    const failed = new Set(result.errors.map((e) => e.key));
    const deleted = rowsGone.filter((key) => !failed.has(key));
    for (let i = 0; i < deleted.length; i += DELETE_BATCH) {
      await this.#settleMany(deleted.slice(i, i + DELETE_BATCH), errors);
    }
    return { errors };
  }

  /**
   * `bulkDelete`'s first step for one batch: deletes the rows (in one
   * statement where the metadata can), adding each deleted key to
   * `rowsGone` and each failure to `errors`.
   */
  async #deleteRows(batch: string[], rowsGone: string[], errors: BulkDeleteResult['errors']): Promise<void> {
    if (hasDeleteMany(this.meta)) {
      try {
        await retryLocks(() => (this.meta as MetaStore & BatchDeleter).deleteMany(batch));
        rowsGone.push(...batch);
      } catch (err) {
        const error = this.#metaError('delete', undefined, err);
        for (const key of batch) errors.push({ key, error });
      }
      return;
    }
    for (const key of batch) {
      try {
        await retryLocks(() => this.meta.delete(key));
        rowsGone.push(key);
      } catch (err) {
        errors.push({ key, error: this.#metaError('delete', key, err) });
      }
    }
  }

  /**
   * `bulkDelete`'s last step for one batch of deleted blobs: the rows that
   * racing puts wrote meanwhile, found with one query, are removed as
   * `delete` removes them; failures go to `errors`.
   */
  async #settleMany(batch: string[], errors: BulkDeleteResult['errors']): Promise<void> {
    let back: Set<string>;
    try {
      back = await this.meta.referenced(batch);
    } catch (err) {
      const error = this.#metaError(
        'read',
        undefined,
        err,
        '; the blobs are deleted, rows written meanwhile may remain',
      );
      for (const key of batch) errors.push({ key, error });
      return;
    }
    for (const key of back) {
      try {
        await this.#dropIfBlobGone(key);
      } catch (err) {
        errors.push({ key, error: this.#metaError('delete', key, err) });
      }
    }
  }
}

/** Attempts at a row write that the database chose as a deadlock victim or timed out on a lock. */
const LOCK_ATTEMPTS = 5;

/**
 * Lock conflicts a retry resolves: MySQL/MariaDB deadlock (1213) and lock
 * wait timeout (1205), PostgreSQL deadlock (40P01) and serialization failure
 * (40001). An upsert and a delete of one key can deadlock on InnoDB.
 */
function isLockConflict(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return (
    code === 'ER_LOCK_DEADLOCK' || code === 'ER_LOCK_WAIT_TIMEOUT' || code === '40P01' || code === '40001'
  );
}

/** Runs a row write again (after a short random pause) when the database gave it up over a lock conflict. */
async function retryLocks<T>(write: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await write();
    } catch (err) {
      if (!isLockConflict(err) || attempt >= LOCK_ATTEMPTS) throw err;
      await new Promise((r) => setTimeout(r, 5 * 2 ** attempt * (0.5 + Math.random())));
    }
  }
}

/** The row fields of a put, checked against blobshift's columns. */
interface RowFields {
  parentId: string;
  type: string;
  name: string;
  contentType: string | null;
  expiresOn: Date | null;
}

/**
 * The widths of blobshift's own metadata columns (`parent_id`, `type`,
 * `name`, `content_type` in lib/meta/schema.ts), in characters as
 * MySQL/MariaDB and PostgreSQL count them (Unicode code points).
 * `BlobStore.put` holds every row to them on every database, SQLite
 * included (which does not enforce them), so a row that fits here fits
 * wherever the metadata moves.
 */
export const ROW_LIMITS = { parentId: 255, type: 255, name: 1024, contentType: 255 } as const;

/** DATETIME's range on MySQL/MariaDB: `expiresOn` must fall inside it. */
const MIN_DATE = Date.UTC(1000, 0, 1);
const MAX_DATE = Date.UTC(10000, 0, 1) - 1;

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
/** What an HTTP header value may hold (a content type becomes one on S3). */
const HEADER_TEXT = /^[\t\x20-\x7e]*$/;

function codePoints(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

function textField(field: keyof typeof ROW_LIMITS, value: unknown, key: string | undefined): string {
  const where = key === undefined ? 'BlobStore.put' : `BlobStore.put of ${describeKey(key)}`;
  const opts = key === undefined ? undefined : { key };
  if (typeof value !== 'string') {
    throw new InvalidFieldError(
      field,
      `${where}: ${field} must be a string, got ${value === null ? 'null' : typeof value}; nothing was stored`,
      opts,
    );
  }
  const limit = ROW_LIMITS[field];
  if (value.length > limit) {
    const n = codePoints(value);
    if (n > limit) {
      throw new InvalidFieldError(
        field,
        `${where}: ${field} is ${n} characters long; its column holds ${limit}; nothing was stored`,
        opts,
      );
    }
  }
  if (value.includes('\u0000')) {
    throw new InvalidFieldError(
      field,
      `${where}: ${field} holds a NUL character, which the metadata columns cannot store; nothing was stored`,
      opts,
    );
  }
  if (LONE_SURROGATE.test(value)) {
    throw new InvalidFieldError(
      field,
      `${where}: ${field} is not valid Unicode (an unpaired surrogate); nothing was stored`,
      opts,
    );
  }
  return value;
}

/** Checks every row field of a put before anything is written. */
function rowFields(opts: StorePutOptions): RowFields {
  if (opts === null || typeof opts !== 'object') {
    throw new InvalidFieldError('parentId', 'BlobStore.put needs options with parentId and type');
  }
  const key = typeof opts.key === 'string' ? opts.key : undefined;
  const parentId = textField('parentId', opts.parentId, key);
  const type = textField('type', opts.type, key);
  const name = textField('name', opts.name ?? '', key);
  const contentType = contentTypeField(opts.contentType, key);
  const expiresOn = expiresOnField(opts.expiresOn, key);
  if (opts.size !== undefined && !isValidSize(opts.size)) {
    throw new InvalidFieldError(
      'size',
      `BlobStore.put: size must be a non-negative integer, got ${String(opts.size)}; nothing was stored`,
    );
  }
  return { parentId, type, name, contentType, expiresOn };
}

/** A put's content type: `null` when absent, else a column-sized text that can travel as an HTTP header. */
function contentTypeField(
  value: StorePutOptions['contentType'] | null,
  key: string | undefined,
): string | null {
  if (value === undefined || value === null) return null;
  const contentType = textField('contentType', value, key);
  if (!HEADER_TEXT.test(contentType)) {
    throw new InvalidFieldError(
      'contentType',
      `BlobStore.put${key === undefined ? '' : ` of ${describeKey(key)}`}: contentType must be printable ASCII (a MIME type such as "text/plain; charset=utf-8"); nothing was stored`,
      key === undefined ? undefined : { key },
    );
  }
  return contentType;
}

/** A put's expiry: `null` when absent, else a Date inside DATETIME's range. */
function expiresOnField(value: StorePutOptions['expiresOn'], key: string | undefined): Date | null {
  if (value === undefined || value === null) return null;
  const t = value instanceof Date ? value.getTime() : Number.NaN;
  if (!(t >= MIN_DATE && t <= MAX_DATE)) {
    throw new InvalidFieldError(
      'expiresOn',
      `BlobStore.put${key === undefined ? '' : ` of ${describeKey(key)}`}: expiresOn must be a valid Date between the years 1000 and 9999, or null; nothing was stored`,
      key === undefined ? undefined : { key },
    );
  }
  return value;
}

/** blobshift's column names, as the `BlobStore.put` options that fill them. */
const COLUMN_FIELDS: Record<string, string> = {
  key: 'key',
  parent_id: 'parentId',
  type: 'type',
  name: 'name',
  content_length: 'contentLength',
  content_type: 'contentType',
  sha256: 'sha256',
  created_on: 'createdOn',
  expires_on: 'expiresOn',
};

/**
 * The field a database error names, where it names one: PostgreSQL's
 * `column`, MySQL's "… for column 'x' …", SQLite's "constraint failed: t.x".
 * Only the column name is taken from the message, never a value.
 */
function failedField(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const e = err as { column?: unknown; sqlMessage?: unknown; message?: unknown };
  let column: string | undefined;
  if (typeof e.column === 'string') column = e.column;
  const text =
    typeof e.sqlMessage === 'string' ? e.sqlMessage : typeof e.message === 'string' ? e.message : '';
  column ??= /for column [`'"]?(?:[A-Za-z0-9_]+[`'"]?\.[`'"]?)*([A-Za-z0-9_]+)[`'"]? at row/.exec(text)?.[1];
  column ??= /constraint failed: [A-Za-z0-9_]+\.([A-Za-z0-9_]+)/.exec(text)?.[1];
  return column === undefined ? undefined : (COLUMN_FIELDS[column] ?? column);
}

/** A database error as its code (`ER_DATA_TOO_LONG`, `SQLITE_BUSY`, `ECONNREFUSED`, `22001`), never its message: drivers quote the SQL there. */
function describeDbError(err: unknown): string {
  if (err instanceof BlobShiftError) return err.message;
  if (typeof err === 'object' && err !== null) {
    const { code, errno } = err as { code?: unknown; errno?: unknown };
    if (typeof code === 'string' && code !== '')
      return typeof errno === 'number' ? `${code} (${errno})` : code;
    if (typeof errno === 'number') return `error ${errno}`;
    if (err instanceof Error && err.name !== 'Error') return err.name;
  }
  return 'an error without a code (see the cause)';
}
