/**
 * How the engine reads an error: retry it (transient), give up on that blob
 * (permanent), or stop the run because the infrastructure is gone.
 * Backends wrap native errors as `cause`; these guards walk the chain.
 */
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
 * The pg driver's errors for a connection that is gone carry no code (the
 * next query on a connection the server ended, or one whose socket closed):
 * they are recognised by their message and given this one.
 */
const PG_CONNECTION_LOST = 'PG_CONNECTION_LOST';
const PG_LOST_MESSAGE =
  /\bConnection terminated( unexpectedly)?$|Client has encountered a connection error and is not queryable|Connection ended unexpectedly/;

/** The network or the server is not there: retried, and a run of them means the infrastructure is lost. */
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
  'PROTOCOL_CONNECTION_LOST',
  'ER_SERVER_SHUTDOWN',
  // PostgreSQL SQLSTATEs: connection exceptions (class 08); the server ended
  // the session (admin_shutdown: pg_terminate_backend, a failover;
  // crash_shutdown) or cannot take it yet (cannot_connect_now: starting up).
  '08000',
  '08001',
  '08003',
  '08004',
  '08006',
  '08007',
  '08P01',
  '57P01',
  '57P02',
  '57P03',
  PG_CONNECTION_LOST,
]);

const TRANSIENT_NAMES = new Set([
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'InternalError',
  'ServiceUnavailable',
  'ConditionalRequestConflict',
  'KnexTimeoutError',
]);

const AUTH_NAMES = new Set([
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'ExpiredToken',
  'InvalidToken',
  'TokenRefreshRequired',
  'CredentialsProviderError',
]);

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
    else if (cur instanceof Error && PG_LOST_MESSAGE.test(cur.message)) facts.errno ??= PG_CONNECTION_LOST;
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
  if (f.errno && CONNECTION_ERRNO.has(f.errno)) return true;
  if (f.name && TRANSIENT_NAMES.has(f.name)) return true;
  if (f.name && AUTH_NAMES.has(f.name)) return false;
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
  if (f.errno && CONNECTION_ERRNO.has(f.errno)) return true;
  if (f.name && AUTH_NAMES.has(f.name)) return true;
  if (f.name === 'TimeoutError' || f.name === 'KnexTimeoutError') return true;
  if (f.httpStatus !== undefined) return f.httpStatus >= 500 || f.httpStatus === 403;
  return false;
}

/** A short one-line description for logs and the missing-blob log. */
export function shortError(err: unknown): string {
  const msg = err instanceof Error ? err.message || err.name : String(err);
  const line = redactString(msg.split('\n')[0] ?? msg);
  return line.length > 300 ? `${line.slice(0, 300)}…` : line;
}
