/**
 * The steps of a put on the filesystem backend that need no state of the
 * backend: writing the body into the temp file (its byte count checked),
 * and giving the new file a version (size, mtime) of its own, with its
 * metadata sidecar created under that version.
 */
import type { BigIntStats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ByteCounter } from '../../contract/body.js';
import { BackendError, describeKey, isErrnoException } from '../../contract/errors.js';
import type { BlobBody, PutOptions } from '../../contract/types.js';
import { lstatBig, writeAll, writeDurably } from './files.js';
import { type Sidecar, sameVersion, sidecarName, stampMtime } from './sidecars.js';

/** Attempts at giving a new blob file a (size, mtime) no other version of its key has. */
const STAMP_ATTEMPTS = 8;

/** Writes the body (`known` when it is in memory) into `handle`; a stream is counted against `size`. */
export async function writeBody(
  handle: FileHandle,
  key: string,
  body: BlobBody,
  known: Buffer | undefined,
  size: number | undefined,
): Promise<void> {
  if (known !== undefined) {
    await writeAll(handle, known);
    return;
  }
  await pipeline(body as Readable, new ByteCounter(key, size), async (source: AsyncIterable<Buffer>) => {
    for await (const chunk of source) await writeAll(handle, chunk);
  });
}

/** Where a new version of a blob is being written. */
export interface NewVersion {
  key: string;
  /** The blob's directory, its file name, and its path (`dir/name`). */
  dir: string;
  name: string;
  target: string;
  opts: PutOptions;
  fileMode: number;
}

/**
 * This version's identity is its (size, mtime): stamps one on the written
 * temp file that no present blob or sidecar of the key has, then creates
 * the sidecar (when there is metadata) under it, fsynced. Resolves the
 * file's stats, the metadata and the sidecar's path.
 */
export async function stampVersion(
  handle: FileHandle,
  v: NewVersion,
): Promise<{ st: BigIntStats; meta: Sidecar | undefined; sidecar: string | undefined }> {
  const { opts } = v;
  const withMeta = opts.contentType !== undefined || opts.httpMeta !== undefined;
  for (let attempt = 0; ; attempt++) {
    if (attempt >= STAMP_ATTEMPTS) {
      throw new BackendError(
        `put ${describeKey(v.key)}: could not give the new file a modification time no other version of the key has`,
        { key: v.key },
      );
    }
    await stampMtime(handle, attempt);
    await handle.sync();
    const stamped = await handle.stat({ bigint: true });
    const current = await lstatBig(v.target).catch(() => undefined);
    if (current?.isFile() && current.ino !== stamped.ino && sameVersion(current, stamped)) continue;
    if (!withMeta) return { st: stamped, meta: undefined, sidecar: undefined };
    const m: Sidecar = { v: 2, size: stamped.size.toString(), mtimeNs: stamped.mtimeNs.toString() };
    if (opts.contentType !== undefined) m.contentType = opts.contentType;
    if (opts.httpMeta !== undefined) m.httpMeta = opts.httpMeta;
    const file = path.join(v.dir, sidecarName(v.name, stamped));
    try {
      await writeDurably(file, JSON.stringify(m), v.fileMode, true);
    } catch (err) {
      if (isErrnoException(err, 'EEXIST')) continue;
      throw err;
    }
    return { st: stamped, meta: m, sidecar: file };
  }
}
