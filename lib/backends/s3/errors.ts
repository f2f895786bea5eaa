/**
 * What S3's errors mean: not found, a refused condition, a conflict, a
 * header the server does not take, and a safe one-line description. Also
 * what the engine needs to know of them (throttling, credentials), told
 * through the contract when this module loads.
 */
import { type ErrorKnowledge, registerErrorKnowledge } from '../../contract/error-knowledge.js';
import { redactString } from '../../contract/redact.js';

/** What the engine reads from S3's error names (see `lib/engine/errors.ts`). */
export const S3_ERROR_KNOWLEDGE: ErrorKnowledge = {
  // Throttling, a busy or failing server, a request the server timed out,
  // and a concurrent conditional write: a retry may fare better.
  transientNames: [
    'RequestTimeout',
    'RequestTimeoutException',
    'SlowDown',
    'Throttling',
    'ThrottlingException',
    'InternalError',
    'ServiceUnavailable',
    'ConditionalRequestConflict',
  ],
  // Credentials refused: no retry helps, and no blob will fare better.
  authNames: [
    'InvalidAccessKeyId',
    'SignatureDoesNotMatch',
    'ExpiredToken',
    'InvalidToken',
    'TokenRefreshRequired',
    'CredentialsProviderError',
  ],
};

registerErrorKnowledge('s3', S3_ERROR_KNOWLEDGE);

/** An S3 error saying the bucket takes no ACLs. */
export function refusesAcl(err: unknown): boolean {
  const name = (err as { name?: unknown } | null)?.name;
  return name === 'AccessControlListNotSupported';
}

/**
 * True for an S3 "no such object": `NotFound` (HEAD), `NoSuchKey` (GET), or
 * any HTTP 404 but a missing bucket or multipart upload. A HEAD on a missing
 * bucket is a bare 404 too; preflight checks that buckets exist.
 */
export function isS3NotFoundError(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { name?: unknown; Code?: unknown; $metadata?: { httpStatusCode?: unknown } };
  const name = typeof e.Code === 'string' ? e.Code : e.name;
  if (name === 'NoSuchBucket' || name === 'NoSuchUpload') return false;
  if (name === 'NotFound' || name === 'NoSuchKey' || e.name === 'NoSuchKey') return true;
  return e.$metadata?.httpStatusCode === 404;
}

/** A 412 answer to a conditional write. */
export function isPreconditionFailed(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { name?: unknown; $metadata?: { httpStatusCode?: unknown } };
  return e.name === 'PreconditionFailed' || e.$metadata?.httpStatusCode === 412;
}

/** A 409 ConditionalRequestConflict: a concurrent conditional write; retry. */
export function isConditionalConflict(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { name?: unknown; $metadata?: { httpStatusCode?: unknown } };
  return (
    e.name === 'ConditionalRequestConflict' ||
    (e.$metadata?.httpStatusCode === 409 && e.name !== 'BucketAlreadyExists')
  );
}

/** A 400 or 501 answer to a request carrying `If-None-Match`: the server does not take the header. */
export function refusesHeader(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { name?: unknown; $metadata?: { httpStatusCode?: unknown } };
  const status = e.$metadata?.httpStatusCode;
  return e.name === 'NotImplemented' || status === 501 || (status === 400 && e.name !== 'InvalidPart');
}

/** An SDK error's name and message, safe to show. */
export function describeS3Error(err: unknown): string {
  if (typeof err !== 'object' || err === null) return redactString(String(err));
  const e = err as { name?: unknown; message?: unknown; $metadata?: { httpStatusCode?: unknown } };
  const status = typeof e.$metadata?.httpStatusCode === 'number' ? e.$metadata.httpStatusCode : undefined;
  const name = typeof e.name === 'string' && e.name !== 'Error' && e.name !== 'Unknown' ? e.name : undefined;
  // A HEAD answer has no body: the SDK can only say "UnknownError".
  const message =
    typeof e.message === 'string' && e.message !== '' && e.message !== 'UnknownError' ? e.message : '';
  const parts: string[] = [];
  if (name) parts.push(message ? `${name}: ${message}` : name);
  else if (message) parts.push(message);
  if (status !== undefined) {
    parts.push(
      status === 403 && !message
        ? '(HTTP 403: access denied; check the credentials and the bucket policy)'
        : `(HTTP ${status})`,
    );
  }
  return redactString(parts.length > 0 ? parts.join(' ') : 'unknown error');
}
