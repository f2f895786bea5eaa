/**
 * Row triage: what a metadata row needs, decided before any request to a
 * backend. A row whose blob expired is skipped, a row that cannot be used is
 * failed, a row the listing snapshot shows present with the metadata's size
 * is settled, and every other row is copied (asking the destination first
 * when it may hold the blob). The local run, the queue producer and the dry
 * run all triage with `planRow`.
 */
import { compareKeys } from '../contract/keys.js';
import type { BlobMeta } from '../contract/types.js';
import type { PresentIndex } from './present-index.js';

export type RowPlan =
  | { kind: 'expired' }
  | { kind: 'invalid'; error: string }
  | { kind: 'present' }
  /** `check`: the destination may hold the blob; ask it before copying (never overwrite). */
  | { kind: 'copy'; check: boolean };

export interface PlanRules {
  /** Rows whose `expiresOn` is at or before this time are skipped. */
  nowMs: number;
  /**
   * Which rows are failed before any request: `row` (a local run) every row
   * the metadata marks invalid or whose size is not a non-negative integer;
   * `size` (the queue producer) only the size; `none` (the dry run) none.
   */
  refuse: 'row' | 'size' | 'none';
  /** A rollback reads a present copy whose row has a sha256: its bytes may be stale. */
  judgeBytes?: boolean;
  /** No snapshot answers for the destination: a copy asks it first (`--existence head`). */
  headEach: boolean;
}

/**
 * What `row` needs; `listed` is the size the snapshot holds for its key
 * (undefined: absent, or no snapshot).
 */
export function planRow(row: BlobMeta, listed: number | undefined, rules: PlanRules): RowPlan {
  if (row.expiresOn && row.expiresOn.getTime() <= rules.nowMs) return { kind: 'expired' };
  const error = invalidError(row, rules.refuse);
  if (error !== undefined) return { kind: 'invalid', error };
  const judgeBytes = rules.judgeBytes === true && row.sha256 !== null;
  if (listed !== undefined && listed === row.contentLength && !judgeBytes) return { kind: 'present' };
  // Absent from the snapshot: straight to the copy path (it never
  // overwrites). Present with another size, or no snapshot: ask the
  // destination first.
  return { kind: 'copy', check: listed !== undefined || rules.headEach };
}

function invalidError(row: BlobMeta, refuse: PlanRules['refuse']): string | undefined {
  const badSize = !Number.isSafeInteger(row.contentLength) || row.contentLength < 0;
  if (refuse === 'row' && (row.invalid !== undefined || badSize)) {
    return `invalid metadata row: ${row.invalid ?? `the size ${row.contentLength} is not a non-negative integer`}`;
  }
  if (refuse === 'size' && badSize) return `the metadata row has an invalid size (${row.contentLength})`;
  return undefined;
}

/** What the snapshot said of some keys: their sizes, and which keys that answer covers. */
export interface Answers {
  sizes: Map<string, number>;
  covers(key: string): boolean;
}

/**
 * Asks the snapshot (`undefined`: none, every key is covered and absent)
 * about the rows' keys. A snapshot still being listed covers the keys up to
 * where it got.
 */
export function answer(index: PresentIndex | undefined, rows: readonly BlobMeta[]): Answers {
  if (!index) return { sizes: new Map(), covers: () => true };
  const complete = index.complete;
  const upTo = index.position;
  const sizes = index.lookup(rows.map((r) => r.key));
  return {
    sizes,
    covers: (key) => complete || (upTo !== undefined && compareKeys(key, upTo) <= 0),
  };
}
