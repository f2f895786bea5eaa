/**
 * Metadata sidecars: the JSON file next to a blob that holds its content
 * type and HTTP metadata, named after the version (size, mtime) of the blob
 * file it describes. See `FilesystemBlobDB` for the format and its rules.
 */
import { createHash } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { isErrnoException } from '../../contract/errors.js';
import { RESERVED_PREFIX } from '../../contract/keys.js';
import type { BlobInfo, HttpMeta } from '../../contract/types.js';
import { readIfThere, unlinkQuiet } from './files.js';

/**
 * Metadata sidecars: `.blobshift-meta-<32 hex of the name's SHA-256>-s<size>-m<mtime ns>.json`.
 * Sidecars of the first format, `.blobshift-meta-<32 hex>-<inode>.json`, are still read.
 */
export const META_PREFIX = `${RESERVED_PREFIX}meta-`;

/**
 * The sidecar's JSON. `size` and `mtimeNs` tie it to one version of the blob
 * file (the name of a version-2 sidecar holds them too; a version-1 sidecar's
 * name holds the file's inode instead).
 */
export interface Sidecar {
  v: 1 | 2;
  size: string;
  mtimeNs: string;
  contentType?: string;
  httpMeta?: HttpMeta;
}

export const SIDECAR_V2 = /^\.blobshift-meta-([0-9a-f]{32})-s(\d+)-m(\d+)\.json$/;
export const SIDECAR_V1 = /^\.blobshift-meta-([0-9a-f]{32})-(\d+)\.json$/;

/** Where a key lives: its real directory (checked to be under the root) and file name. */
export interface Location {
  dir: string;
  name: string;
  file: string;
}

export function nameHash(name: string): string {
  return createHash('sha256').update(name, 'utf8').digest('hex').slice(0, 32);
}

/** The version of a blob file: its size and modification time (what a copy that keeps times keeps). */
export interface Version {
  size: bigint;
  mtimeNs: bigint;
}

export function sameVersion(a: Version, b: Version): boolean {
  return a.size === b.size && a.mtimeNs === b.mtimeNs;
}

/** The sidecar of the blob file `name` at version `v`. */
export function sidecarName(name: string, v: Version): string {
  return `${META_PREFIX}${nameHash(name)}-s${v.size.toString()}-m${v.mtimeNs.toString()}.json`;
}

/** A sidecar of the first format, named by the blob file's inode. */
export function sidecarNameV1(name: string, ino: bigint): string {
  return `${META_PREFIX}${nameHash(name)}-${ino.toString()}.json`;
}

/**
 * Sets the modification time of a file being written: now, less a random
 * part of a second (in microseconds, what Node passes on), and one second
 * more per earlier attempt, so two versions of a key written in the same
 * clock tick (or on a filesystem with whole-second times) still differ.
 * A filesystem that refuses keeps the time the write gave.
 */
export async function stampMtime(handle: FileHandle, attempt: number): Promise<void> {
  const now = Date.now() / 1000;
  const t = Math.round((now - attempt - Math.random()) * 1e6) / 1e6;
  try {
    await handle.utimes(now, t);
  } catch (err) {
    if (!['EPERM', 'EACCES', 'ENOTSUP', 'EOPNOTSUPP', 'EROFS'].some((c) => isErrnoException(err, c)))
      throw err;
  }
}

/**
 * Removes the sidecars of a blob file that is gone (deleted, or replaced by
 * the version `keep`): the current format's and the first format's.
 */
export async function removeSidecars(
  dir: string,
  name: string,
  gone: Version & { ino: bigint },
  keep?: Version,
): Promise<void> {
  if (keep === undefined || !sameVersion(gone, keep))
    await unlinkQuiet(path.join(dir, sidecarName(name, gone)));
  await unlinkQuiet(path.join(dir, sidecarNameV1(name, gone.ino)));
}

/** What `stat` says of an open blob file: its size and time, and the sidecar's metadata. */
export async function blobInfo(key: string, loc: Location, st: BigIntStats): Promise<BlobInfo> {
  const out: BlobInfo = { key, size: Number(st.size), lastModified: new Date(Number(st.mtimeMs)) };
  const meta = await readSidecar(loc, st);
  if (meta?.contentType !== undefined) out.contentType = meta.contentType;
  if (meta?.httpMeta !== undefined) out.httpMeta = meta.httpMeta;
  return out;
}

/** A sidecar's JSON, when it parses and describes version `v`. */
export function parseSidecar(text: string, v: Version): Sidecar | undefined {
  let meta: unknown;
  try {
    meta = JSON.parse(text);
  } catch {
    return undefined; // torn or foreign: no metadata rather than a failed stat
  }
  if (typeof meta !== 'object' || meta === null) return undefined;
  const m = meta as Partial<Sidecar>;
  if ((m.v !== 1 && m.v !== 2) || m.size !== v.size.toString() || m.mtimeNs !== v.mtimeNs.toString()) {
    return undefined;
  }
  return m as Sidecar;
}

/** The metadata of the blob file whose stats are `st`: its sidecar, or a first-format one of its inode. */
export async function readSidecar(
  loc: Location,
  st: Version & { ino: bigint },
): Promise<Sidecar | undefined> {
  const text =
    (await readIfThere(path.join(loc.dir, sidecarName(loc.name, st)))) ??
    (await readIfThere(path.join(loc.dir, sidecarNameV1(loc.name, st.ino))));
  return text === undefined ? undefined : parseSidecar(text, st);
}
