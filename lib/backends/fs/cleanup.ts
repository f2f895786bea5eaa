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
  const triage = new SidecarTriage(dir, files, sidecars, cutoff, counts);
  for (const name of sidecars) await triage.sidecar(name);
}

/** A first-format sidecar that was kept or renamed: nothing more to do with it. */
const SETTLED = Symbol('settled');

/** The state of one directory's triage: its blobs by name hash, their stats, the sidecars present. */
class SidecarTriage {
  readonly #dir: string;
  readonly #cutoff: number;
  readonly #counts: CleanupCounts;
  readonly #byHash: Map<string, string>;
  readonly #owners = new Map<string, BigIntStats | undefined>();
  readonly #present: Set<string>;

  constructor(dir: string, files: string[], sidecars: string[], cutoff: number, counts: CleanupCounts) {
    this.#dir = dir;
    this.#cutoff = cutoff;
    this.#counts = counts;
    this.#byHash = new Map(files.map((f) => [nameHash(f), f]));
    this.#present = new Set(sidecars);
  }

  /** Keeps, renames or removes the sidecar `name`. */
  async sidecar(name: string): Promise<void> {
    const file = path.join(this.#dir, name);
    const v2 = SIDECAR_V2.exec(name);
    const v1 = v2 ? undefined : SIDECAR_V1.exec(name);
    const owner = this.#byHash.get(((v2 ?? v1)?.[1] ?? '') as string);
    const st = owner === undefined ? undefined : await this.#ownerStat(owner);
    let described: Version | undefined;
    if (v2) {
      described = { size: BigInt(v2[2] as string), mtimeNs: BigInt(v2[3] as string) };
      if (st && sameVersion(st, described)) return;
    } else if (v1 && st) {
      const outcome = await this.#firstFormat(file, v1, owner, st);
      if (outcome === SETTLED) return;
      described = outcome;
    }
    if (this.#mayDescribeCopy(st, described, owner)) return;
    await this.#removeOrphan(file, name);
  }

  /** The stat of the blob file `owner`, when it is a file; asked once per directory. */
  async #ownerStat(owner: string): Promise<BigIntStats | undefined> {
    if (!this.#owners.has(owner)) {
      const st = await lstatBig(path.join(this.#dir, owner)).catch(() => undefined);
      this.#owners.set(owner, st?.isFile() ? st : undefined);
    }
    return this.#owners.get(owner);
  }

  /**
   * A first-format sidecar whose blob is there: renamed or kept (settled),
   * or else the version its JSON describes, if any.
   */
  async #firstFormat(
    file: string,
    v1: RegExpExecArray,
    owner: string | undefined,
    st: BigIntStats,
  ): Promise<typeof SETTLED | Version | undefined> {
    const text = await readIfThere(file);
    if (await this.#renameToCurrent(file, text, owner, st)) return SETTLED;
    if (st.ino.toString() === v1[2]) return SETTLED;
    return text === undefined ? undefined : describedVersion(text);
  }

  /**
   * The first format, describing the blob that is there (in place, or
   * copied with its times): renamed to the current format, unless the
   * blob has a sidecar of that format already. True when renamed.
   */
  async #renameToCurrent(
    file: string,
    text: string | undefined,
    owner: string | undefined,
    st: BigIntStats,
  ): Promise<boolean> {
    const meta = text === undefined ? undefined : parseSidecar(text, st);
    if (meta === undefined || owner === undefined) return false;
    const target = sidecarName(owner, st);
    if (this.#present.has(target)) return false;
    if (!(await renameNoReplace(file, path.join(this.#dir, target)))) return false;
    this.#present.add(target);
    this.#counts.migrated++;
    return true;
  }

  /**
   * Maybe this blob's metadata, after a copy that lost modification
   * times: kept, unless the blob has its own.
   */
  #mayDescribeCopy(
    st: BigIntStats | undefined,
    described: Version | undefined,
    owner: string | undefined,
  ): boolean {
    if (!st || !described || described.size !== st.size || owner === undefined) return false;
    const own = this.#present.has(sidecarName(owner, st)) || this.#present.has(sidecarNameV1(owner, st.ino));
    return !own;
  }

  async #removeOrphan(file: string, name: string): Promise<void> {
    if (await removeIfStale(file, this.#cutoff)) {
      this.#counts.removed++;
      this.#present.delete(name);
    }
  }
}

/** The version a sidecar's JSON describes, if it holds one (a torn sidecar describes none). */
function describedVersion(text: string): Version | undefined {
  try {
    const m = JSON.parse(text) as Partial<Sidecar>;
    if (
      typeof m.size === 'string' &&
      /^\d+$/.test(m.size) &&
      typeof m.mtimeNs === 'string' &&
      /^\d+$/.test(m.mtimeNs)
    )
      return { size: BigInt(m.size), mtimeNs: BigInt(m.mtimeNs) };
  } catch {
    // Torn: an orphan.
  }
  return undefined;
}
