/**
 * check-blob-logs: classify what backfill could not copy, and with `migrate`
 * re-copy the stragglers through the one copy path (`copy.ts`).
 *
 * Each record of each missing-blob log is classified once (the same key in
 * several logs is checked once; the first record read gives its type), in
 * this order:
 *   1. in the new backend with the row's size → "Found in new db" (also when
 *      the row is gone: that copy is an orphan, which verify lists)
 *   2. in the new backend with another size   → "Wrong size in new db"
 *      (unresolved; never overwritten, `migrate` included: see below)
 *   3. no metadata row any more               → "Not referenced" (never copied:
 *                                               that would resurrect a deleted blob)
 *   4. in the old backend with the row's size → "Found in old db" (`migrate`
 *                                               copies it)
 *   5. in the old backend with another size   → "Wrong size in old db"
 *      (unresolved; `migrate` does not copy it: the copy path refuses bytes
 *      that disagree with the metadata)
 *   6. otherwise                              → "Not found"
 * A record whose checks fail (a permission error, retries exhausted) is
 * "Could not check", with its error; the others go on. A run of failures on
 * the infrastructure (a backend or the database not answering) stops the
 * run with `InfrastructureError` (exit 3; a rerun checks everything again).
 *
 * "Wrong size in new db" stays for the operator to decide: the copy in new may
 * be the app's own newer write whose row was not updated yet, or a damaged
 * copy; `blobshift verify` lists it too. When the old copy is the right one,
 * delete the new copy and run check-blob-logs `--migrate` again.
 *
 * Logs are streamed; only the set of keys seen is held for the whole run.
 * Records are taken in chunks; each record costs a stat in new (a HEAD on S3;
 * a log is small next to the bucket, so listing the bucket would cost more),
 * a metadata lookup, and where needed a stat in old (or the copy); all
 * bounded by `concurrency`.
 *
 * Each invocation is recorded in the run-state table (see `ledger.ts`), so
 * that cleanup-old asks for a verify made after it.
 */
import { open } from 'node:fs/promises';
import { errorMessage, isErrnoException, PreflightError } from '../contract/errors.js';
import type { MetaStore } from '../contract/meta.js';
import type { BlobDB } from '../contract/types.js';
import type { EngineLogger } from './backfill.js';
import { CheckLogsRun } from './check-logs-run.js';
import type { RetryPolicy } from './copy.js';
import type { BackendIdentity } from './ledger.js';
import { compactUtc, type MissingRecord, NOT_FOUND } from './missing-log.js';
import { JsonLinesFile } from './report-file.js';

export interface CheckLogsOptions {
  /** Missing-blob logs to read, in order. */
  files: string[];
  meta: MetaStore;
  oldDb: BlobDB;
  newDb: BlobDB;
  /** Copy the "Found in old db" blobs to the new backend (through `copyBlob`). */
  migrate?: boolean;
  /** Checks (and copies) at once. Default 16. */
  concurrency?: number;
  /** Records taken per chunk. Default 500. */
  chunkSize?: number;
  retry?: Partial<RetryPolicy>;
  /** Consecutive infrastructure failures that stop the run (default: concurrency, within 3–16). */
  infrastructureThreshold?: number;
  /**
   * The two backends as configured (secret-free descriptions), for the
   * ledger in the run-state table. Default `{ old: 'old', new: 'new' }`.
   */
  identity?: BackendIdentity;
  /** Record this invocation in the run-state table (default true). */
  record?: boolean;
  /** Stops the run: rejects with `AbortedError`. */
  signal?: AbortSignal;
  onProgress?: (p: CheckLogsProgress) => void;
  logger?: EngineLogger;
  /**
   * Only the records with `id % count = index` (one process of
   * `--processes`); records, duplicates and copies count within it. Lines
   * that are not records are reported by every shard.
   */
  shard?: { index: number; count: number };
}

export interface CheckLogsProgress {
  /** Valid records read so far (duplicates included). */
  read: number;
  /** Distinct keys classified so far. */
  checked: number;
  /** The log being read. */
  file: string;
}

export interface CheckCounts {
  checked: number;
  foundInNew: number;
  /** In new, but not with the row's size: unresolved, never overwritten. */
  wrongSizeInNew: number;
  foundInOld: number;
  /** In old, but not with the row's size: unresolved, never copied. */
  wrongSizeInOld: number;
  notReferenced: number;
  notFound: number;
  /** The record could not be checked (see `errors`): unresolved. */
  errors: number;
  /** Of `foundInOld`: copied to the new backend by this run. */
  migrated: number;
  /** Of `foundInOld`: the copy failed (see `migrateFailures`). */
  migrateFailed: number;
}

export interface CheckTypeReport extends CheckCounts {
  /** The blob type from the log record (`''` when the record had none). */
  type: string;
}

export interface CheckedRecord {
  id: number;
  key: string;
  type: string;
  parentId: string;
}

export interface FailedCopy extends CheckedRecord {
  error: string;
}

/** A copy whose size disagrees with its metadata row. */
export interface WrongSizeRecord extends CheckedRecord {
  where: 'new' | 'old';
  /** The row's size. */
  expected: number;
  /** The size the backend holds. */
  actual: number;
}

export interface LogLineProblem {
  file: string;
  line: number;
  why: string;
}

export interface CheckLogsReport {
  files: string[];
  migrate: boolean;
  /** Valid records read, duplicates included. */
  records: number;
  /** Records whose key an earlier record (in any log) already had. */
  duplicates: number;
  /** One entry per type, sorted by type name. */
  byType: CheckTypeReport[];
  totals: CheckCounts;
  /** Every "Not found" record, in log order. */
  notFound: CheckedRecord[];
  /** Every "Wrong size in new db" / "Wrong size in old db" record, in log order. */
  wrongSize: WrongSizeRecord[];
  /** Every record that could not be checked, in log order, with its error. */
  errors: FailedCopy[];
  /** Every failed copy (with `migrate`), in log order. */
  migrateFailures: FailedCopy[];
  /** Malformed lines: reported, skipped, and the run exits 1. */
  malformed: LogLineProblem[];
  /** Torn last lines (a writer killed mid-line): warnings only. */
  warnings: LogLineProblem[];
  /**
   * 0 when nothing is left "Found in old db" (not migrated), "Not found",
   * with a wrong size or unchecked, and no line was malformed; 1 otherwise.
   */
  exitCode: 0 | 1;
}

/** How many "Not found" keys `formatCheckReport` lists before pointing at a file. */
export const MAX_LISTED = 100;

export { emptyCheckCounts } from './check-logs-tally.js';

/**
 * Reads and classifies the logs. Rejects before anything is checked when a
 * log is missing or unreadable (`PreflightError`); malformed lines are
 * reported in the result instead. A record whose checks fail is reported as
 * "Could not check" and the others go on; a run of infrastructure failures
 * rejects with `InfrastructureError`.
 */
export async function checkBlobLogs(opts: CheckLogsOptions): Promise<CheckLogsReport> {
  for (const file of opts.files) await assertReadable(file);
  return new CheckLogsRun(opts).run();
}

/**
 * Writes every "Not found" record to a new file in `logDir` (0600, the
 * directory 0700 when created), in the missing-blob log format, so the file
 * can be read by check-blob-logs again. Resolves its path.
 */
export async function writeNotFoundFile(
  report: Pick<CheckLogsReport, 'notFound'>,
  logDir: string,
  now: Date = new Date(),
): Promise<string> {
  const file = await JsonLinesFile.create(logDir, `check-blob-logs-not-found-${compactUtc(now)}.jsonl`);
  try {
    const at = now.toISOString();
    for (const r of report.notFound) {
      const line: MissingRecord = {
        id: r.id,
        key: r.key,
        type: r.type,
        parentId: r.parentId,
        error: NOT_FOUND,
        at,
      };
      await file.write(line);
    }
  } finally {
    await file.close();
  }
  return file.path;
}

/**
 * The report as operators read it (runbooks quote the per-type blocks):
 *
 *     attachment: checked 2342 records
 *       Found in new db: 0
 *       Found in old db: 0
 *       Not referenced: 0
 *       Not found: 2342
 *
 * then, with `migrate`, `Migrated: N` (and `Migrate failed: M` with each
 * failure), then the "Not found" keys: listed when there are at most 100,
 * otherwise the path of `notFoundFile` (see `writeNotFoundFile`), then
 * malformed lines and warnings. Ends with a newline.
 */
export function formatCheckReport(report: CheckLogsReport, opts: { notFoundFile?: string } = {}): string {
  const out: string[] = [];
  if (report.byType.length === 0) {
    out.push(`no records in ${report.files.length} log${report.files.length === 1 ? '' : 's'}`);
  }
  for (const t of report.byType) out.push(...typeBlock(t));
  if (report.migrate) {
    out.push(`Migrated: ${report.totals.migrated}`);
    if (report.totals.migrateFailed > 0) {
      out.push(`Migrate failed: ${report.totals.migrateFailed}`);
      out.push(...listed(report.migrateFailures, (f) => `  ${f.key}: ${f.error}`, ' (see --json)'));
    }
  }
  if (report.wrongSize.length > 0) {
    out.push('Wrong size (never overwritten or copied; see verify, and the README on what to do):');
    out.push(
      ...listed(
        report.wrongSize,
        (w) => `  ${w.key}: in ${w.where} ${w.actual} bytes, the metadata says ${w.expected}`,
        ' (see --json)',
      ),
    );
  }
  if (report.errors.length > 0) {
    out.push('Could not check:');
    out.push(...listed(report.errors, (e) => `  ${e.key}: ${e.error}`, ' (see --json)'));
  }
  out.push(...notFoundLines(report.notFound, opts.notFoundFile));
  if (report.malformed.length > 0) {
    out.push(`Malformed lines: ${report.malformed.length}`);
    out.push(...listed(report.malformed, (p) => `  ${p.file}:${p.line}: ${p.why}`, ''));
  }
  for (const w of report.warnings) out.push(`Warning: ${w.file}:${w.line}: ${w.why}`);
  return `${out.join('\n')}\n`;
}

/** One type's block, as runbooks quote it; the classes that need the operator where they occur. */
function typeBlock(t: CheckTypeReport): string[] {
  const out = [
    `${t.type === '' ? '(no type)' : t.type}: checked ${t.checked} records`,
    `  Found in new db: ${t.foundInNew}`,
    `  Found in old db: ${t.foundInOld}`,
    `  Not referenced: ${t.notReferenced}`,
    `  Not found: ${t.notFound}`,
  ];
  if (t.wrongSizeInNew > 0) out.push(`  Wrong size in new db: ${t.wrongSizeInNew}`);
  if (t.wrongSizeInOld > 0) out.push(`  Wrong size in old db: ${t.wrongSizeInOld}`);
  if (t.errors > 0) out.push(`  Could not check: ${t.errors}`);
  return out;
}

/** The first `MAX_LISTED` items, one line each, then how many more. */
function listed<T>(items: T[], line: (item: T) => string, more: string): string[] {
  const out = items.slice(0, MAX_LISTED).map(line);
  if (items.length > MAX_LISTED) out.push(`  … and ${items.length - MAX_LISTED} more${more}`);
  return out;
}

/** The "Not found" keys: listed up to `MAX_LISTED`, otherwise the file that lists them (or the first ones). */
function notFoundLines(notFound: CheckedRecord[], file: string | undefined): string[] {
  const n = notFound.length;
  if (n === 0) return [];
  if (n <= MAX_LISTED) return ['Not found keys:', ...notFound.map((r) => `  ${r.key}`)];
  if (file !== undefined) return [`Not found keys: ${n}, listed in ${file}`];
  return [
    `Not found keys (first ${MAX_LISTED} of ${n}):`,
    ...notFound.slice(0, MAX_LISTED).map((r) => `  ${r.key}`),
  ];
}

/** A log that cannot be opened is refused before any record is checked. */
async function assertReadable(file: string): Promise<void> {
  const target = `missing-blob log ${JSON.stringify(file)}`;
  let isFile: boolean;
  try {
    const handle = await open(file, 'r');
    try {
      isFile = (await handle.stat()).isFile();
    } finally {
      await handle.close();
    }
  } catch (err) {
    const why = isErrnoException(err, 'ENOENT') ? 'no such file' : `cannot read it: ${errorMessage(err)}`;
    throw new PreflightError(target, why, { cause: err });
  }
  if (!isFile) throw new PreflightError(target, 'not a regular file');
}
