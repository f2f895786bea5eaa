/** Small file operations of the filesystem backend: durable writes, quiet removals, errors. */
import { constants as fsc } from 'node:fs';
import { type FileHandle, link, lstat, open, opendir, readFile, unlink } from 'node:fs/promises';
import {
  BackendError,
  BlobShiftError,
  describeKey,
  errorMessage,
  isErrnoException,
} from '../../contract/errors.js';
import { RESERVED_PREFIX } from '../../contract/keys.js';

export function checkMode(what: string, mode: unknown): number {
  if (typeof mode !== 'number' || !Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw new BlobShiftError(
      `FilesystemBlobDB: ${what} must be a file mode such as 0o644, got ${String(mode)}`,
    );
  }
  return mode;
}

/** Not found, for a path: ENOENT, or ENOTDIR when a parent is a file. */
export function isMissing(err: unknown): boolean {
  return isErrnoException(err, 'ENOENT') || isErrnoException(err, 'ENOTDIR');
}

/** BlobShiftErrors pass through; anything else becomes a BackendError with the key and the cause. */
export function wrap(err: unknown, op: string, key: string): Error {
  if (err instanceof BlobShiftError) return err;
  return new BackendError(`FilesystemBlobDB ${op} ${describeKey(key)} failed: ${errorMessage(err)}`, {
    cause: err,
    key,
  });
}

export function lstatBig(p: string) {
  return lstat(p, { bigint: true });
}

export async function writeAll(handle: FileHandle, data: Uint8Array): Promise<void> {
  let at = 0;
  while (at < data.length) {
    const { bytesWritten } = await handle.write(data, at, data.length - at);
    at += bytesWritten;
  }
}

/** Writes a small file and fsyncs it; `exclusive`: EEXIST when the name is taken. */
export async function writeDurably(
  file: string,
  text: string,
  mode: number,
  exclusive = false,
): Promise<void> {
  const handle = await open(file, exclusive ? 'wx' : 'w', mode);
  try {
    await handle.chmod(mode);
    await writeAll(handle, Buffer.from(text, 'utf8'));
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** fsync of a directory, so a rename in it survives a crash. Filesystems that refuse it are skipped. */
export async function syncDir(dir: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(dir, fsc.O_RDONLY);
    await handle.sync();
  } catch (err) {
    if (!['EINVAL', 'ENOTSUP', 'EISDIR', 'EPERM', 'EBADF'].some((c) => isErrnoException(err, c))) throw err;
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

export async function unlinkQuiet(file: string): Promise<void> {
  try {
    await unlink(file);
  } catch {
    // Already gone, or cleanup will find it.
  }
}

/** Renames `from` to `to` unless `to` exists (link, then unlink): false when `to` was taken. */
export async function renameNoReplace(from: string, to: string): Promise<boolean> {
  try {
    await link(from, to);
  } catch (err) {
    if (isErrnoException(err, 'EEXIST')) return false;
    throw err;
  }
  await unlinkQuiet(from);
  return true;
}

/** Removes `file` when it is a regular file last modified before `cutoff`. */
export async function removeIfStale(file: string, cutoff: number): Promise<boolean> {
  try {
    const st = await lstat(file);
    if (!st.isFile() || st.mtimeMs >= cutoff) return false;
    await unlink(file);
    return true;
  } catch {
    return false; // gone already, or a read-only tree
  }
}

/** The first non-reserved entry of a directory (with '/' for a directory), for messages. */
export async function firstEntry(dir: string): Promise<string | undefined> {
  try {
    for await (const d of await opendir(dir)) {
      if (!d.name.startsWith(RESERVED_PREFIX)) return d.isDirectory() ? `${d.name}/` : d.name;
    }
  } catch {
    // Best effort only.
  }
  return undefined;
}

export async function readIfThere(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw err;
  }
}
