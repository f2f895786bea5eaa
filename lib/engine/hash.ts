/**
 * Hashing a stored blob as it streams by (never buffered): the content proof
 * behind `verify --checksum` and `cleanup-old`. A stored ETag or checksum is
 * not used in its place: it was computed when the object was written, so it
 * says nothing of bytes that changed later (bit rot, a restore, a buggy proxy).
 */
import { createHash } from 'node:crypto';
import { AbortedError, BlobNotFoundError } from '../contract/errors.js';
import type { BlobDB } from '../contract/types.js';

export interface BlobDigest {
  /** Lower-case hex SHA-256 of the bytes read. */
  sha256: string;
  /** Bytes read. */
  bytes: number;
}

/** The SHA-256 and length of the blob's bytes; `undefined` when the blob is not there. */
export async function hashBlob(
  db: BlobDB,
  key: string,
  signal?: AbortSignal,
): Promise<BlobDigest | undefined> {
  let body: Awaited<ReturnType<BlobDB['get']>>;
  try {
    body = await db.get(key);
  } catch (err) {
    if (err instanceof BlobNotFoundError) return undefined;
    throw err;
  }
  const hash = createHash('sha256');
  let bytes = 0;
  try {
    for await (const chunk of body) {
      // Checked per chunk rather than through a listener on a signal shared by every read.
      if (signal?.aborted) throw new AbortedError('read interrupted');
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
      bytes += buf.length;
      hash.update(buf);
    }
  } finally {
    if (!body.destroyed) body.destroy();
  }
  return { sha256: hash.digest('hex'), bytes };
}
