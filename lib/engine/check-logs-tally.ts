/**
 * check-blob-logs' tally: each classified record counted under its type,
 * and the records the operator must see (not found, wrong size, unchecked,
 * failed copies) kept in log order, whatever order the checks finished in.
 */

import type {
  CheckCounts,
  CheckedRecord,
  CheckTypeReport,
  FailedCopy,
  WrongSizeRecord,
} from './check-logs.js';
import type { MissingRecord } from './missing-log.js';

export type Classification =
  | 'foundInNew'
  | 'wrongSizeInNew'
  | 'foundInOld'
  | 'wrongSizeInOld'
  | 'notReferenced'
  | 'notFound'
  | 'errors';

/** A record to classify, with its place in the logs. */
export interface Pending {
  seq: number;
  record: MissingRecord;
}

/** What a classification carries besides its class. */
export interface TallyExtra {
  /** Copied to the new backend by this run. */
  migrated?: boolean;
  /** The copy failed, with this error. */
  failed?: string;
  /** Why the record could not be checked. */
  error?: string;
  size?: { where: 'new' | 'old'; expected: number; actual: number };
}

export function emptyCheckCounts(): CheckCounts {
  return {
    checked: 0,
    foundInNew: 0,
    wrongSizeInNew: 0,
    foundInOld: 0,
    wrongSizeInOld: 0,
    notReferenced: 0,
    notFound: 0,
    errors: 0,
    migrated: 0,
    migrateFailed: 0,
  };
}

type InOrder<T> = (T & { seq: number })[];

export class CheckTally {
  readonly #byType = new Map<string, CheckCounts>();
  readonly #notFound: InOrder<CheckedRecord> = [];
  readonly #wrongSize: InOrder<WrongSizeRecord> = [];
  readonly #errors: InOrder<FailedCopy> = [];
  readonly #failures: InOrder<FailedCopy> = [];

  add(p: Pending, kind: Classification, extra?: TallyExtra): void {
    const r = p.record;
    let counts = this.#byType.get(r.type);
    if (!counts) {
      counts = emptyCheckCounts();
      this.#byType.set(r.type, counts);
    }
    counts.checked++;
    counts[kind]++;
    if (extra?.migrated) counts.migrated++;
    const entry = { id: r.id, key: r.key, type: r.type, parentId: r.parentId };
    if (extra?.failed !== undefined) {
      counts.migrateFailed++;
      this.#failures.push({ seq: p.seq, ...entry, error: extra.failed });
    }
    if (kind === 'notFound') this.#notFound.push({ seq: p.seq, ...entry });
    if (kind === 'errors')
      this.#errors.push({ seq: p.seq, ...entry, error: extra?.error ?? 'unknown error' });
    if (extra?.size) this.#wrongSize.push({ seq: p.seq, ...entry, ...extra.size });
  }

  /** The counts per type (sorted by type name) and summed, and the listed records in log order. */
  result(): {
    byType: CheckTypeReport[];
    totals: CheckCounts;
    notFound: CheckedRecord[];
    wrongSize: WrongSizeRecord[];
    errors: FailedCopy[];
    migrateFailures: FailedCopy[];
  } {
    const types = [...this.#byType.keys()].sort(compareText);
    const totals = emptyCheckCounts();
    const byType: CheckTypeReport[] = types.map((type) => {
      const c = this.#byType.get(type) ?? emptyCheckCounts();
      for (const k of Object.keys(totals) as (keyof CheckCounts)[]) totals[k] += c[k];
      return { type, ...c };
    });
    return {
      byType,
      totals,
      notFound: inLogOrder(this.#notFound),
      wrongSize: inLogOrder(this.#wrongSize),
      errors: inLogOrder(this.#errors),
      migrateFailures: inLogOrder(this.#failures),
    };
  }
}

function inLogOrder<T extends { seq: number }>(list: T[]): Omit<T, 'seq'>[] {
  return list.sort((a, b) => a.seq - b.seq).map(({ seq: _seq, ...rest }) => rest);
}

function compareText(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}
