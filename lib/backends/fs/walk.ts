/**
 * Listing a filesystem backend: a walk of the tree with `opendir`, holding
 * only the entries of the directories on the current path (never the whole
 * tree), each directory's entries sorted by the byte order of the full key
 * (a directory `a` sorts as `a/`), descending only into directories that
 * can hold keys matching `prefix` and after `startAfter`. Temporary files
 * older than `staleBefore` met on the way are removed.
 */
import type { Dirent } from 'node:fs';
import { lstat, opendir } from 'node:fs/promises';
import path from 'node:path';
import { isValidKey, RESERVED_PREFIX } from '../../contract/keys.js';
import type { BlobInfo } from '../../contract/types.js';
import { isMissing, removeIfStale, wrap } from './files.js';

/** Temporary files: `.blobshift-tmp-<16 hex>`, in the blob's own directory. */
export const TEMP_PREFIX = `${RESERVED_PREFIX}tmp-`;
const STAT_BATCH = 64;

/** An entry of one directory, kept for the walk. */
interface Entry {
  name: string;
  sortKey: Buffer;
  dir: boolean;
  /** For directories: the startAfter to carry down (undefined when the whole subtree follows it). */
  after?: string | undefined;
}

/** Where a walk of one directory starts and what it keeps. */
interface Scope {
  rel: string;
  prefix: string;
  startAfter: string | undefined;
  afterBytes: Buffer | undefined;
}

/** The blobs under `abs` (the directory of keys starting with `rel`), in key order. */
export async function* walkTree(
  abs: string,
  rel: string,
  prefix: string,
  startAfter: string | undefined,
  staleBefore: number,
): AsyncGenerator<BlobInfo> {
  const afterBytes = startAfter === undefined ? undefined : Buffer.from(startAfter, 'utf8');
  const read = await readDirectory(abs, { rel, prefix, startAfter, afterBytes });
  if (read === undefined) return; // removed while we walked
  const { entries, temps } = read;
  for (const name of temps) await removeIfStale(path.join(abs, name), staleBefore);
  entries.sort((a, b) => Buffer.compare(a.sortKey, b.sortKey));

  for (let i = 0; i < entries.length; ) {
    const entry = entries[i] as Entry;
    if (entry.dir) {
      i++;
      yield* walkTree(path.join(abs, entry.name), `${rel}${entry.name}/`, prefix, entry.after, staleBefore);
      continue;
    }
    // A run of files: stat them a batch at a time.
    const batch = takeFileRun(entries, i);
    i += batch.length;
    yield* statFiles(abs, rel, batch);
  }
}

/**
 * The entries of `abs` the walk keeps, unsorted, and its temporary files;
 * undefined when the directory is gone.
 */
async function readDirectory(
  abs: string,
  scope: Scope,
): Promise<{ entries: Entry[]; temps: string[] } | undefined> {
  const entries: Entry[] = [];
  const temps: string[] = [];
  try {
    for await (const d of await opendir(abs, { bufferSize: 256 })) {
      const name = d.name;
      if (name.startsWith(RESERVED_PREFIX)) {
        if (name.startsWith(TEMP_PREFIX)) temps.push(name);
        continue;
      }
      const { isDir, isFile } = await entryKind(abs, d);
      const entry = isFile ? fileEntry(name, scope) : isDir ? dirEntry(name, scope) : undefined;
      if (entry !== undefined) entries.push(entry);
    }
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw wrap(err, 'list', scope.rel);
  }
  return { entries, temps };
}

/** Whether a directory entry is a directory or a regular file, asking the filesystem when the entry does not say. */
async function entryKind(abs: string, d: Dirent): Promise<{ isDir: boolean; isFile: boolean }> {
  const isDir = d.isDirectory();
  const isFile = d.isFile();
  if (isDir || isFile || d.isSymbolicLink() || d.isFIFO() || d.isSocket()) return { isDir, isFile };
  // The filesystem did not say (DT_UNKNOWN): ask.
  const st = await lstat(path.join(abs, d.name)).catch(() => undefined);
  return { isDir: st?.isDirectory() ?? false, isFile: st?.isFile() ?? false };
}

/** The entry of a file, unless its key is outside the prefix or not after startAfter. */
function fileEntry(name: string, scope: Scope): Entry | undefined {
  const key = scope.rel + name;
  if (!key.startsWith(scope.prefix)) return undefined;
  const sortKey = Buffer.from(key, 'utf8');
  if (scope.afterBytes !== undefined && Buffer.compare(sortKey, scope.afterBytes) <= 0) return undefined;
  return { name, sortKey, dir: false };
}

/** The entry of a directory, unless it can hold no key of the prefix after startAfter. */
function dirEntry(name: string, scope: Scope): Entry | undefined {
  const { rel, prefix, startAfter, afterBytes } = scope;
  const sub = `${rel}${name}/`;
  if (!sub.startsWith(prefix) && !prefix.startsWith(sub)) return undefined;
  const sortKey = Buffer.from(sub, 'utf8');
  let after: string | undefined;
  if (startAfter !== undefined && afterBytes !== undefined && Buffer.compare(sortKey, afterBytes) <= 0) {
    // Every key below `sub` starts with it: the subtree is either wholly
    // before startAfter, or startAfter falls inside it.
    if (!startAfter.startsWith(sub)) return undefined;
    after = startAfter;
  }
  return { name, sortKey, dir: true, after };
}

/** The run of file entries starting at `start`, at most STAT_BATCH long. */
function takeFileRun(entries: Entry[], start: number): Entry[] {
  const batch: Entry[] = [];
  for (let i = start; i < entries.length && batch.length < STAT_BATCH && !(entries[i] as Entry).dir; i++) {
    batch.push(entries[i] as Entry);
  }
  return batch;
}

/** The blobs of a batch of file entries, stated together, skipping what is gone or no valid key. */
async function* statFiles(abs: string, rel: string, batch: Entry[]): AsyncGenerator<BlobInfo> {
  const stats = await Promise.all(batch.map((e) => lstat(path.join(abs, e.name)).catch(() => undefined)));
  for (const [j, e] of batch.entries()) {
    const st = stats[j];
    const key = rel + e.name;
    // Gone since the directory was read, or a name that is no valid key (made by something else).
    if (!st?.isFile() || !isValidKey(key)) continue;
    yield { key, size: st.size, lastModified: st.mtime };
  }
}
