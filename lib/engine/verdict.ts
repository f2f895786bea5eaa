/**
 * The rules that turn counts into an outcome: verify's verdict, and what
 * check-blob-logs leaves unresolved. One place for each, used by the
 * commands and by the parents of `--processes` when they sum their children.
 */

export type VerifyVerdict = 'SAFE TO FLIP' | `NOT SAFE: ${string}`;

/** What makes a verify NOT SAFE, counted. */
export interface VerdictCounts {
  missing: number;
  sizeMismatches: number;
  checksumMismatches: number;
  unverifiable: number;
  unreadable: number;
  invalidRows: number;
  duplicateKeys: number;
  unvisitedRows: number;
}

/** The verdict those counts give: SAFE TO FLIP only when every one is zero. */
export function verdictFor(c: VerdictCounts): { safe: boolean; verdict: VerifyVerdict } {
  const unsafe =
    c.missing +
    c.sizeMismatches +
    c.checksumMismatches +
    c.unverifiable +
    c.unreadable +
    c.invalidRows +
    c.duplicateKeys +
    c.unvisitedRows;
  if (unsafe === 0) return { safe: true, verdict: 'SAFE TO FLIP' };
  let text = `${c.missing} missing, ${c.sizeMismatches} size mismatches, ${c.checksumMismatches} checksum mismatches`;
  if (c.unverifiable > 0) text += `, ${c.unverifiable} unverifiable`;
  if (c.unreadable > 0) text += `, ${c.unreadable} unreadable`;
  if (c.invalidRows > 0) text += `, ${c.invalidRows} invalid rows`;
  if (c.duplicateKeys > 0) text += `, ${c.duplicateKeys} keys held by more than one row`;
  if (c.unvisitedRows > 0) text += `, ${c.unvisitedRows} rows never visited by the walk`;
  return { safe: false, verdict: `NOT SAFE: ${text}` };
}

/** What check-blob-logs counted, as far as its exit code goes. */
export interface CheckOutcomeCounts {
  foundInOld: number;
  migrated: number;
  notFound: number;
  wrongSizeInNew: number;
  wrongSizeInOld: number;
  errors: number;
}

/** Records check-blob-logs leaves for the operator: any makes its exit code 1. */
export function unresolvedRecords(c: CheckOutcomeCounts): number {
  return c.foundInOld - c.migrated + c.notFound + c.wrongSizeInNew + c.wrongSizeInOld + c.errors;
}
