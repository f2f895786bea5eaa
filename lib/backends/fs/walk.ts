/**
 * Listing a filesystem backend: a walk of the tree with `opendir`, holding
 * only the entries of the directories on the current path (never the whole
 * tree), each directory's entries sorted by the byte order of the full key
 * (a directory `a` sorts as `a/`), descending only into directories that
 * can hold keys matching `prefix` and after `startAfter`. Temporary files
 * older than `staleBefore` met on the way are removed.
 */
import { lstat, opendir } from 'node:fs/promises';
import path from 'node:path';
import { isValidKey, RESERVED_PREFIX } from '../../contract/keys.js';
import type { BlobInfo } from '../../contract/types.js';
import { isMissing, removeIfStale, wrap } from './files.js';

/** Temporary files: `.blobshift-tmp-<16 hex>`, in the blob's own directory. */
export const TEMP_PREFIX = `${RESERVED_PREFIX}tmp-`;
const STAT_BATCH = 64;

/** The blobs under `abs` (the directory of keys starting with `rel`), in key order. */
export async function* walkTree(
  abs: string,
  rel: string,
  prefix: string,
  startAfter: string | undefined,
  staleBefore: number,
): AsyncGenerator<BlobInfo> {
  interface Entry {
    name: string;
    sortKey: Buffer;
    dir: boolean;
    /** For directories: the startAfter to carry down (undefined when the whole subtree follows it). */
    after?: string | undefined;
  }
  const entries: Entry[] = [];
  const temps: string[] = [];
  const afterBytes = startAfter === undefined ? undefined : Buffer.from(startAfter, 'utf8');
  try {
    for await (const d of await opendir(abs, { bufferSize: 256 })) {
      const name = d.name;
      if (name.startsWith(RESERVED_PREFIX)) {
        if (name.startsWith(TEMP_PREFIX)) temps.push(name);
        continue;
      }
      let isDir = d.isDirectory();
      let isFile = d.isFile();
      if (!isDir && !isFile && !d.isSymbolicLink() && !d.isFIFO() && !d.isSocket()) {
        // The filesystem did not say (DT_UNKNOWN): ask.
        const st = await lstat(path.join(abs, name)).catch(() => undefined);
        isDir = st?.isDirectory() ?? false;
        isFile = st?.isFile() ?? false;
      }
      if (isFile) {
        const key = rel + name;
        if (!key.startsWith(prefix)) continue;
        const sortKey = Buffer.from(key, 'utf8');
        if (afterBytes !== undefined && Buffer.compare(sortKey, afterBytes) <= 0) continue;
        entries.push({ name, sortKey, dir: false });
      } else if (isDir) {
        const sub = `${rel}${name}/`;
        if (!sub.startsWith(prefix) && !prefix.startsWith(sub)) continue;
        const sortKey = Buffer.from(sub, 'utf8');
        let after: string | undefined;
        if (
          startAfter !== undefined &&
          afterBytes !== undefined &&
          Buffer.compare(sortKey, afterBytes) <= 0
        ) {
          // Every key below `sub` starts with it: the subtree is either wholly
          // before startAfter, or startAfter falls inside it.
          if (!startAfter.startsWith(sub)) continue;
          after = startAfter;
        }
        entries.push({ name, sortKey, dir: true, after });
      }
    }
  } catch (err) {
    if (isMissing(err)) return; // removed while we walked
    throw wrap(err, 'list', rel);
  }
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
    const batch: Entry[] = [];
    while (i < entries.length && batch.length < STAT_BATCH && !(entries[i] as Entry).dir) {
      batch.push(entries[i] as Entry);
      i++;
    }
    const stats = await Promise.all(batch.map((e) => lstat(path.join(abs, e.name)).catch(() => undefined)));
    for (const [j, e] of batch.entries()) {
      const st = stats[j];
      const key = rel + e.name;
      // Gone since the directory was read, or a name that is no valid key (made by something else).
      if (!st?.isFile() || !isValidKey(key)) continue;
      yield { key, size: st.size, lastModified: st.mtime };
    }
  }
}
