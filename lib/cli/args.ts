/**
 * Parsing and validation of the CLI's flag values: pure functions that return
 * the parsed value or throw a `UsageError` naming the flag and the value (with
 * any URL password redacted). The CLI maps a `UsageError` to exit code 2.
 */
import { availableParallelism } from 'node:os';
import { redactString } from '../contract/redact.js';
import type { LogFormat } from './log.js';

/** Bad command-line usage: an unknown flag, a bad flag value, a missing argument. */
export class UsageError extends Error {
  readonly code = 'E_USAGE' as const;
  /** The flag at fault (`--shard`), when one is. */
  readonly flag: string | undefined;

  constructor(message: string, options?: { flag?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'UsageError';
    this.flag = options?.flag;
  }
}

export function isUsageError(err: unknown): err is UsageError {
  return err instanceof UsageError;
}

/** A shard of a walk: the rows with `id % count = index`. */
export interface Shard {
  index: number;
  count: number;
}

export type ExistenceMode = 'list' | 'head';
export type { LogFormat };

/**
 * The CLI's defaults, one place for all of them: the flags' defaults in
 * `--help` and the values a subcommand falls back on.
 */
export const DEFAULTS = {
  config: './blobshift.config.json',
  run: 'default',
  /** `blobshift rollback`'s run name. */
  rollbackRun: 'rollback',
  logDir: './blobshift-logs',
  chunkSize: 1000,
  concurrency: 16,
  existence: 'list',
  logFormat: 'text',
  queueName: 'blobshift',
} as const satisfies {
  config: string;
  run: string;
  rollbackRun: string;
  logDir: string;
  chunkSize: number;
  concurrency: number;
  existence: ExistenceMode;
  logFormat: LogFormat;
  queueName: string;
};

export const LIMITS = {
  concurrency: 1024,
  chunkSize: 100_000,
  shards: 10_000,
  processes: 256,
  maxRate: 1_000_000,
  nameLength: 64,
  typeLength: 255,
} as const;

const DIGITS = /^[0-9]+$/;
const DECIMAL = /^[0-9]+(\.[0-9]+)?$/;
const SAFE_NAME = /^[A-Za-z0-9._-]{1,64}$/;
// Control characters have no business in a flag value (names, paths, lists).
const CONTROL = /[\u0000-\u001f\u007f]/;

/** The value as it may appear in a message: quoted, shortened, URL passwords and registered secrets scrubbed. */
export function showValue(value: string): string {
  const shown = value.length > 80 ? `${value.slice(0, 80)}…` : value;
  return JSON.stringify(redactUrlCredentials(redactString(shown)));
}

/** Scrubs `user:password@` even from strings that are not valid URLs. */
function redactUrlCredentials(text: string): string {
  return text.replace(/^([a-z][a-z0-9+.-]*:\/*)?[^@\s]*:[^@\s]*@/i, (_m, scheme: string | undefined) => {
    return `${scheme ?? ''}[REDACTED]@`;
  });
}

function bad(flag: string, value: string, why: string): UsageError {
  return new UsageError(`invalid value for ${flag}: ${showValue(value)} (${why})`, { flag });
}

/** `I/N` with integers 0 ≤ I < N (N at most `LIMITS.shards`). `3/3` is refused. */
export function parseShard(value: string, flag = '--shard'): Shard {
  const m = /^([0-9]+)\/([0-9]+)$/.exec(value.trim());
  if (!m) throw bad(flag, value, 'expected I/N with integers 0 ≤ I < N, e.g. 0/3');
  const index = Number(m[1]);
  const count = Number(m[2]);
  if (count < 1 || count > LIMITS.shards) {
    throw bad(flag, value, `the shard count N must be between 1 and ${LIMITS.shards}`);
  }
  if (index >= count) {
    throw bad(
      flag,
      value,
      `the shard index I must be below N: 0 ≤ I < ${count}, so 0/${count} … ${count - 1}/${count}`,
    );
  }
  return { index, count };
}

/** A decimal integer in `[min, max]`: no sign, no fraction, no exponent. */
export function parseIntFlag(value: string, opts: { flag: string; min?: number; max: number }): number {
  const min = opts.min ?? 1;
  const range = `an integer from ${min} to ${opts.max}`;
  if (!DIGITS.test(value)) throw bad(opts.flag, value, `expected ${range}`);
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min || n > opts.max) throw bad(opts.flag, value, `expected ${range}`);
  return n;
}

/** `--concurrency`: 1 … 1024. */
export function parseConcurrency(value: string, flag = '--concurrency'): number {
  return parseIntFlag(value, { flag, min: 1, max: LIMITS.concurrency });
}

/** `--processes`: 1 … 256, or `auto` (one a core). */
export function parseProcesses(value: string, flag = '--processes'): number {
  if (value.trim() === 'auto') return Math.min(LIMITS.processes, availableParallelism());
  return parseIntFlag(value, { flag, min: 1, max: LIMITS.processes });
}

/** `--chunk-size`: 1 … 100000. */
export function parseChunkSize(value: string, flag = '--chunk-size'): number {
  return parseIntFlag(value, { flag, min: 1, max: LIMITS.chunkSize });
}

/** `--max-rate`: a positive decimal number (blobs per second), at most 1,000,000. */
export function parseRate(value: string, flag = '--max-rate'): number {
  const expected = `expected a positive number of blobs per second, at most ${LIMITS.maxRate}`;
  if (!DECIMAL.test(value)) throw bad(flag, value, expected);
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0 || n > LIMITS.maxRate) throw bad(flag, value, expected);
  return n;
}

/** One of `choices`, exactly (case-sensitive). */
export function parseChoice<T extends string>(value: string, flag: string, choices: readonly T[]): T {
  const found = choices.find((c) => c === value);
  if (found === undefined) throw bad(flag, value, `expected one of: ${choices.join(', ')}`);
  return found;
}

/** `--existence list|head`. */
export function parseExistence(value: string, flag = '--existence'): ExistenceMode {
  return parseChoice(value, flag, ['list', 'head'] as const);
}

/** `--log-format text|json`. */
export function parseLogFormat(value: string, flag = '--log-format'): LogFormat {
  return parseChoice(value, flag, ['text', 'json'] as const);
}

/**
 * `--types a,b`: a comma list of non-empty names (spaces around commas are
 * ignored, duplicates dropped, order kept).
 */
export function parseTypes(value: string, flag = '--types'): string[] {
  const parts = value.split(',').map((p) => p.trim());
  if (parts.some((p) => p === ''))
    throw bad(flag, value, 'expected a comma list of non-empty type names, e.g. a,b');
  for (const p of parts) {
    if (CONTROL.test(p)) throw bad(flag, value, 'type names cannot hold control characters');
    if (Buffer.byteLength(p) > LIMITS.typeLength) {
      throw bad(flag, value, `a type name is at most ${LIMITS.typeLength} bytes`);
    }
  }
  return [...new Set(parts)];
}

/** A safe name (`--run`, `--queue-name`): 1–64 of `A-Z a-z 0-9 . _ -`, not only dots. */
export function parseName(value: string, flag: string): string {
  if (!SAFE_NAME.test(value) || /^\.+$/.test(value)) {
    throw bad(flag, value, 'expected 1 to 64 characters from A-Z a-z 0-9 . _ - (not only dots)');
  }
  return value;
}

/** `--run NAME`. */
export function parseRunName(value: string, flag = '--run'): string {
  return parseName(value, flag);
}

/** `--queue-name NAME`. */
export function parseQueueName(value: string, flag = '--queue-name'): string {
  return parseName(value, flag);
}

/**
 * `--queue redis://[user:password@]HOST[:PORT][/DB]` (or `rediss://`).
 * Returns the URL as given. Messages never show the password.
 */
export function parseQueueUrl(value: string, flag = '--queue'): string {
  const expected = 'expected redis://HOST[:PORT][/DB] or rediss://…';
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw bad(flag, value, expected);
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') throw bad(flag, value, expected);
  if (url.hostname === '') throw bad(flag, value, `${expected}: the host is missing`);
  if (url.search !== '' || url.hash !== '') throw bad(flag, value, `${expected}: no query or fragment`);
  const db = url.pathname.replace(/^\//, '');
  if (db !== '' && (!DIGITS.test(db) || Number(db) > 15_000)) {
    throw bad(flag, value, `${expected}: the database after the host must be a number`);
  }
  return value;
}

/** The decoded password inside a URL, if it has one (to register as a secret). */
export function urlPassword(value: string): string | undefined {
  try {
    const { password } = new URL(value);
    if (password === '') return undefined;
    try {
      return decodeURIComponent(password);
    } catch {
      return password;
    }
  } catch {
    return undefined;
  }
}

/** A file or directory path (`-c`, `--log-dir`, a log file): non-empty, no control characters. */
export function parsePath(value: string, flag: string): string {
  if (value === '') throw bad(flag, value, 'expected a path');
  if (CONTROL.test(value)) throw bad(flag, value, 'a path cannot hold control characters');
  return value;
}
