/**
 * How the engine reads an error: retry it (transient), give up on that blob
 * (permanent), or stop the run because the infrastructure is gone.
 * Backends wrap native errors as `cause`; these guards walk the chain. The
 * names and codes of a driver (S3's throttling and credential errors, the
 * database drivers' lost connections) are the knowledge of the layer that
 * owns the driver, registered through `lib/contract/error-knowledge.ts`.
 */
import { codeFromError, knownErrors } from '../contract/error-knowledge.js';
import { isBlobShiftError } from '../contract/errors.js';
import { redactString } from '../contract/redact.js';

const PERMANENT_CODES = new Set([
  'E_INVALID_KEY',
  'E_KEY_CONFLICT',
  'E_SIZE_MISMATCH',
  'E_READ_ONLY',
  'E_CONFIG',
  'E_BLOB_EXISTS',
  'E_BLOB_NOT_FOUND',
  'E_ABORTED',
]);

/**
 * A filesystem that takes no more writes: no blob after this one will fare
 * better, and retrying each blob only delays the stop. Not retried; a run
 * of them stops the run as infrastructure lost (exit 3, checkpoint saved),
 * and a rerun resumes once space is freed or the mount is writable again.
 */
const FULL_ERRNO = new Set(['ENOSPC', 'EDQUOT', 'EROFS']);

/** Local conditions a retry will not fix: the blob fails, the run goes on. */
const PERMANENT_ERRNO = new Set(['EACCES', 'EPERM', 'ENOTDIR', 'EISDIR', 'ENAMETOOLONG', 'ELOOP', 'EINVAL']);

/**
 * The network is not there: retried, and a run of them means the
 * infrastructure is lost. Drivers add their own codes (MySQL's, PostgreSQL's
 * SQLSTATEs) through `registerErrorKnowledge`.
 */
const CONNECTION_ERRNO = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EAI_AGAIN',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ECONNABORTED',
  'EHOSTDOWN',
]);

/**
 * A timeout (`AbortSignal.timeout`, an HTTP handler's socket timeout):
 * retried, and a run of them means the infrastructure is lost. Drivers add
 * their own timeout names.
 */
const TIMEOUT_NAMES = new Set(['TimeoutError']);

const known = knownErrors();

function isConnectionCode(errno: string): boolean {
  return CONNECTION_ERRNO.has(errno) || known.connectionCodes.has(errno);
}

function isTimeoutName(name: string): boolean {
  return TIMEOUT_NAMES.has(name) || known.timeoutNames.has(name);
}

export interface ErrorFacts {
  errno?: string;
  httpStatus?: number;
  name?: string;
  code?: string;
}

/** The interesting fields of an error and its `cause` chain (first found wins). */
export function errorFacts(err: unknown): ErrorFacts {
  const facts: ErrorFacts = {};
  let cur: unknown = err;
  for (let depth = 0; depth < 8 && cur !== null && typeof cur === 'object'; depth++) {
    const e = cur as {
      code?: unknown;
      name?: unknown;
      $metadata?: { httpStatusCode?: unknown };
      cause?: unknown;
    };
    if (isBlobShiftError(cur)) facts.code ??= cur.code;
    else if (typeof e.code === 'string') facts.errno ??= e.code;
    else if (cur instanceof Error) facts.errno ??= codeFromError(cur);
    if (typeof e.name === 'string' && e.name !== 'Error' && !isBlobShiftError(cur)) facts.name ??= e.name;
    const status = e.$metadata?.httpStatusCode;
    if (typeof status === 'number') facts.httpStatus ??= status;
    cur = e.cause;
  }
  return facts;
}

/** Whether retrying the whole blob might help. */
export function isTransientError(err: unknown): boolean {
  const f = errorFacts(err);
  if (f.code && PERMANENT_CODES.has(f.code)) return false;
  if (f.errno && (PERMANENT_ERRNO.has(f.errno) || FULL_ERRNO.has(f.errno))) return false;
  if (f.errno && isConnectionCode(f.errno)) return true;
  if (f.name && (isTimeoutName(f.name) || known.transientNames.has(f.name))) return true;
  if (f.name && known.authNames.has(f.name)) return false;
  if (f.httpStatus !== undefined) return f.httpStatus >= 500 || f.httpStatus === 429 || f.httpStatus === 408;
  // Unknown failures (a stream cut short, a parse error of a truncated response): retry.
  return true;
}

/**
 * Whether the error says the backend or database as a whole is unreachable or
 * refuses us (a run of these stops the run with exit 3), as opposed to a
 * problem with one blob.
 */
export function isInfrastructureError(err: unknown): boolean {
  const f = errorFacts(err);
  if (f.code === 'E_INFRASTRUCTURE') return true;
  if (f.errno && FULL_ERRNO.has(f.errno)) return true;
  if (f.code && PERMANENT_CODES.has(f.code)) return false;
  if (f.errno && isConnectionCode(f.errno)) return true;
  if (f.name && known.authNames.has(f.name)) return true;
  if (f.name && isTimeoutName(f.name)) return true;
  if (f.httpStatus !== undefined) return f.httpStatus >= 500 || f.httpStatus === 403;
  return false;
}

/** A short one-line description for logs and the missing-blob log. */
export function shortError(err: unknown): string {
  const msg = err instanceof Error ? err.message || err.name : String(err);
  const line = redactString(msg.split('\n')[0] ?? msg);
  return line.length > 300 ? `${line.slice(0, 300)}…` : line;
}
