/** Helpers of the conformance suite, exported for backends' own tests too. */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { readAll } from '../../lib/contract/body.js';
import type { BlobDB, BlobInfo, ListOptions } from '../../lib/contract/types.js';

export { rejectionOf } from '../support/promises.js';

export const MiB = 1024 * 1024;

/** Reads a blob whole. */
export async function getBytes(db: BlobDB, key: string): Promise<Buffer> {
  return readAll(await db.get(key));
}

/** Every BlobInfo a listing yields. */
export async function listInfos(db: BlobDB, opts?: ListOptions): Promise<BlobInfo[]> {
  const out: BlobInfo[] = [];
  for await (const info of db.list(opts)) out.push(info);
  return out;
}

/** Every key a listing yields, in the order yielded. */
export async function listKeys(db: BlobDB, opts?: ListOptions): Promise<string[]> {
  return (await listInfos(db, opts)).map((i) => i.key);
}

/** A copy sorted in UTF-8 byte order. */
export function byteSorted(keys: readonly string[]): string[] {
  return [...keys].sort((a, b) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8')));
}

/** `ns` plus segments of at most `segment` bytes, `bytes` long in all. */
export function keyOfBytes(ns: string, bytes: number, segment: number): string {
  let key = ns;
  let left = bytes - Buffer.byteLength(ns);
  while (left > 0) {
    const seg = Math.min(segment, left);
    // A segment followed by "/" needs at least one more byte after it.
    const take = left - seg === 1 ? seg - 1 : seg;
    key += 'k'.repeat(take);
    left -= take;
    if (left > 0) {
      key += '/';
      left -= 1;
    }
  }
  return key;
}

/** A stream of `total` pseudo-random bytes of unknown length, and its SHA-256 once consumed. */
export function patternStream(total: number, chunk = 64 * 1024): { stream: Readable; sha256: () => string } {
  const base = randomBytes(chunk);
  const hash = createHash('sha256');
  let sent = 0;
  let index = 0;
  const stream = new Readable({
    read() {
      if (sent >= total) {
        this.push(null);
        return;
      }
      const n = Math.min(chunk, total - sent);
      const buf = Buffer.from(base.subarray(0, n));
      if (n >= 4) buf.writeUInt32BE(index, 0);
      index++;
      sent += n;
      hash.update(buf);
      this.push(buf);
    },
  });
  return { stream, sha256: () => hash.copy().digest('hex') };
}

/** A stream that yields `failAfter` bytes, then is destroyed (with an error, or without one). */
export function failingStream(failAfter: number, withError: boolean): Readable {
  let sent = 0;
  const chunk = 64 * 1024;
  return new Readable({
    read() {
      if (sent >= failAfter) {
        setImmediate(() => this.destroy(withError ? new Error('input stream failed on purpose') : undefined));
        return;
      }
      const n = Math.min(chunk, failAfter - sent);
      sent += n;
      this.push(Buffer.alloc(n, 0x5a));
    },
  });
}

/** How many bytes a stream yields, and their SHA-256. */
export async function hashStream(stream: Readable): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of stream) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
    bytes += buf.length;
    hash.update(buf);
  }
  return { bytes, sha256: hash.digest('hex') };
}

/** Runs `fn` over `items` with at most `limit` in flight. */
export async function pool<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++] as T;
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
