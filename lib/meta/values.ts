/**
 * Conversions between what the drivers return and blobshift's types.
 * mysql2 returns BIGINT as a number while it is safe (`supportBigNumbers`)
 * and SUM() as a DECIMAL string; better-sqlite3 returns numbers; dates are
 * `Date` objects from mysql2 and epoch milliseconds from SQLite (or text,
 * in an app's own table).
 */
import { BlobShiftError } from '../errors.js';

/** A driver's integer value as a safe JS number; `BlobShiftError` beyond 2^53. */
export function toSafeNumber(value: unknown, what: string): number {
  if (value === null || value === undefined) return 0;
  const n = typeof value === 'number' ? value : Number(value as string | bigint);
  if (!Number.isFinite(n) || (Number.isInteger(n) && !Number.isSafeInteger(n))) {
    throw new BlobShiftError(`${what} ${String(value)} is beyond the safe integer range of JavaScript`);
  }
  return n;
}

const SQL_DATETIME = /^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/;

/** A driver's date value as a `Date`; `null` for null. Text without a zone is read as UTC. */
export function toDate(value: unknown): Date | null {
  if (value === null || value === undefined) return null;
  if (value instanceof Date) return value;
  if (typeof value === 'number' || typeof value === 'bigint') return new Date(Number(value));
  const text = String(value).trim();
  if (/^-?\d+$/.test(text)) return new Date(Number(text));
  if (SQL_DATETIME.test(text)) return new Date(`${text.replace(' ', 'T')}Z`);
  return new Date(text);
}

/** A key column's value (a Buffer from VARBINARY, or text) as a string. */
export function toKey(value: unknown): string {
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  if (value instanceof Uint8Array) return Buffer.from(value).toString('utf8');
  return String(value);
}

/** A text column's value as a string, `''` for null. */
export function toText(value: unknown): string {
  if (value === null || value === undefined) return '';
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  return String(value);
}

/** A nullable text column's value. */
export function toNullableText(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  return toText(value);
}

/** Parses a JSON text column, with `fallback` for null or empty. */
export function parseJson<T>(value: unknown, fallback: T, what: string): T {
  if (value === null || value === undefined || value === '') return fallback;
  if (typeof value === 'object' && !Buffer.isBuffer(value)) return value as T;
  try {
    return JSON.parse(toText(value)) as T;
  } catch (err) {
    throw new BlobShiftError(`${what} holds invalid JSON`, { cause: err, code: 'E_RUN_STATE' });
  }
}

/** A size column as a number; NaN when it is not a safe integer (the caller fails that row alone). */
export function toSizeOrNaN(value: unknown): number {
  const n = typeof value === 'number' ? value : Number(value as string | bigint);
  return Number.isSafeInteger(n) ? n : Number.NaN;
}
