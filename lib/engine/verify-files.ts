/**
 * verify's key files and samples: one JSON-lines file per class (created on
 * its first line, so a class with no members leaves no file), and the first
 * keys of each class for the text report.
 */
import { LazyJsonLinesFile } from './report-file.js';
import type { VerifyClass } from './verify.js';

export type VerifyFileClass = VerifyClass | 'orphans';

/** The keys listed per class in the text report. */
export const SAMPLE = 10;

/** Each class's file name: `verify-<UTC>-<suffix>.jsonl`; also the word logged for a failing row. */
export const FILE_SUFFIX: Record<VerifyFileClass, string> = {
  missing: 'missing',
  sizeMismatch: 'size-mismatch',
  checksumMismatch: 'checksum-mismatch',
  unverifiable: 'unverifiable',
  unreadable: 'unreadable',
  invalidRow: 'invalid-rows',
  duplicateKey: 'duplicate-keys',
  orphans: 'orphans',
};

export class VerifyKeyFiles {
  readonly #files = {} as Record<VerifyFileClass, LazyJsonLinesFile>;
  /** The first keys of each non-empty class. */
  readonly samples: Partial<Record<VerifyFileClass, string[]>> = {};

  constructor(logDir: string, stamp: string) {
    for (const c of Object.keys(FILE_SUFFIX) as VerifyFileClass[]) {
      this.#files[c] = new LazyJsonLinesFile(logDir, `verify-${stamp}-${FILE_SUFFIX[c]}.jsonl`);
    }
  }

  /** Writes `line` to the class's file; `sample` joins the samples while there is room. */
  async record(c: VerifyFileClass, sample: string, line: Record<string, unknown>): Promise<void> {
    const list = this.samples[c] ?? [];
    this.samples[c] = list;
    if (list.length < SAMPLE) list.push(sample);
    await this.#files[c].write(line);
  }

  /** Closes every file; resolves the paths of those written, the orphans' apart. */
  async close(): Promise<{ files: Partial<Record<VerifyClass, string>>; orphans: string | null }> {
    const files: Partial<Record<VerifyClass, string>> = {};
    let orphans: string | null = null;
    for (const [c, f] of Object.entries(this.#files) as [VerifyFileClass, LazyJsonLinesFile][]) {
      const path = await f.close();
      if (path === undefined) continue;
      if (c === 'orphans') orphans = path;
      else files[c] = path;
    }
    return { files, orphans };
  }

  /** After a failure: closes every file, whatever fails. */
  async abandon(): Promise<void> {
    await Promise.all(Object.values(this.#files).map((f) => f.close().catch(() => undefined)));
  }
}
