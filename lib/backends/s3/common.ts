/**
 * What the S3 backend's parts share: S3's limits, the shapes of object
 * headers and results, and `S3Context`, the view of one `S3BlobDB` the
 * put, multipart, copy, list and probe steps work through.
 */
import type { PutObjectCommandInput, S3Client } from '@aws-sdk/client-s3';
import type { BackendError } from '../../contract/errors.js';
import type { BlobInfo, CannedAcl, HttpMeta, PutOptions } from '../../contract/types.js';
import type { LeanObjectOutput, LeanS3 } from './lean.js';
import type { Sdk } from './sdk.js';

export const DEFAULT_PART_SIZE = 8 * 1024 * 1024;
export const DEFAULT_QUEUE_SIZE = 4;
export const DEFAULT_MULTIPART_THRESHOLD = 16 * 1024 * 1024;
/**
 * Streams of known size up to this are read whole (size checked) and sent as
 * one buffered PutObject: the request leaves in one piece, so a process killed
 * mid-put cannot leave a truncated object on servers that write a PUT straight
 * into place (s3rver), and a 409 conflict can be retried.
 */
export const SMALL_BODY_BYTES = 256 * 1024;
/** S3's most parts in one multipart upload. */
export const MAX_PARTS = 10_000;
export const MiB = 1024 * 1024;
/** S3's smallest part (all parts but the last). */
export const MIN_PART_SIZE = 5 * 1024 * 1024;
/** S3's largest single PutObject. */
export const MAX_PUT_OBJECT_BYTES = 5 * 1024 * 1024 * 1024;
/** S3's longest object key, prefix included. */
export const MAX_S3_KEY_BYTES = 1024;
/** S3's largest single CopyObject; above it, UploadPartCopy. */
export const MAX_COPY_OBJECT_BYTES = 5 * 1024 * 1024 * 1024;
/** Part size of a server-side multipart copy (S3 allows up to 5 GiB a part). */
export const COPY_PART_SIZE = 512 * 1024 * 1024;
/** DeleteObjects takes at most this many keys a request. */
export const DELETE_BATCH = 1000;
/** How often a put with `If-None-Match` is retried after a 409 ConditionalRequestConflict. */
export const CONFLICT_ATTEMPTS = 4;

/** The SDK and the client, ready for requests. */
export interface S3Io {
  readonly sdk: Sdk;
  readonly client: S3Client;
}

/** One `S3BlobDB` as its steps see it. */
export interface S3Context {
  readonly bucket: string;
  /** `''` or ending in `/`. */
  readonly prefix: string;
  readonly partSize: number;
  readonly queueSize: number;
  readonly acl: CannedAcl | undefined;
  /** The SDK and the client (both loaded on the first request). */
  io(): Promise<S3Io>;
  /** The lean request path, or undefined where requests go through the SDK. */
  lean(): Promise<LeanS3 | undefined>;
  /** `scheme://host[:port]` of the endpoint. */
  endpoint(): string;
  /** `bucket "b" at http://host:port`, for messages. */
  where(): string;
  /** The object key for `key`: validated, prefixed, within S3's limit (throws `InvalidKeyError`). */
  fullKey(key: string): string;
  /** An S3 failure as a `BackendError` naming the operation, the key and the bucket. */
  backendError(op: string, key: string | undefined, err: unknown): BackendError;
}

/** `bucket/key` for `x-amz-copy-source`: each segment percent-encoded, as S3 expects. */
export function copySource(bucket: string, key: string): string {
  return `${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
}

/** An ETag without its quotes; `undefined` when absent or empty (RGW completes multipart uploads with `""`). */
export function stripQuotes(etag: string | undefined): string | undefined {
  const bare = etag?.replace(/^"(.*)"$/, '$1');
  return bare === undefined || bare === '' ? undefined : bare;
}

/** The headers HeadObject and GetObject share (the SDK's output fields, or the lean path's). */
type ObjectHeaders = LeanObjectOutput;

function toHttpMeta(head: ObjectHeaders): HttpMeta | undefined {
  const meta: HttpMeta = {};
  if (head.ContentEncoding) meta.contentEncoding = head.ContentEncoding;
  if (head.CacheControl) meta.cacheControl = head.CacheControl;
  if (head.ContentDisposition) meta.contentDisposition = head.ContentDisposition;
  if (head.ContentLanguage) meta.contentLanguage = head.ContentLanguage;
  if (head.Metadata && Object.keys(head.Metadata).length > 0) meta.metadata = { ...head.Metadata };
  return Object.keys(meta).length > 0 ? meta : undefined;
}

/** A `BlobInfo` from an object's headers. */
export function objectInfo(key: string, head: ObjectHeaders, size: number): BlobInfo {
  const info: BlobInfo = { key, size };
  const etag = stripQuotes(head.ETag);
  if (etag !== undefined) info.etag = etag;
  if (head.ContentType) info.contentType = head.ContentType;
  if (head.LastModified) info.lastModified = head.LastModified;
  const meta = toHttpMeta(head);
  if (meta) info.httpMeta = meta;
  return info;
}

/** The PutObject fields of a put (and of the upload or copy standing in for it). */
export function putParams(
  ctx: S3Context,
  fullKey: string,
  opts: PutOptions,
  atomic: boolean,
): PutObjectCommandInput {
  const params: PutObjectCommandInput = { Bucket: ctx.bucket, Key: fullKey };
  if (opts.contentType !== undefined) params.ContentType = opts.contentType;
  const meta = opts.httpMeta;
  if (meta?.contentEncoding !== undefined) params.ContentEncoding = meta.contentEncoding;
  if (meta?.cacheControl !== undefined) params.CacheControl = meta.cacheControl;
  if (meta?.contentDisposition !== undefined) params.ContentDisposition = meta.contentDisposition;
  if (meta?.contentLanguage !== undefined) params.ContentLanguage = meta.contentLanguage;
  if (meta?.metadata !== undefined && Object.keys(meta.metadata).length > 0)
    params.Metadata = { ...meta.metadata };
  const acl = meta?.acl ?? ctx.acl;
  if (acl !== undefined) params.ACL = acl;
  if (atomic) params.IfNoneMatch = '*';
  return params;
}

/** What a put (or copy) resolves with: what was stored, as the caller described it. */
export function putResult(key: string, size: number, etag: string | undefined, opts: PutOptions): BlobInfo {
  const info: BlobInfo = { key, size };
  const tag = stripQuotes(etag);
  if (tag !== undefined) info.etag = tag;
  if (opts.contentType !== undefined) info.contentType = opts.contentType;
  const meta = opts.httpMeta;
  if (meta !== undefined) {
    const copy: HttpMeta = { ...meta };
    if (meta.metadata) copy.metadata = { ...meta.metadata };
    info.httpMeta = copy;
  }
  return info;
}
