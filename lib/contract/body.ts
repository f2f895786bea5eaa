/**
 * Body helpers shared by the backends: turn any `BlobBody` into a stream,
 * know its length when it is in memory, and count (and bound) streamed bytes.
 */
import { createHash, type Hash } from 'node:crypto';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { SizeMismatchError } from './errors.js';
import type { BlobBody, BlobDB, BlobWithInfo } from './types.js';

/** The byte length of an in-memory body, `undefined` for a stream. */
export function knownLength(body: BlobBody): number | undefined {
  if (typeof body === 'string') return Buffer.byteLength(body, 'utf8');
  if (body instanceof Uint8Array) return body.byteLength;
  return undefined;
}

/** An in-memory body as a Buffer (no copy for Buffers), `undefined` for a stream. */
export function bodyBuffer(body: BlobBody): Buffer | undefined {
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  if (Buffer.isBuffer(body)) return body;
  if (body instanceof Uint8Array) return Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  return undefined;
}

/** Any body as a Readable. In-memory bodies become a one-chunk stream. */
export function toReadable(body: BlobBody): Readable {
  const buf = bodyBuffer(body);
  if (buf !== undefined) return Readable.from([buf], { objectMode: false });
  return body as Readable;
}

/**
 * A pass-through that counts bytes and, when `expected` is given, fails with
 * `SizeMismatchError` as soon as the count passes it, or at the end when it
 * falls short. Optionally hashes what passes (`hash`).
 */
export class ByteCounter extends Transform {
  bytes = 0;
  readonly #key: string;
  readonly #expected: number | undefined;
  readonly #hash: Hash | undefined;

  constructor(key: string, expected?: number, opts?: { hash?: 'sha256' }) {
    super();
    this.#key = key;
    this.#expected = expected;
    this.#hash = opts?.hash ? createHash(opts.hash) : undefined;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.#expected !== undefined && this.bytes > this.#expected) {
      cb(new SizeMismatchError(this.#key, this.#expected, this.bytes));
      return;
    }
    this.#hash?.update(chunk);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (this.#expected !== undefined && this.bytes !== this.#expected) {
      cb(new SizeMismatchError(this.#key, this.#expected, this.bytes));
      return;
    }
    cb();
  }

  /** The hex digest of everything that passed (only with `hash`). */
  digest(): string | undefined {
    return this.#hash?.digest('hex');
  }
}

/** Reads a whole stream into memory. For small blobs and tests only. */
export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  return Buffer.concat(chunks);
}

/** Checks `size` option values: a non-negative safe integer or undefined. */
export function isValidSize(size: unknown): size is number {
  return typeof size === 'number' && Number.isSafeInteger(size) && size >= 0;
}

/**
 * `db.getWithInfo(key)` where the backend has it (one request); elsewhere
 * `stat` then `get` (two, and a blob rewritten in between can pair one
 * version's info with the other's bytes: give the size to `put` to catch it).
 */
export async function getWithInfo(db: BlobDB, key: string): Promise<BlobWithInfo> {
  if (db.getWithInfo) return db.getWithInfo(key);
  const info = await db.stat(key);
  return { info, body: await db.get(key) };
}
