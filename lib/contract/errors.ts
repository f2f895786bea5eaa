/**
 * Typed errors. Callers match on `code` (stable) or `instanceof`, never on
 * message text. The original error, where there is one, rides along as
 * `cause`. Messages never hold secrets.
 */

export type ErrorCode =
  | 'E_BLOBSHIFT'
  | 'E_BLOB_NOT_FOUND'
  | 'E_BLOB_EXISTS'
  | 'E_INVALID_KEY'
  | 'E_SIZE_MISMATCH'
  | 'E_KEY_CONFLICT'
  | 'E_CONFIG'
  | 'E_LOG_FORMAT'
  | 'E_PREFLIGHT'
  | 'E_READ_ONLY'
  | 'E_BACKEND'
  | 'E_RUN_STATE'
  | 'E_INFRASTRUCTURE'
  | 'E_ABORTED'
  | 'E_INVALID_FIELD'
  | 'E_METADATA'
  | 'E_CONCURRENT_DELETE'
  | 'E_NOT_SUPPORTED';

export class BlobShiftError extends Error {
  readonly code: ErrorCode;

  constructor(message: string, options?: { cause?: unknown; code?: ErrorCode }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = options?.code ?? 'E_BLOBSHIFT';
  }
}

/** No blob under `key`. */
export class BlobNotFoundError extends BlobShiftError {
  readonly key: string;
  constructor(key: string, options?: { cause?: unknown; where?: string }) {
    super(`blob not found: ${JSON.stringify(key)}${options?.where ? ` in ${options.where}` : ''}`, {
      cause: options?.cause,
      code: 'E_BLOB_NOT_FOUND',
    });
    this.key = key;
  }
}

/** `put(…, { overwrite: false })` found a blob already under `key`. */
export class BlobExistsError extends BlobShiftError {
  readonly key: string;
  constructor(key: string, options?: { cause?: unknown }) {
    super(`blob already exists: ${JSON.stringify(key)} (put with overwrite: false)`, {
      cause: options?.cause,
      code: 'E_BLOB_EXISTS',
    });
    this.key = key;
  }
}

/** A key that breaks the key rules (see `keys.ts`). */
export class InvalidKeyError extends BlobShiftError {
  readonly key: string;
  readonly reason: string;
  constructor(key: string, reason: string) {
    super(`invalid key ${describeKey(key)}: ${reason}`, { code: 'E_INVALID_KEY' });
    this.key = key;
    this.reason = reason;
  }
}

/** A put's body had a different byte count than the `size` it was given. */
export class SizeMismatchError extends BlobShiftError {
  readonly key: string;
  readonly expected: number;
  readonly actual: number;
  constructor(key: string, expected: number, actual: number, options?: { cause?: unknown }) {
    super(
      `size mismatch for ${JSON.stringify(key)}: expected ${expected} bytes, the body had ${actual}${
        actual > expected ? ' or more' : ''
      }; nothing was stored`,
      { cause: options?.cause, code: 'E_SIZE_MISMATCH' },
    );
    this.key = key;
    this.expected = expected;
    this.actual = actual;
  }
}

/**
 * The filesystem backend cannot store both `a` and `a/b`: one would be a file
 * and a directory at once.
 */
export class KeyConflictError extends BlobShiftError {
  readonly key: string;
  readonly conflictsWith: string;
  constructor(key: string, conflictsWith: string, detail: string, options?: { cause?: unknown }) {
    super(`cannot store ${JSON.stringify(key)}: ${detail}`, {
      cause: options?.cause,
      code: 'E_KEY_CONFLICT',
    });
    this.key = key;
    this.conflictsWith = conflictsWith;
  }
}

/** A bad config file or option. `path` names the field (`new.bucket`). */
export class ConfigError extends BlobShiftError {
  readonly path: string;
  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super(path ? `config ${path}: ${message}` : `config: ${message}`, {
      cause: options?.cause,
      code: 'E_CONFIG',
    });
    this.path = path;
  }
}

/** A malformed line in a missing-blob log or other JSON-lines input. */
export class LogFormatError extends BlobShiftError {
  readonly file: string;
  readonly line: number;
  constructor(file: string, line: number, why: string, options?: { cause?: unknown }) {
    super(`${file}:${line}: ${why}`, { cause: options?.cause, code: 'E_LOG_FORMAT' });
    this.file = file;
    this.line = line;
  }
}

/** A backend, bucket or database is unreachable or refuses, found before anything was written. */
export class PreflightError extends BlobShiftError {
  readonly target: string;
  constructor(target: string, message: string, options?: { cause?: unknown }) {
    super(`preflight failed for ${target}: ${message}`, { cause: options?.cause, code: 'E_PREFLIGHT' });
    this.target = target;
  }
}

/**
 * Old and new are one place under two names (the same bucket through two
 * endpoint spellings, a root and a symlink or bind mount of it): found by the
 * config, or proven by a write probe. Deleting "old" copies would delete the
 * only ones.
 */
export class SameLocationError extends PreflightError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('old and new', message, options);
  }
}

/** A write to something mapped read-only (an app's own metadata table). */
export class ReadOnlyError extends BlobShiftError {
  constructor(message: string) {
    super(message, { code: 'E_READ_ONLY' });
  }
}

/** A backend failed for a reason other than not-found / exists. */
export class BackendError extends BlobShiftError {
  readonly key: string | undefined;
  constructor(message: string, options?: { cause?: unknown; key?: string }) {
    super(message, { cause: options?.cause, code: 'E_BACKEND' });
    this.key = options?.key;
  }
}

/**
 * A backend or the metadata database stopped answering mid-run (connections
 * refused, timeouts, 5xx, credentials refused), after the retries: the CLI
 * exits 3, and a rerun picks up where this one stopped.
 */
export class InfrastructureError extends BlobShiftError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, { cause: options?.cause, code: 'E_INFRASTRUCTURE' });
  }
}

/** A run's saved state refuses the requested action (changed options, bad state). */
export class RunStateError extends BlobShiftError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, { cause: options?.cause, code: 'E_RUN_STATE' });
  }
}

/** An operation was stopped through its AbortSignal. */
export class AbortedError extends BlobShiftError {
  constructor(message = 'aborted', options?: { cause?: unknown }) {
    super(message, { cause: options?.cause, code: 'E_ABORTED' });
  }
}

/**
 * A field given to `BlobStore.put` that its metadata row cannot hold (too
 * long for its column, not a string, an invalid date…). Raised before any
 * byte is written. `field` is the option's name (`contentType`, `parentId`…).
 */
export class InvalidFieldError extends BlobShiftError {
  readonly field: string;
  readonly key: string | undefined;
  constructor(field: string, message: string, options?: { key?: string }) {
    super(message, { code: 'E_INVALID_FIELD' });
    this.field = field;
    this.key = options?.key;
  }
}

/**
 * The metadata database failed a row read or write. The message names the
 * table, the key and, where the database said which, the field; it never
 * holds SQL text or row values (the driver's error is `cause`).
 */
export class MetadataError extends BlobShiftError {
  readonly key: string | undefined;
  readonly field: string | undefined;
  constructor(message: string, options?: { cause?: unknown; key?: string; field?: string }) {
    super(message, { cause: options?.cause, code: 'E_METADATA' });
    this.key = options?.key;
    this.field = options?.field;
  }
}

/**
 * `BlobStore.put` lost to a `delete` of the same key that ran at the same
 * time: the delete removed the blob after it was written, so the put took its
 * row back. Nothing is stored under `key` (the put counts as done before the
 * delete). Put again if the blob should exist.
 */
export class ConcurrentDeleteError extends BlobShiftError {
  readonly key: string;
  constructor(key: string) {
    super(
      `put of ${describeKey(key)} lost to a concurrent delete of the same key: the blob was deleted ` +
        'before its metadata row was written, so nothing is stored; put it again if it should exist',
      { code: 'E_CONCURRENT_DELETE' },
    );
    this.key = key;
  }
}

/** The backend cannot do this (a presigned URL on the filesystem); the message says what to do instead. */
export class NotSupportedError extends BlobShiftError {
  readonly operation: string;
  constructor(operation: string, message: string) {
    super(message, { code: 'E_NOT_SUPPORTED' });
    this.operation = operation;
  }
}

export function isBlobShiftError(err: unknown): err is BlobShiftError {
  return err instanceof BlobShiftError;
}

export function isBlobNotFound(err: unknown): err is BlobNotFoundError {
  return err instanceof BlobNotFoundError;
}

export function isBlobExists(err: unknown): err is BlobExistsError {
  return err instanceof BlobExistsError;
}

/** A Node.js system error with a `code` such as `ENOENT`. */
export function isErrnoException(err: unknown, code?: string): err is NodeJS.ErrnoException {
  if (!(err instanceof Error) || typeof (err as NodeJS.ErrnoException).code !== 'string') return false;
  return code === undefined || (err as NodeJS.ErrnoException).code === code;
}

/** A short, printable form of a possibly hostile key for messages. */
export function describeKey(key: unknown): string {
  if (typeof key !== 'string') return `(${typeof key})`;
  const shown = key.length > 80 ? `${key.slice(0, 80)}…(${key.length} chars)` : key;
  return JSON.stringify(shown);
}

/** The message of anything thrown, for logs and summaries. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}
