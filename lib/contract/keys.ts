/**
 * The one key validator every backend uses.
 *
 * A valid key is 1–1024 bytes of UTF-8 made of segments separated by `/`.
 * Refused: the empty key, a leading `/`, an empty segment (`a//b`, or a
 * trailing `/`), a `.` or `..` segment, NUL and other control characters
 * (U+0000–U+001F, U+007F–U+009F), unpaired surrogates (not encodable as
 * UTF-8), a segment over 255 bytes, and a segment starting with
 * `.blobshift-` (reserved for temporary files).
 *
 * Keys are compared and ordered as UTF-8 bytes, the order S3 lists in.
 */
import { InvalidKeyError } from './errors.js';

export const MAX_KEY_BYTES = 1024;
export const MAX_SEGMENT_BYTES = 255;
/** Segments starting with this are reserved for blobshift's temporary files. */
export const RESERVED_PREFIX = '.blobshift-';

// C0 controls, DEL and C1 controls.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
// A high surrogate not followed by a low one, or a low one not preceded by a high one.
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Why `key` is invalid, or `undefined` when it is valid. */
export function keyProblem(key: unknown): string | undefined {
  if (typeof key !== 'string') return `a key must be a string, got ${key === null ? 'null' : typeof key}`;
  if (key.length === 0) return 'the key is empty';
  if (LONE_SURROGATE.test(key)) return 'the key is not valid UTF-8 (unpaired surrogate)';
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes > MAX_KEY_BYTES) return `the key is ${bytes} bytes long; the limit is ${MAX_KEY_BYTES}`;
  const control = CONTROL.exec(key);
  if (control) {
    const cp = control[0].codePointAt(0) ?? 0;
    return `the key holds a control character (U+${cp.toString(16).toUpperCase().padStart(4, '0')})`;
  }
  if (key.startsWith('/')) return 'the key starts with "/" (keys are relative)';
  const segments = key.split('/');
  for (const segment of segments) {
    if (segment === '') return 'the key has an empty segment ("//" or a trailing "/")';
    if (segment === '.' || segment === '..') return `the key has a "${segment}" segment`;
    const segmentBytes = Buffer.byteLength(segment, 'utf8');
    if (segmentBytes > MAX_SEGMENT_BYTES) {
      return `a segment is ${segmentBytes} bytes long; the limit is ${MAX_SEGMENT_BYTES}`;
    }
    if (segment.startsWith(RESERVED_PREFIX)) {
      return `a segment starts with "${RESERVED_PREFIX}", which is reserved for temporary files`;
    }
  }
  return undefined;
}

/** True when `key` follows the key rules. */
export function isValidKey(key: unknown): key is string {
  return keyProblem(key) === undefined;
}

/** Throws `InvalidKeyError` unless `key` follows the key rules; returns it otherwise. */
export function validateKey(key: unknown): string {
  const problem = keyProblem(key);
  if (problem !== undefined) throw new InvalidKeyError(typeof key === 'string' ? key : String(key), problem);
  return key as string;
}

/**
 * Validates a listing prefix: any prefix of a valid key is allowed (it may end
 * with `/` or stop mid-segment), the empty prefix included.
 */
export function validatePrefix(prefix: unknown): string {
  if (prefix === undefined || prefix === '') return '';
  if (typeof prefix !== 'string') throw new InvalidKeyError(String(prefix), 'a prefix must be a string');
  // A prefix is valid when appending one more character could make a valid key.
  const probe = prefix.endsWith('/') ? `${prefix}x` : prefix;
  const problem = keyProblem(probe);
  if (problem !== undefined) {
    // A prefix may stop mid-way into a segment: a trailing "." or ".." is fine there.
    const last = probe.split('/').pop();
    if (last === '.' || last === '..' || (last !== undefined && RESERVED_PREFIX.startsWith(last))) {
      if (keyProblem(`${probe}x`) === undefined) return prefix;
    }
    throw new InvalidKeyError(prefix, `not a valid prefix: ${problem}`);
  }
  return prefix;
}

/** Compares two keys as UTF-8 bytes (the order S3 lists in). */
export function compareKeys(a: string, b: string): number {
  if (a === b) return 0;
  // Fast path: code-unit order equals byte order while neither holds a surrogate.
  if (!/[\ud800-\udfff]/.test(a) && !/[\ud800-\udfff]/.test(b)) return a < b ? -1 : 1;
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}
