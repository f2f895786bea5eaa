/**
 * Conversions between what the drivers return and blobshift's types.
 * mysql2 returns BIGINT as a number while it is safe (`supportBigNumbers`)
 * and SUM() as a DECIMAL string; pg returns BIGINT, COUNT() and NUMERIC as
 * text; better-sqlite3 returns numbers; dates are `Date` objects from mysql2
 * and pg (text for a PostgreSQL `timestamp` without zone, read as UTC) and
 * epoch milliseconds from SQLite (or text, in an app's own table).
 */
import { BlobShiftError } from '../contract/errors.js';

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

/** A key column's value (a Buffer from VARBINARY or bytea, or text) as a string; `''` for NULL. */
export function toKey(value: unknown): string {
  if (value === null || value === undefined) return '';
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  if (value instanceof Uint8Array) return Buffer.from(value).toString('utf8');
  return String(value);
}

/** A value as it may appear in a message: strings quoted, long ones cut. */
function shown(value: unknown): string {
  let text: string;
  if (typeof value === 'string') text = JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  else if (typeof value === 'bigint') text = `${value}`;
  else text = String(value);
  return text;
}

/** Why a key column's value cannot be used as a key, or undefined (bad keys are judged by `validateKey`). */
export function keyProblem(value: unknown): string | undefined {
  if (value === null || value === undefined) return 'the key is NULL';
  if (toKey(value) === '') return 'the key is empty';
  return undefined;
}

/** A size column's value read strictly: `size` is NaN when `invalid` says why it cannot be used. */
export interface SizeReading {
  size: number;
  invalid?: string;
}

const DIGITS = /^[0-9]+$/;

/**
 * Reads a size column strictly: a JS number that is a safe non-negative
 * integer, a bigint in that range, or text of decimal digits only. NULL,
 * empty text, `0x5`, `5e0`, ` 5`, `-1`, `5.5` and anything beyond 2^53 are
 * invalid (NaN, with the reason in words).
 */
export function readSize(value: unknown): SizeReading {
  if (value === null || value === undefined) return { size: Number.NaN, invalid: 'the size is NULL' };
  let v = value;
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) v = Buffer.from(v).toString('utf8');
  const beyond = {
    size: Number.NaN,
    invalid: `the size ${shown(v)} is beyond the safe integer range (2^53)`,
  };
  const notInteger = { size: Number.NaN, invalid: `the size ${shown(v)} is not a non-negative integer` };
  if (typeof v === 'number') {
    if (!Number.isInteger(v) || v < 0) return notInteger;
    return Number.isSafeInteger(v) ? { size: v } : beyond;
  }
  if (typeof v === 'bigint') {
    if (v < 0n) return notInteger;
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? { size: Number(v) } : beyond;
  }
  if (typeof v === 'string') {
    if (v.trim() === '')
      return { size: Number.NaN, invalid: v === '' ? 'the size is empty' : 'the size is blank' };
    if (!DIGITS.test(v)) return notInteger;
    const n = Number(v);
    return Number.isSafeInteger(n) ? { size: n } : beyond;
  }
  return { size: Number.NaN, invalid: `the size ${shown(v)} (${typeof v}) is not a non-negative integer` };
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
