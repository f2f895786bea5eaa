/**
 * An in-process BlobDB: blobs live in a Map, keys in a sorted array (UTF-8
 * byte order) so listings page without sorting the whole store. For tests and
 * small tools; nothing survives the process.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ByteCounter, bodyBuffer, isValidSize } from '../../contract/body.js';
import {
  BackendError,
  BlobExistsError,
  BlobNotFoundError,
  BlobShiftError,
  describeKey,
  errorMessage,
  InvalidKeyError,
  NotSupportedError,
  SizeMismatchError,
} from '../../contract/errors.js';
import { compareKeys, validateKey, validatePrefix } from '../../contract/keys.js';
import type {
  BlobBody,
  BlobDB,
  BlobInfo,
  BlobWithInfo,
  BulkDeleteResult,
  Capabilities,
  HttpMeta,
  ListOptions,
  PutOptions,
  SignedUrlOptions,
} from '../../contract/types.js';

export interface MemoryBlobDBOptions {
  /**
   * Default `true`: `overwrite: false` is atomic (checked again when the body
   * has been read, with no await between the check and the store). `false`
   * makes it check only before reading the body, like a backend without
   * conditional writes, so callers can exercise that window in tests.
   */
  conditionalWrites?: boolean;
  /** Keys fetched per listing page (default 1000, as S3). */
  pageSize?: number;
}

interface Entry {
  data: Buffer;
  etag: string;
  lastModified: Date;
  contentType?: string;
  httpMeta?: HttpMeta;
}

/** Chunk size of the streams `get` returns. */
const READ_CHUNK = 64 * 1024;

/**
 * A `BlobDB` in memory. Bodies are copied in and out, so callers cannot
 * change stored bytes through a Buffer they hold. `get` rejects
 * `BlobNotFoundError` before returning a stream; `list` yields keys in UTF-8
 * byte order, one page of `pageSize` keys taken at a time (a blob stored or
 * deleted during a listing shows up, or not, depending on the page).
 */
export class MemoryBlobDB implements BlobDB {
  readonly capabilities: Capabilities;
  readonly #blobs = new Map<string, Entry>();
  /** Every key, in byte order. */
  readonly #sorted: string[] = [];
  readonly #conditional: boolean;
  readonly #pageSize: number;

  constructor(options: MemoryBlobDBOptions = {}) {
    this.#conditional = options.conditionalWrites ?? true;
    const pageSize = options.pageSize ?? 1000;
    if (!Number.isSafeInteger(pageSize) || pageSize < 1) {
      throw new BlobShiftError(`MemoryBlobDB: pageSize must be a positive integer, got ${pageSize}`);
    }
    this.#pageSize = pageSize;
    this.capabilities = { conditionalWrites: this.#conditional };
  }

  async put(key: string, body: BlobBody, opts: PutOptions = {}): Promise<BlobInfo> {
    validateKey(key);
    checkSizeOption(opts.size);
    const overwrite = opts.overwrite ?? true;
    if (!overwrite && this.#blobs.has(key)) throw new BlobExistsError(key);
    const data = await readBody(key, body, opts.size);
    // No await between this check and the store: overwrite: false is atomic.
    if (!overwrite && this.#conditional && this.#blobs.has(key)) throw new BlobExistsError(key);
    const entry: Entry = {
      data,
      etag: createHash('md5').update(data).digest('hex'),
      lastModified: new Date(),
    };
    if (opts.contentType !== undefined) entry.contentType = opts.contentType;
    if (opts.httpMeta !== undefined) entry.httpMeta = copyMeta(opts.httpMeta);
    if (!this.#blobs.has(key)) this.#sorted.splice(this.#upperBound(key), 0, key);
    this.#blobs.set(key, entry);
    return info(key, entry);
  }

  async get(key: string): Promise<Readable> {
    const entry = this.#entry(key);
    return Readable.from(chunks(entry.data), { objectMode: false });
  }

  async stat(key: string): Promise<BlobInfo> {
    return info(key, this.#entry(key));
  }

  async getWithInfo(key: string): Promise<BlobWithInfo> {
    const entry = this.#entry(key);
    return { info: info(key, entry), body: Readable.from(chunks(entry.data), { objectMode: false }) };
  }

  /**
   * Rejects `NotSupportedError`: blobs in memory have no URL. Serve the bytes through
   * the app instead (`BlobStore.getWithInfo` gives the stream with its size
   * and content type).
   */
  async getSignedUrl(key: string, _opts?: SignedUrlOptions): Promise<string> {
    validateKey(key);
    throw new NotSupportedError(
      'getSignedUrl',
      `MemoryBlobDB cannot sign a URL for ${describeKey(key)}: blobs in memory have no URL; serve the bytes through the app (BlobStore.getWithInfo gives the stream, its size and content type)`,
    );
  }

  async exists(key: string): Promise<boolean> {
    validateKey(key);
    return this.#blobs.has(key);
  }

  async size(key: string): Promise<number> {
    return this.#entry(key).data.length;
  }

  async delete(key: string): Promise<boolean> {
    validateKey(key);
    if (!this.#blobs.delete(key)) return false;
    const at = this.#lowerBound(key);
    if (this.#sorted[at] === key) this.#sorted.splice(at, 1);
    return true;
  }

  async bulkDelete(keys: string[]): Promise<BulkDeleteResult> {
    const errors: BulkDeleteResult['errors'] = [];
    for (const key of keys) {
      try {
        await this.delete(key);
      } catch (err) {
        errors.push({ key, error: err instanceof Error ? err : new Error(errorMessage(err)) });
      }
    }
    return { errors };
  }

  async *list(opts: ListOptions = {}): AsyncIterable<BlobInfo> {
    const prefix = validatePrefix(opts.prefix);
    const startAfter = opts.startAfter;
    if (startAfter !== undefined && typeof startAfter !== 'string') {
      throw new InvalidKeyError(String(startAfter), 'startAfter must be a string');
    }
    let cursor = startAfter;
    for (;;) {
      const page = this.#page(prefix, cursor);
      for (const item of page) yield item;
      if (page.length < this.#pageSize) return;
      cursor = page[page.length - 1]?.key;
    }
  }

  async close(): Promise<void> {}

  /** The next page: up to `pageSize` keys with `prefix`, after `after`. */
  #page(prefix: string, after: string | undefined): BlobInfo[] {
    let i = this.#lowerBound(prefix);
    if (after !== undefined) i = Math.max(i, this.#upperBound(after));
    const page: BlobInfo[] = [];
    for (; i < this.#sorted.length && page.length < this.#pageSize; i++) {
      const key = this.#sorted[i] as string;
      // Keys with the prefix are contiguous in byte order: the first one without it ends the range.
      if (!key.startsWith(prefix)) break;
      const entry = this.#blobs.get(key);
      if (entry) {
        page.push({
          key,
          size: entry.data.length,
          etag: entry.etag,
          lastModified: new Date(entry.lastModified),
        });
      }
    }
    return page;
  }

  /** The entry under a valid key, or `BlobNotFoundError`. */
  #entry(key: string): Entry {
    validateKey(key);
    const entry = this.#blobs.get(key);
    if (!entry) throw new BlobNotFoundError(key, { where: 'memory' });
    return entry;
  }

  /** Index of the first key ≥ `key`. */
  #lowerBound(key: string): number {
    let lo = 0;
    let hi = this.#sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareKeys(this.#sorted[mid] as string, key) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Index of the first key > `key`. */
  #upperBound(key: string): number {
    let lo = 0;
    let hi = this.#sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareKeys(this.#sorted[mid] as string, key) <= 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

function checkSizeOption(size: unknown): void {
  if (size !== undefined && !isValidSize(size)) {
    throw new BlobShiftError(`put: size must be a non-negative safe integer, got ${String(size)}`);
  }
}

/** The whole body as a private Buffer, checked against `size`. */
async function readBody(key: string, body: BlobBody, size: number | undefined): Promise<Buffer> {
  const buf = bodyBuffer(body);
  if (buf !== undefined) {
    if (size !== undefined && buf.length !== size) throw new SizeMismatchError(key, size, buf.length);
    return Buffer.from(buf);
  }
  const parts: Buffer[] = [];
  try {
    await pipeline(body as Readable, new ByteCounter(key, size), async (source: AsyncIterable<Buffer>) => {
      for await (const part of source) parts.push(part);
    });
  } catch (err) {
    if (err instanceof BlobShiftError) throw err;
    throw new BackendError(`put ${describeKey(key)}: reading the body failed: ${errorMessage(err)}`, {
      cause: err,
      key,
    });
  }
  return Buffer.concat(parts);
}

function* chunks(data: Buffer): Generator<Buffer> {
  for (let at = 0; at < data.length; at += READ_CHUNK) {
    yield Buffer.from(data.subarray(at, at + READ_CHUNK));
  }
}

function copyMeta(meta: HttpMeta): HttpMeta {
  const out: HttpMeta = { ...meta };
  if (meta.metadata !== undefined) out.metadata = { ...meta.metadata };
  return out;
}

function info(key: string, entry: Entry): BlobInfo {
  const out: BlobInfo = {
    key,
    size: entry.data.length,
    etag: entry.etag,
    lastModified: new Date(entry.lastModified),
  };
  if (entry.contentType !== undefined) out.contentType = entry.contentType;
  if (entry.httpMeta !== undefined) out.httpMeta = copyMeta(entry.httpMeta);
  return out;
}
