/**
 * `BlobStore`: the app-facing store that keeps a blob and its metadata row
 * together. Works with any `BlobDB` (a backend, or `MigratingBlobDB` during a
 * migration) and any `MetaStore`.
 *
 * Ordering is what keeps them consistent: a put writes the blob first and the
 * row second, a delete removes the row first and the blob second. A crash in
 * between can leave a blob without a row (an orphan, which `verify` lists and
 * nothing reads), never a row without a blob.
 */
import { createHash, randomBytes } from 'node:crypto';
import { pipeline, type Readable } from 'node:stream';
import { ByteCounter, bodyBuffer, isValidSize } from './body.js';
import { BlobShiftError, errorMessage, ReadOnlyError } from './errors.js';
import { validateKey } from './keys.js';
import type { MetaStore } from './meta/types.js';
import type { BlobBody, BlobDB, BlobInfo, BlobMeta, BulkDeleteResult, HttpMeta } from './types.js';

export interface BlobStoreOptions {
  /** Where the bytes go: a backend, or a `MigratingBlobDB`. */
  db: BlobDB;
  /** Where the rows go. Must be writable (not an app's mapped table). */
  meta: MetaStore;
}

export interface StorePutOptions {
  /** The owning object in the app. */
  parentId: string;
  /** The blob's kind (`attachment`, `image`…). */
  type: string;
  /** A display name (a file name); default `''`. */
  name?: string;
  contentType?: string;
  /** The key to store under; default a new random key (see {@link randomKey}). An existing key is overwritten. */
  key?: string;
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
   * Stores `body` and records its row. The blob is written first, its SHA-256
   * computed while it streams; then the row is upserted with the byte count
   * and hash (an existing row for the key keeps its id). Resolves the row.
   *
   * If the row cannot be written, the error propagates and the blob stays
   * (unreferenced): deleting it could leave an earlier row, or a row whose
   * commit was lost in transit, without its blob.
   */
  async put(body: BlobBody, opts: StorePutOptions): Promise<BlobMeta> {
    if (this.meta.readOnly) {
      throw new ReadOnlyError(`cannot put: the metadata table ${this.meta.table} is mapped read-only`);
    }
    if (typeof opts.parentId !== 'string' || typeof opts.type !== 'string') {
      throw new BlobShiftError('BlobStore.put needs parentId and type strings');
    }
    if (opts.size !== undefined && !isValidSize(opts.size)) {
      throw new BlobShiftError(`BlobStore.put: size must be a non-negative integer, got ${opts.size}`);
    }
    const key = validateKey(opts.key ?? randomKey());
    const putOpts = {
      ...(opts.contentType !== undefined ? { contentType: opts.contentType } : {}),
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

    return this.meta.upsert({
      key,
      parentId: opts.parentId,
      type: opts.type,
      name: opts.name ?? '',
      contentLength,
      contentType: opts.contentType ?? null,
      sha256,
      expiresOn: opts.expiresOn ?? null,
    });
  }

  /** The blob's bytes; rejects `BlobNotFoundError` before handing back a stream. */
  get(key: string): Promise<Readable> {
    return this.db.get(key);
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
   * deletes both copies). Resolves true when a row or a blob was there.
   * Idempotent. If the row delete fails, the blob is left alone.
   */
  async delete(key: string): Promise<boolean> {
    validateKey(key);
    const row = await this.meta.delete(key);
    const blob = await this.db.delete(key);
    return row || blob;
  }

  /**
   * Deletes many: rows first (in batches), then the blobs of every key whose
   * row delete succeeded. Keys whose row or blob could not be deleted are
   * returned with their error; a key whose row delete failed keeps its blob.
   */
  async bulkDelete(keys: string[]): Promise<BulkDeleteResult> {
    const errors: BulkDeleteResult['errors'] = [];
    const rowsGone: string[] = [];
    const unique = [...new Set(keys)];
    if (this.meta.readOnly) {
      throw new ReadOnlyError(`cannot delete: the metadata table ${this.meta.table} is mapped read-only`);
    }
    for (let i = 0; i < unique.length; i += DELETE_BATCH) {
      const batch = unique.slice(i, i + DELETE_BATCH);
      if (hasDeleteMany(this.meta)) {
        try {
          await this.meta.deleteMany(batch);
          rowsGone.push(...batch);
        } catch (err) {
          const error = err instanceof Error ? err : new BlobShiftError(errorMessage(err));
          for (const key of batch) errors.push({ key, error });
        }
        continue;
      }
      for (const key of batch) {
        try {
          await this.meta.delete(key);
          rowsGone.push(key);
        } catch (err) {
          errors.push({ key, error: err instanceof Error ? err : new BlobShiftError(errorMessage(err)) });
        }
      }
    }
    if (rowsGone.length > 0) {
      const result = await this.db.bulkDelete(rowsGone);
      errors.push(...result.errors);
    }
    return { errors };
  }
}
