/**
 * `MigratingBlobDB(newDb, oldDb)`: the app-facing store while blobs move
 * from `oldDb` to `newDb`. Writes land in the new backend only; reads try the
 * new one and fall back to the old one only when the new one says the blob
 * is not there; deletes hit both. It knows nothing of the backends beneath.
 */
import type { Readable } from 'node:stream';
import { getWithInfo } from '../contract/body.js';
import { describeKey, InvalidKeyError, isBlobNotFound, NotSupportedError } from '../contract/errors.js';
import { validateKey } from '../contract/keys.js';
import type {
  BlobBody,
  BlobDB,
  BlobInfo,
  BlobWithInfo,
  BulkDeleteResult,
  Capabilities,
  ListOptions,
  PutOptions,
  SignedUrlOptions,
} from '../contract/types.js';

export class MigratingBlobDB implements BlobDB {
  /** Where blobs go: every write, first read. */
  readonly newDb: BlobDB;
  /** Where blobs come from: read only when `newDb` lacks the blob; deletes reach it too. */
  readonly oldDb: BlobDB;

  constructor(newDb: BlobDB, oldDb: BlobDB) {
    if (newDb === oldDb) throw new TypeError('MigratingBlobDB needs two different backends');
    this.newDb = newDb;
    this.oldDb = oldDb;
  }

  /** The new backend's: every write goes there. */
  get capabilities(): Capabilities {
    return this.newDb.capabilities;
  }

  /** Writes to the new backend only (`overwrite: false` looks at the new backend only). */
  put(key: string, body: BlobBody, opts?: PutOptions): Promise<BlobInfo> {
    return this.newDb.put(key, body, opts);
  }

  /** From the new backend; from the old one only when the new one rejects `BlobNotFoundError`. */
  get(key: string): Promise<Readable> {
    return this.#read(key, (db) => db.get(key));
  }

  stat(key: string): Promise<BlobInfo> {
    return this.#read(key, (db) => db.stat(key));
  }

  size(key: string): Promise<number> {
    return this.#read(key, (db) => db.size(key));
  }

  /** Info and bytes from the new backend, or from the old one when the new one lacks the blob. */
  getWithInfo(key: string): Promise<BlobWithInfo> {
    return this.#read(key, (db) => getWithInfo(db, key));
  }

  /**
   * A URL for the backend that serves the blob, by the read rule: the new
   * one when it has the blob (one `exists` there first: a HEAD on S3), else
   * the old one, which is not asked whether it has it (a URL for a blob in
   * neither answers 404). Rejects `NotSupportedError` when that backend
   * cannot sign URLs (a filesystem): serve those bytes through the app.
   */
  async getSignedUrl(key: string, opts?: SignedUrlOptions): Promise<string> {
    validateKey(key);
    const inNew = await this.newDb.exists(key);
    const db = inNew ? this.newDb : this.oldDb;
    const where = inNew
      ? `the new backend, which holds ${describeKey(key)}, cannot sign URLs`
      : `${describeKey(key)} is not in the new backend (not copied yet), and the old backend cannot sign URLs`;
    if (!db.getSignedUrl) {
      throw new NotSupportedError('getSignedUrl', `${where}; serve the bytes through the app (getWithInfo)`);
    }
    try {
      return await db.getSignedUrl(key, opts);
    } catch (err) {
      if (err instanceof NotSupportedError)
        throw new NotSupportedError('getSignedUrl', `${where}: ${err.message}`);
      throw err;
    }
  }

  /** True when either backend has the blob; the old one is asked only when the new one says no. */
  async exists(key: string): Promise<boolean> {
    validateKey(key);
    if (await this.newDb.exists(key)) return true;
    return this.oldDb.exists(key);
  }

  /** Deletes from both backends, always; true if either had the blob. */
  async delete(key: string): Promise<boolean> {
    validateKey(key);
    const [inNew, inOld] = await Promise.allSettled([this.newDb.delete(key), this.oldDb.delete(key)]);
    if (inNew.status === 'rejected') throw inNew.reason;
    if (inOld.status === 'rejected') throw inOld.reason;
    return inNew.value || inOld.value;
  }

  /**
   * Deletes from both backends, always. A key that either backend could not
   * delete is returned (once per backend that failed); invalid keys once.
   */
  async bulkDelete(keys: string[]): Promise<BulkDeleteResult> {
    const [fromNew, fromOld] = await Promise.allSettled([
      this.newDb.bulkDelete(keys),
      this.oldDb.bulkDelete(keys),
    ]);
    if (fromNew.status === 'rejected') throw fromNew.reason;
    if (fromOld.status === 'rejected') throw fromOld.reason;
    const errors = [...fromNew.value.errors];
    const invalid = new Set(errors.filter((e) => e.error instanceof InvalidKeyError).map((e) => e.key));
    for (const e of fromOld.value.errors) {
      // Both backends refuse an invalid key the same way: report it once.
      if (e.error instanceof InvalidKeyError && invalid.has(e.key)) continue;
      errors.push(e);
    }
    return { errors };
  }

  /** The new backend's listing: what has been migrated (and written since). */
  list(opts?: ListOptions): AsyncIterable<BlobInfo> {
    return this.newDb.list(opts);
  }

  /** Closes both backends. */
  async close(): Promise<void> {
    const results = await Promise.allSettled([this.newDb.close(), this.oldDb.close()]);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  async #read<T>(key: string, read: (db: BlobDB) => Promise<T>): Promise<T> {
    validateKey(key);
    try {
      return await read(this.newDb);
    } catch (err) {
      // Only "not in the new backend" falls back; any other failure is the caller's to see.
      if (!isBlobNotFound(err)) throw err;
    }
    return read(this.oldDb);
  }
}
