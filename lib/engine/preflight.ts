/**
 * Preflight: before a command writes anything, make sure the metadata
 * database answers, each backend answers (bucket exists, credentials work),
 * the new backend takes a write, and old and new are not the same place.
 * Every failure is a `PreflightError` naming what failed.
 */
import { randomBytes } from 'node:crypto';
import { PreflightError, SameLocationError } from '../contract/errors.js';
import type { MetaStore } from '../contract/meta.js';
import type { BlobDB } from '../contract/types.js';
import { shortError } from './errors.js';

export interface PreflightOptions {
  meta?: MetaStore;
  oldDb?: BlobDB;
  newDb?: BlobDB;
  /** Names for messages (the config's descriptions). */
  names?: { old?: string; new?: string; meta?: string };
  /** Probe a write (and delete) on the new backend. */
  write?: boolean;
  /** The config says old and new overlap (same root, same bucket with overlapping prefixes). */
  sameLocation?: boolean;
  /**
   * Default true: before the write probe, list the new backend under
   * `PROBE_PREFIX` and delete the probes killed preflights left. False where
   * the caller finds them in a listing it makes anyway (`sweepProbesFrom`).
   */
  sweepProbes?: boolean;
}

/** Resolves when everything answers; rejects `PreflightError` otherwise. */
export async function preflight(opts: PreflightOptions): Promise<void> {
  const names = {
    old: opts.names?.old ?? 'the old backend',
    new: opts.names?.new ?? 'the new backend',
    meta: opts.names?.meta ?? 'the metadata database',
  };
  if (opts.sameLocation) {
    throw new SameLocationError(
      `${names.old} and ${names.new} are the same place (or overlap); a migration needs two distinct backends`,
    );
  }
  if (opts.meta) {
    try {
      await opts.meta.maxId();
    } catch (err) {
      throw new PreflightError(names.meta, `it does not answer: ${shortError(err)}`, { cause: err });
    }
  }
  for (const [side, db] of [
    ['old', opts.oldDb],
    ['new', opts.newDb],
  ] as const) {
    if (!db) continue;
    const name = names[side];
    try {
      // A backend's own check (S3: a one-key listing) is cheaper than a first listing page.
      if (db.preflight) await db.preflight({ write: false });
      else for await (const _ of db.list()) break;
    } catch (err) {
      throw new PreflightError(name, `it cannot be listed: ${shortError(err)}`, { cause: err });
    }
  }
  if (opts.write && opts.newDb) await writeProbe(opts.newDb, opts.oldDb, names, opts.sweepProbes ?? true);
}

/**
 * Keys of the write probe start with this. A process killed between the
 * probe's put and its delete leaves one behind; the next preflight removes it.
 */
export const PROBE_PREFIX = 'blobshift-preflight-probe-';

/** The probes this process wrote: never swept as leftovers. */
const ownProbes = new Set<string>();

async function writeProbe(
  newDb: BlobDB,
  oldDb: BlobDB | undefined,
  names: { old: string; new: string },
  sweep: boolean,
) {
  try {
    await newDb.probeCapabilities?.();
    if (sweep) await sweepProbes(newDb);
  } catch (err) {
    throw new PreflightError(names.new, `a test write failed: ${shortError(err)}`, { cause: err });
  }
  for (let attempt = 1; ; attempt++) {
    if (await probeOnce(newDb, oldDb, names)) return;
    // Another process swept the probe before the old backend was asked for it
    // (its leftover sweep): the answer says nothing. Again, with a new probe.
    if (attempt >= PROBE_ATTEMPTS) {
      throw new PreflightError(
        names.new,
        `its test write vanished ${PROBE_ATTEMPTS} times before it could be looked for in ${names.old}: something deletes keys starting with ${PROBE_PREFIX} there (another blobshift run sweeping leftovers, or a lifecycle rule); run again once it is done`,
      );
    }
  }
}

const PROBE_ATTEMPTS = 3;

/** One probe: true when the answer holds (old and new are distinct), false when the probe vanished first. */
async function probeOnce(
  newDb: BlobDB,
  oldDb: BlobDB | undefined,
  names: { old: string; new: string },
): Promise<boolean> {
  const key = `${PROBE_PREFIX}${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
  ownProbes.add(key);
  try {
    await newDb.put(key, 'blobshift write probe', { overwrite: false, contentType: 'text/plain' });
  } catch (err) {
    throw new PreflightError(names.new, `a test write failed: ${shortError(err)}`, { cause: err });
  }
  try {
    if (oldDb === undefined) return true;
    let seenInOld = false;
    try {
      seenInOld = await oldDb.exists(key);
    } catch (err) {
      throw new PreflightError(names.old, `it does not answer: ${shortError(err)}`, { cause: err });
    }
    if (seenInOld) {
      throw new SameLocationError(
        `a blob written to ${names.new} appeared in ${names.old}: they are the same place; a migration needs two distinct backends`,
      );
    }
    // Not in old: only an answer if the probe is still in new.
    try {
      return await newDb.exists(key);
    } catch (err) {
      throw new PreflightError(names.new, `it does not answer: ${shortError(err)}`, { cause: err });
    }
  } finally {
    // One request (DeleteObjects on S3), not a HEAD and a DELETE.
    await newDb.bulkDelete([key]).catch(() => {});
  }
}

/**
 * Proves that `oldDb` and `newDb` are two places, not one under two names (a
 * bucket reached through two spellings of its endpoint, a root and a bind
 * mount or symlink of it), by content rather than by config text: a probe
 * blob with a random key is written to new, looked for in old, and removed.
 * Rejects `SameLocationError` when old shows the probe, `PreflightError` when
 * the probe cannot be written or either side does not answer. Leaves the
 * sweep of leftover probes to the commands that write blobs.
 */
export async function proveDistinct(
  newDb: BlobDB,
  oldDb: BlobDB,
  names: { old?: string; new?: string } = {},
): Promise<void> {
  await writeProbe(
    newDb,
    oldDb,
    { old: names.old ?? 'the old backend', new: names.new ?? 'the new backend' },
    false,
  );
}

/** Deletes write probes an earlier, killed preflight left behind (one prefix listing). */
export async function sweepProbes(db: BlobDB): Promise<void> {
  const leftovers: string[] = [];
  for await (const info of db.list({ prefix: PROBE_PREFIX })) leftovers.push(info.key);
  if (leftovers.length > 0) await db.bulkDelete(leftovers);
}

/**
 * Deletes the write probes killed preflights left, found in a listing the
 * caller makes anyway (a backfill's snapshot): no request but the delete.
 * Best effort, like the sweep before a write probe.
 */
export async function sweepProbesFrom(db: BlobDB, keys: Iterable<string>): Promise<void> {
  // This process's own probe may be in the listing: its preflight deletes it,
  // after checking the old backend for it.
  const leftovers = [...keys].filter((key) => key.startsWith(PROBE_PREFIX) && !ownProbes.has(key));
  if (leftovers.length > 0) await db.bulkDelete(leftovers).catch(() => {});
}
