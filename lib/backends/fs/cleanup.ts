/**
 * `cleanupTemp` of the filesystem backend: removes stale temporary files and
 * orphaned metadata sidecars in the whole tree, and renames sidecars of the
 * first format that describe their blob to the current format (see
 * `FilesystemBlobDB#cleanupTemp` for the rules).
 */
import type { BigIntStats } from 'node:fs';
import { opendir } from 'node:fs/promises';
import path from 'node:path';
import { RESERVED_PREFIX } from '../../contract/keys.js';
import { isMissing, lstatBig, readIfThere, removeIfStale, renameNoReplace } from './files.js';
import {
  META_PREFIX,
  nameHash,
  parseSidecar,
  SIDECAR_V1,
  SIDECAR_V2,
  type Sidecar,
  sameVersion,
  sidecarName,
  sidecarNameV1,
  type Version,
} from './sidecars.js';
import { TEMP_PREFIX } from './walk.js';

/** How many files a cleanup removed, and how many first-format sidecars it renamed. */
export interface CleanupCounts {
  removed: number;
  migrated: number;
}

/** Cleans the tree under `root` of temporary files and orphaned sidecars last modified before `cutoff`. */
export async function cleanupTree(root: string, cutoff: number): Promise<CleanupCounts> {
  const counts = { removed: 0, migrated: 0 };
  await visit(root, cutoff, counts);
  return counts;
}

async function visit(dir: string, cutoff: number, counts: CleanupCounts): Promise<void> {
  const files: string[] = [];
  const dirs: string[] = [];
  const temps: string[] = [];
  const sidecars: string[] = [];
  try {
    for await (const d of await opendir(dir)) {
      if (d.name.startsWith(TEMP_PREFIX)) temps.push(d.name);
      else if (d.name.startsWith(META_PREFIX)) sidecars.push(d.name);
      else if (d.name.startsWith(RESERVED_PREFIX)) continue;
      else if (d.isDirectory()) dirs.push(d.name);
      else if (d.isFile()) files.push(d.name);
    }
  } catch (err) {
    if (isMissing(err)) return;
    throw err;
  }
  for (const name of temps) if (await removeIfStale(path.join(dir, name), cutoff)) counts.removed++;
  if (sidecars.length > 0) await triageSidecars(dir, files, sidecars, cutoff, counts);
  for (const name of dirs) await visit(path.join(dir, name), cutoff, counts);
}

/**
 * The sidecars of one directory: kept where they describe their blob (or
 * may, after a copy that lost modification times), renamed from the first
 * format where they describe it, removed as orphans otherwise.
 */
async function triageSidecars(
  dir: string,
  files: string[],
  sidecars: string[],
  cutoff: number,
  counts: CleanupCounts,
): Promise<void> {
  const byHash = new Map(files.map((f) => [nameHash(f), f]));
  const owners = new Map<string, BigIntStats | undefined>();
  const ownerStat = async (owner: string): Promise<BigIntStats | undefined> => {
    if (!owners.has(owner)) {
      const st = await lstatBig(path.join(dir, owner)).catch(() => undefined);
      owners.set(owner, st?.isFile() ? st : undefined);
    }
    return owners.get(owner);
  };
  const present = new Set(sidecars);
  for (const name of sidecars) {
    const file = path.join(dir, name);
    const v2 = SIDECAR_V2.exec(name);
    const v1 = v2 ? undefined : SIDECAR_V1.exec(name);
    const owner = byHash.get(((v2 ?? v1)?.[1] ?? '') as string);
    const st = owner === undefined ? undefined : await ownerStat(owner);
    let described: Version | undefined;
    if (v2) {
      described = { size: BigInt(v2[2] as string), mtimeNs: BigInt(v2[3] as string) };
      if (st && sameVersion(st, described)) continue;
    } else if (v1 && st) {
      const text = await readIfThere(file);
      const meta = text === undefined ? undefined : parseSidecar(text, st);
      if (meta !== undefined && owner !== undefined) {
        // The first format, describing the blob that is there (in place, or
        // copied with its times): renamed to the current format, unless the
        // blob has a sidecar of that format already.
        const target = sidecarName(owner, st);
        if (!present.has(target) && (await renameNoReplace(file, path.join(dir, target)))) {
          present.add(target);
          counts.migrated++;
          continue;
        }
      }
      if (st.ino.toString() === v1[2]) continue;
      if (text !== undefined) {
        try {
          const m = JSON.parse(text) as Partial<Sidecar>;
          if (
            typeof m.size === 'string' &&
            /^\d+$/.test(m.size) &&
            typeof m.mtimeNs === 'string' &&
            /^\d+$/.test(m.mtimeNs)
          )
            described = { size: BigInt(m.size), mtimeNs: BigInt(m.mtimeNs) };
        } catch {
          // Torn: an orphan.
        }
      }
    }
    // Maybe this blob's metadata, after a copy that lost modification
    // times: kept, unless the blob has its own.
    if (st && described && described.size === st.size && owner !== undefined) {
      const own = present.has(sidecarName(owner, st)) || present.has(sidecarNameV1(owner, st.ino));
      if (!own) continue;
    }
    if (await removeIfStale(file, cutoff)) {
      counts.removed++;
      present.delete(name);
    }
  }
}
