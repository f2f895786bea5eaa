/**
 * `S3BlobDB`: blobs in an S3 bucket (AWS S3 or an S3-compatible server such
 * as Ceph RGW, MinIO or s3rver), optionally under a key prefix.
 *
 * - Puts: in-memory bodies and streams of a known `size` up to
 *   `multipartThreshold` go through one PutObject with `Content-Length`
 *   (small streams read whole first); a larger stream of known size through a
 *   multipart upload from `queueSize + 1` part buffers allocated once; a
 *   stream of unknown length through lib-storage `Upload`. A streamed byte
 *   count that differs from `size` fails the request before the object
 *   becomes visible (the PutObject is aborted short of its `Content-Length`;
 *   the multipart upload is aborted), and a multipart result is confirmed
 *   with a HEAD.
 * - `overwrite: false` sends `If-None-Match: *` where a probe (made once per
 *   endpoint and bucket) showed the server honours it; elsewhere it checks,
 *   then writes, and `capabilities.conditionalWrites` says false. Where
 *   PutObject honours it but CompleteMultipartUpload does not (Ceph RGW
 *   before Squid), a body of known size goes as one streamed PutObject.
 * - `copyFrom` copies server-side on one endpoint wherever that keeps
 *   no-overwrite as well as a put does, and streams elsewhere.
 * - `list` pages ListObjectsV2 (asking for the next page while the caller
 *   takes this one) and checks each page is in byte order and continues
 *   after the previous one: a misordered paged listing is an error (it would
 *   skip keys); one that fits a single page is sorted.
 * - Retries are the SDK's (`retryMode: 'adaptive'`); a consumed stream is
 *   never re-sent by hand (an in-memory body is re-sent after a 409
 *   ConditionalRequestConflict).
 */
import { createHash } from 'node:crypto';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { finished, pipeline, type Readable, Transform, type TransformCallback } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  type CompletedPart,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  type CopyObjectCommandInput,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectAclCommand,
  GetObjectCommand,
  HeadObjectCommand,
  type HeadObjectCommandOutput,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  PutObjectCommand,
  type PutObjectCommandInput,
  S3Client,
  type S3ClientConfig,
  UploadPartCommand,
  UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { ByteCounter, bodyBuffer, getWithInfo, isValidSize } from '../../contract/body.js';
import {
  BackendError,
  BlobExistsError,
  BlobNotFoundError,
  ConfigError,
  describeKey,
  errorMessage,
  InvalidFieldError,
  InvalidKeyError,
  SizeMismatchError,
} from '../../contract/errors.js';
import { compareKeys, RESERVED_PREFIX, validateKey, validatePrefix } from '../../contract/keys.js';
import { redactString, registerSecret } from '../../contract/redact.js';
import type {
  BlobBody,
  BlobDB,
  BlobInfo,
  BlobWithInfo,
  BulkDeleteResult,
  CannedAcl,
  Capabilities,
  CopyFromOptions,
  HttpMeta,
  ListOptions,
  PutOptions,
  SignedUrlOptions,
} from '../../contract/types.js';
import {
  describeS3Error,
  isConditionalConflict,
  isPreconditionFailed,
  isS3NotFoundError,
  refusesAcl,
  refusesHeader,
} from './errors.js';
import { type LeanObjectOutput, type LeanPutInput, LeanS3, leanPutFits } from './lean.js';

export { isS3NotFoundError } from './errors.js';

export const DEFAULT_MAX_SOCKETS = 64;
export const DEFAULT_CONNECTION_TIMEOUT_MS = 5_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 120_000;
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
const MAX_PARTS = 10_000;
/** `getSignedUrl`'s default lifetime: 15 minutes. */
export const DEFAULT_SIGNED_URL_SECONDS = 900;
/** The longest a SigV4 presigned URL may live: seven days. */
export const MAX_SIGNED_URL_SECONDS = 604_800;
const MiB = 1024 * 1024;
/** S3's smallest part (all parts but the last). */
const MIN_PART_SIZE = 5 * 1024 * 1024;
/** S3's largest single PutObject. */
const MAX_PUT_OBJECT_BYTES = 5 * 1024 * 1024 * 1024;
/** S3's longest object key, prefix included. */
const MAX_S3_KEY_BYTES = 1024;
/** S3's largest single CopyObject; above it, UploadPartCopy. */
const MAX_COPY_OBJECT_BYTES = 5 * 1024 * 1024 * 1024;
/** Part size of a server-side multipart copy (S3 allows up to 5 GiB a part). */
const COPY_PART_SIZE = 512 * 1024 * 1024;
/** DeleteObjects takes at most this many keys a request. */
const DELETE_BATCH = 1000;
/** How often a put with `If-None-Match` is retried after a 409 ConditionalRequestConflict. */
const CONFLICT_ATTEMPTS = 4;

/** The part of `S3ClientConfig` blobshift configures (see the config file's `s3` backend). */
export interface S3ClientConfigLike {
  /** e.g. `http://127.0.0.1:9000`; absent: AWS S3 for `region`. */
  endpoint?: string;
  /** Defaults to the SDK's chain (AWS_REGION…), or `us-east-1` when an endpoint is given. */
  region?: string;
  forcePathStyle?: boolean;
  /** Absent: the AWS default credential chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** `WHEN_REQUIRED` for servers that mishandle aws-chunked bodies (s3rver). */
  requestChecksumCalculation?: 'WHEN_SUPPORTED' | 'WHEN_REQUIRED';
  responseChecksumValidation?: 'WHEN_SUPPORTED' | 'WHEN_REQUIRED';
  /** Attempts per request, first included (SDK adaptive retry). Default 3. */
  maxAttempts?: number;
}

/** Client settings plus the HTTP handler's: what `createS3Client` takes. */
export interface S3ClientOptions extends S3ClientConfigLike {
  /** Concurrent sockets per endpoint (keep-alive agent). Default 64. */
  maxSockets?: number;
  /** Connection establishment timeout. Default 5000 ms. */
  connectionTimeoutMs?: number;
  /** Time from sending a request to its response headers, and the longest idle socket. Default 120000 ms. */
  requestTimeoutMs?: number;
}

export interface S3BlobDBOptions {
  bucket: string;
  /** Keys are stored under `prefix/` (a trailing `/` is added when missing). */
  prefix?: string;
  /** A ready client; the caller keeps ownership (`close()` leaves it alone). Excludes `clientConfig`. */
  client?: S3Client;
  /** Settings for a client this instance builds and owns. */
  clientConfig?: S3ClientConfigLike;
  /** Used only when this instance builds its client. */
  maxSockets?: number;
  connectionTimeoutMs?: number;
  requestTimeoutMs?: number;
  /** Multipart part size in bytes (at least 5 MiB). Default 8 MiB. */
  partSize?: number;
  /** Parts in flight per multipart upload. Default 4; memory per upload ≈ queueSize × partSize. */
  queueSize?: number;
  /**
   * Bodies of a known size up to this many bytes go through one PutObject;
   * larger ones and streams of unknown length through a multipart upload.
   * Default 16 MiB.
   */
  multipartThreshold?: number;
  /**
   * A canned ACL for every object this backend writes (PutObject, multipart
   * upload, server-side copy), e.g. `public-read` for media served straight
   * from the bucket. A put's `httpMeta.acl` takes precedence. Default none:
   * the bucket's default (private). A bucket with ACLs disabled (Object
   * Ownership "bucket owner enforced") refuses any ACL but
   * `bucket-owner-full-control`: grant public reads with a bucket policy there.
   */
  acl?: CannedAcl;
  /**
   * Default false. True: `stat` and `getWithInfo` also ask for the object's
   * ACL (GetObjectAcl, one more request per blob) and report a public one as
   * `httpMeta.acl` (`public-read`, `public-read-write`, `authenticated-read`),
   * so copies out of this backend carry it. Set it on the source of a
   * migration whose objects are individually public.
   */
  readAcl?: boolean;
  /**
   * How PutObject of in-memory bodies (up to 2 MiB), HeadObject, GetObject
   * and DeleteObject are sent. `'lean'` (the default for a client this
   * instance builds): signed by the client's own SigV4 signer and sent
   * through its HTTP handler without the SDK's middleware stack, with the
   * same endpoint, credentials, retries, clock-skew correction, region
   * redirects and errors (see `s3-lean.ts`). `'sdk'`: every request through
   * the SDK. A client passed in always goes through the SDK (its middleware
   * is the caller's).
   */
  requestPath?: 'lean' | 'sdk';
}

/** The canned ACLs S3 accepts in `x-amz-acl`. */
const CANNED_ACLS: readonly CannedAcl[] = [
  'private',
  'public-read',
  'public-read-write',
  'authenticated-read',
  'aws-exec-read',
  'bucket-owner-read',
  'bucket-owner-full-control',
];
const ALL_USERS = 'http://acs.amazonaws.com/groups/global/AllUsers';
const AUTHENTICATED_USERS = 'http://acs.amazonaws.com/groups/global/AuthenticatedUsers';

/** The canned ACL an object's grants amount to, where they open it beyond its owner; `undefined` for a private one. */
function cannedFromGrants(
  grants: readonly { Grantee?: { URI?: string | undefined } | undefined; Permission?: string | undefined }[],
): CannedAcl | undefined {
  const has = (uri: string, permission: string) =>
    grants.some(
      (g) => g.Grantee?.URI === uri && (g.Permission === permission || g.Permission === 'FULL_CONTROL'),
    );
  if (has(ALL_USERS, 'READ')) return has(ALL_USERS, 'WRITE') ? 'public-read-write' : 'public-read';
  if (has(AUTHENTICATED_USERS, 'READ')) return 'authenticated-read';
  return undefined;
}

/** `scheme://host[:port][/path]` of an endpoint, without user info or a trailing slash. */
function displayEndpoint(endpoint: string | URL): string {
  try {
    const url = new URL(String(endpoint));
    const path = url.pathname.replace(/\/+$/, '');
    return `${url.protocol}//${url.host}${path}`;
  } catch {
    return redactString(String(endpoint));
  }
}

/**
 * The SDK's logger. A logger given to the client receives every request's
 * outcome (`info`, and `error` for each 404 and 412, which are normal here)
 * and the warning that a failed streamed request cannot be retried;
 * blobshift maps and reports failures itself, so only other warnings pass,
 * redacted. `info` and `error` are left out on purpose: the SDK calls them as
 * `logger.info?.(…)`, so without them it skips building the filtered copy of
 * every request's input and output (measured: about a fifth of the client's
 * CPU time per small request).
 */
const sdkLogger = {
  trace: () => {},
  debug: () => {},
  warn: (...args: unknown[]) => {
    if (args.some((a) => typeof a === 'string' && a.includes('non-retryable streaming request'))) return;
    console.warn(...args.map((a) => (typeof a === 'string' ? redactString(a) : a)));
  },
} as unknown as NonNullable<S3ClientConfig['logger']>;

/**
 * An `S3Client` with a keep-alive agent limited to `maxSockets`, connection
 * and request timeouts, and adaptive retries. Registers the secret key with
 * the redactor so it never shows in output.
 */
export function createS3Client(config: S3ClientOptions = {}): S3Client {
  const maxSockets = config.maxSockets ?? DEFAULT_MAX_SOCKETS;
  const requestTimeout = config.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const agentOptions = { keepAlive: true, maxSockets };
  const requestHandler = new NodeHttpHandler({
    httpAgent: new HttpAgent(agentOptions),
    httpsAgent: new HttpsAgent(agentOptions),
    connectionTimeout: config.connectionTimeoutMs ?? DEFAULT_CONNECTION_TIMEOUT_MS,
    requestTimeout,
    throwOnRequestTimeout: true,
    socketTimeout: requestTimeout,
  });
  if (config.credentials) {
    registerSecret(config.credentials.secretAccessKey);
    registerSecret(config.credentials.sessionToken);
  }
  const clientConfig: S3ClientConfig = {
    requestHandler,
    retryMode: 'adaptive',
    maxAttempts: config.maxAttempts ?? 3,
    logger: sdkLogger,
    // A bucket in another region than configured: its 301 names the region; follow it.
    followRegionRedirects: true,
  };
  if (config.endpoint !== undefined) clientConfig.endpoint = config.endpoint;
  const region = config.region ?? (config.endpoint !== undefined ? 'us-east-1' : undefined);
  if (region !== undefined) clientConfig.region = region;
  if (config.forcePathStyle !== undefined) clientConfig.forcePathStyle = config.forcePathStyle;
  if (config.credentials) clientConfig.credentials = config.credentials;
  if (config.requestChecksumCalculation)
    clientConfig.requestChecksumCalculation = config.requestChecksumCalculation;
  if (config.responseChecksumValidation)
    clientConfig.responseChecksumValidation = config.responseChecksumValidation;
  const client = new S3Client(clientConfig);
  clientIdentities.set(client, {
    endpoint:
      config.endpoint !== undefined
        ? displayEndpoint(config.endpoint)
        : awsEndpoint(region ?? process.env.AWS_REGION),
    accessKeyId: config.credentials?.accessKeyId,
  });
  return client;
}

/**
 * Holds back the last chunk until the upstream has ended cleanly. A streamed
 * PutObject then never delivers its full `Content-Length` when the body turns
 * out to be longer than announced (the byte counter fails on the extra byte
 * while the last `size` bytes are still held here), so the server never
 * completes the object.
 */
class HoldLastChunk extends Transform {
  #held: Buffer | undefined;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const previous = this.#held;
    this.#held = chunk;
    cb(null, previous);
  }

  override _flush(cb: TransformCallback): void {
    const last = this.#held;
    this.#held = undefined;
    cb(null, last);
  }
}

const SKIP_CHECKSUM_HEADER = 'x-amz-checksum-blobshift-skip';

/**
 * Sends a streamed PutObject with a plain `Content-Length` body, as the
 * SDK's `WHEN_REQUIRED` mode does. Under `WHEN_SUPPORTED` the SDK would send
 * it aws-chunked with `Transfer-Encoding: chunked` and a trailing checksum,
 * which some S3 servers refuse (Ceph RGW Pacific: 411 MissingContentLength).
 * The SDK skips its checksum when a checksum header is already present, so a
 * placeholder header is set before that step and removed after it, before
 * signing. Buffers and multipart parts keep their checksums.
 */
function withoutStreamingChecksum(command: PutObjectCommand): void {
  const headersOf = (request: unknown): Record<string, string> | undefined => {
    const headers = (request as { headers?: unknown } | undefined)?.headers;
    return typeof headers === 'object' && headers !== null ? (headers as Record<string, string>) : undefined;
  };
  command.middlewareStack.add(
    (next) => async (args) => {
      const headers = headersOf(args.request);
      if (headers) headers[SKIP_CHECKSUM_HEADER] = '1';
      return next(args);
    },
    { step: 'build', priority: 'high', name: 'blobshiftStreamChecksumSkip' },
  );
  command.middlewareStack.add(
    (next) => async (args) => {
      const headers = headersOf(args.request);
      if (headers) {
        delete headers[SKIP_CHECKSUM_HEADER];
        delete headers['x-amz-sdk-checksum-algorithm'];
      }
      return next(args);
    },
    { step: 'build', priority: 'low', name: 'blobshiftStreamChecksumSkipEnd' },
  );
}

/** What a server's probe showed about `If-None-Match: *`. */
export interface ConditionalSupport {
  /** PutObject answers 412 when the key exists. */
  put: boolean;
  /** CompleteMultipartUpload answers 412 when the key exists (Ceph RGW before Squid does not). */
  multipartComplete: boolean;
  /** CopyObject answers 412 when the destination exists (Ceph RGW before Squid does not). */
  copy: boolean;
}

const NO_CONDITIONALS: ConditionalSupport = { put: false, multipartComplete: false, copy: false };

/**
 * `conditionalWrites` is true where PutObject honours `If-None-Match: *`.
 * Then every `overwrite: false` put of a known size is atomic: bodies over
 * the multipart threshold go as one streamed PutObject (up to 5 GiB) where
 * CompleteMultipartUpload is not conditional. Only a stream of unknown
 * length longer than one part, on such a server, is checked and then
 * written. `conditional.multipartComplete` and `conditional.copy` are false
 * until the first upload or copy that needs them has asked.
 */
export interface S3Capabilities extends Capabilities {
  readonly conditional: ConditionalSupport;
}

/**
 * A pass-through that MD5s the byte stream in `partSize` slices, as
 * lib-storage cuts it into parts, to recognise the multipart ETag S3 gives
 * the completed object (the MD5 of the parts' binary MD5s, `-N`).
 */
class PartTagger extends Transform {
  readonly #partSize: number;
  readonly #digests: Buffer[] = [];
  #hash = createHash('md5');
  #inPart = 0;

  constructor(partSize: number) {
    super();
    this.#partSize = partSize;
  }

  #update(chunk: Buffer): void {
    let offset = 0;
    while (offset < chunk.length) {
      const take = Math.min(this.#partSize - this.#inPart, chunk.length - offset);
      this.#hash.update(chunk.subarray(offset, offset + take));
      this.#inPart += take;
      offset += take;
      if (this.#inPart === this.#partSize) this.#endPart();
    }
  }

  #endPart(): void {
    this.#digests.push(this.#hash.digest());
    this.#hash = createHash('md5');
    this.#inPart = 0;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#update(chunk);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (this.#inPart > 0) this.#endPart();
    cb();
  }

  /** Hashes a whole in-memory body (no streaming). */
  hashBuffer(buf: Buffer): void {
    this.#update(buf);
    if (this.#inPart > 0) this.#endPart();
  }

  /** The multipart ETag of the first `parts` parts. */
  multipartTag(parts: number): string | undefined {
    if (parts < 1 || parts > this.#digests.length) return undefined;
    const md5 = createHash('md5');
    for (const d of this.#digests.slice(0, parts)) md5.update(d);
    return `${md5.digest('hex')}-${parts}`;
  }
}

/** Where a probe answer is cached: one probe per endpoint and bucket for the whole process. */
const probeCache = new Map<string, Promise<ConditionalSupport>>();
/** Whether CompleteMultipartUpload honours `If-None-Match: *`, per endpoint and bucket (probed when first needed). */
const multipartProbeCache = new Map<string, Promise<boolean>>();
/** Whether CopyObject honours `If-None-Match: *`, per endpoint and bucket (probed only for S3 → S3 copies). */
const copyProbeCache = new Map<string, Promise<boolean>>();

/** `bucket/key` for `x-amz-copy-source`: each segment percent-encoded, as S3 expects. */
function copySource(bucket: string, key: string): string {
  return `${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
}

/** What `createS3Client` knew about each client it built: where it points, and as whom. */
const clientIdentities = new WeakMap<S3Client, { endpoint: string; accessKeyId: string | undefined }>();

function awsEndpoint(region: string | undefined): string {
  return region ? `https://s3.${region}.amazonaws.com` : 'https://s3.amazonaws.com';
}

/** An ETag without its quotes; `undefined` when absent or empty (RGW completes multipart uploads with `""`). */
function stripQuotes(etag: string | undefined): string | undefined {
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
function objectInfo(key: string, head: ObjectHeaders, size: number): BlobInfo {
  const info: BlobInfo = { key, size };
  const etag = stripQuotes(head.ETag);
  if (etag !== undefined) info.etag = etag;
  if (head.ContentType) info.contentType = head.ContentType;
  if (head.LastModified) info.lastModified = head.LastModified;
  const meta = toHttpMeta(head);
  if (meta) info.httpMeta = meta;
  return info;
}

/** The first key of a page not strictly after the one before it (or after `last`, the previous page's end). */
function findMisorder(
  contents: readonly { Key?: string }[],
  last: string | undefined,
): { key: string; after: string } | undefined {
  let previous = last;
  for (const obj of contents) {
    const key = obj.Key ?? '';
    if (previous !== undefined && compareKeys(key, previous) <= 0) return { key, after: previous };
    previous = key;
  }
  return undefined;
}

function hasReservedSegment(key: string): boolean {
  return key.split('/').some((segment) => segment.startsWith(RESERVED_PREFIX));
}

export class S3BlobDB implements BlobDB {
  readonly #bucket: string;
  readonly #prefix: string;
  readonly #client: S3Client;
  readonly #ownsClient: boolean;
  readonly #partSize: number;
  readonly #queueSize: number;
  readonly #threshold: number;
  readonly #acl: CannedAcl | undefined;
  readonly #readAcl: boolean;
  #endpoint: string;
  #accessKeyId: string | undefined;
  #resolving: Promise<void> | undefined;
  #conditional: ConditionalSupport | undefined;
  #copyProbed = false;
  #multipartProbed = false;
  #closed = false;
  /** The lean request path: a promise until resolved, then the path or null (not usable here). */
  #lean: Promise<LeanS3 | undefined> | LeanS3 | null | undefined;
  readonly capabilities: S3Capabilities;

  constructor(options: S3BlobDBOptions) {
    if (typeof options?.bucket !== 'string' || options.bucket === '') {
      throw new ConfigError('bucket', 'an S3 backend needs a bucket name');
    }
    if (options.client && options.clientConfig) {
      throw new ConfigError('clientConfig', 'give either a ready client or clientConfig, not both');
    }
    this.#bucket = options.bucket;
    const rawPrefix = options.prefix ?? '';
    const prefix = rawPrefix === '' || rawPrefix.endsWith('/') ? rawPrefix : `${rawPrefix}/`;
    try {
      validatePrefix(prefix);
    } catch (err) {
      throw new ConfigError('prefix', `${JSON.stringify(rawPrefix)} is not a usable key prefix`, {
        cause: err,
      });
    }
    this.#prefix = prefix;
    this.#partSize = options.partSize ?? DEFAULT_PART_SIZE;
    if (!Number.isSafeInteger(this.#partSize) || this.#partSize < MIN_PART_SIZE) {
      throw new ConfigError('partSize', `must be at least ${MIN_PART_SIZE} bytes (S3's minimum part size)`);
    }
    this.#queueSize = options.queueSize ?? DEFAULT_QUEUE_SIZE;
    if (!Number.isSafeInteger(this.#queueSize) || this.#queueSize < 1) {
      throw new ConfigError('queueSize', 'must be a positive integer');
    }
    this.#threshold = options.multipartThreshold ?? DEFAULT_MULTIPART_THRESHOLD;
    if (!isValidSize(this.#threshold) || this.#threshold > MAX_PUT_OBJECT_BYTES) {
      throw new ConfigError('multipartThreshold', `must be between 0 and ${MAX_PUT_OBJECT_BYTES} bytes`);
    }
    if (options.acl !== undefined && !CANNED_ACLS.includes(options.acl)) {
      throw new ConfigError(
        'acl',
        `${JSON.stringify(options.acl)} is not a canned ACL (one of ${CANNED_ACLS.join(', ')})`,
      );
    }
    this.#acl = options.acl;
    this.#readAcl = options.readAcl === true;
    if (options.client) {
      this.#client = options.client;
      this.#ownsClient = false;
    } else {
      const config: S3ClientOptions = { ...options.clientConfig };
      if (options.maxSockets !== undefined) config.maxSockets = options.maxSockets;
      if (options.connectionTimeoutMs !== undefined) config.connectionTimeoutMs = options.connectionTimeoutMs;
      if (options.requestTimeoutMs !== undefined) config.requestTimeoutMs = options.requestTimeoutMs;
      this.#client = createS3Client(config);
      this.#ownsClient = true;
      if (options.requestPath === 'sdk') this.#lean = null;
    }
    if (!this.#ownsClient) this.#lean = null;
    const known = clientIdentities.get(this.#client);
    this.#endpoint = known?.endpoint ?? awsEndpoint(process.env.AWS_REGION);
    this.#accessKeyId = known?.accessKeyId;
    // A client built elsewhere names its endpoint through an async provider.
    if (!known) this.#resolving = this.#resolveEndpoint();

    const self = this;
    this.capabilities = {
      /** False until `probeCapabilities()` has shown the server honours `If-None-Match: *` on PutObject. */
      get conditionalWrites(): boolean {
        return self.#conditional?.put ?? false;
      },
      get conditional(): ConditionalSupport {
        return { ...(self.#conditional ?? NO_CONDITIONALS) };
      },
      serverSideCopyFrom: (other: BlobDB, opts?: { overwrite?: boolean }): boolean =>
        self.#sameServerAndIdentity(other) && (opts?.overwrite !== false || self.#copyGuard(0) !== undefined),
    };
  }

  /** The bucket name. */
  get bucket(): string {
    return this.#bucket;
  }

  /** The key prefix, `''` or ending in `/`. */
  get prefix(): string {
    return this.#prefix;
  }

  /** The endpoint as `scheme://host[:port]`, for messages and same-place checks. */
  get endpoint(): string {
    return this.#endpoint;
  }

  /** The S3 client in use (owned by this instance unless one was passed in). */
  get client(): S3Client {
    return this.#client;
  }

  /**
   * Resolves the endpoint and access key id the client really uses (a client
   * not built by `createS3Client` holds providers). Cached; `endpoint` and
   * `capabilities.serverSideCopyFrom` reflect it afterwards.
   */
  async resolveIdentity(): Promise<{ endpoint: string; accessKeyId: string | undefined }> {
    await this.#resolving;
    const config = this.#client.config as unknown as {
      credentials?: () => Promise<{ accessKeyId?: string }>;
    };
    if (this.#accessKeyId === undefined && typeof config.credentials === 'function') {
      try {
        const identity = await config.credentials();
        if (typeof identity.accessKeyId === 'string') this.#accessKeyId = identity.accessKeyId;
      } catch {
        // No credentials yet: requests will fail and say so.
      }
    }
    return { endpoint: this.#endpoint, accessKeyId: this.#accessKeyId };
  }

  async #resolveEndpoint(): Promise<void> {
    const config = this.#client.config as unknown as {
      endpoint?: () => Promise<{ protocol: string; hostname: string; port?: number; path?: string }>;
      region?: () => Promise<string>;
    };
    try {
      if (typeof config.endpoint === 'function') {
        const e = await config.endpoint();
        this.#endpoint = displayEndpoint(
          `${e.protocol}//${e.hostname}${e.port ? `:${e.port}` : ''}${e.path ?? ''}`,
        );
      } else if (typeof config.region === 'function') {
        this.#endpoint = awsEndpoint(await config.region());
      }
    } catch {
      // Keep the default; requests will fail and say why.
    }
  }

  #sameServerAndIdentity(other: BlobDB): boolean {
    if (!(other instanceof S3BlobDB)) return false;
    if (other.endpoint !== this.endpoint) return false;
    if (other.client === this.#client) return true;
    const mine = this.#accessKeyId;
    return mine !== undefined && mine === other.#accessKeyId;
  }

  /**
   * Finds out whether the server honours `If-None-Match: *` on PutObject:
   * puts a probe object under a reserved key twice with the header (the
   * second must answer 412), then deletes it. With `copyFrom` a backend on the
   * same server, and where PutObject is conditional, it also finds out whether
   * CopyObject is (`#probeConditionalCopy`). Whether CompleteMultipartUpload
   * is conditional is asked the first time a conditional upload would need it
   * (`#multipartSupport`). Each probe is made once per endpoint and bucket in
   * this process; `put(…, { overwrite: false })` and `copyFrom` await them.
   * The probe keys are fixed, so a probe a killed process left behind is
   * replaced by the next one.
   */
  async probeCapabilities(opts: { copyFrom?: BlobDB } = {}): Promise<S3Capabilities> {
    // Answered already (every put with overwrite: false asks): no await.
    if (this.#conditional !== undefined && (opts.copyFrom === undefined || this.#copyProbed))
      return this.capabilities;
    const { endpoint } = await this.resolveIdentity();
    const cacheKey = `${endpoint}\u0000${this.#bucket}`;
    if (this.#conditional === undefined) {
      let probe = probeCache.get(cacheKey);
      if (!probe) {
        probe = this.#runProbe();
        probeCache.set(cacheKey, probe);
        probe.catch(() => probeCache.delete(cacheKey));
      }
      this.#conditional = await probe;
    }
    const copyFrom = opts.copyFrom;
    if (copyFrom !== undefined && !this.#copyProbed && this.#sameServerAndIdentity(copyFrom)) {
      // Without conditional PutObject a copy checks then copies, as a put does: nothing to ask.
      if (this.#conditional.put) {
        let probe = copyProbeCache.get(cacheKey);
        if (!probe) {
          probe = this.#probeConditionalCopy();
          copyProbeCache.set(cacheKey, probe);
          probe.catch(() => copyProbeCache.delete(cacheKey));
        }
        this.#conditional = { ...this.#conditional, copy: await probe };
      }
      this.#copyProbed = true;
    }
    return this.capabilities;
  }

  async #runProbe(): Promise<ConditionalSupport> {
    // One fixed name: a probe object a killed process left behind makes the
    // first put answer 412 (which tells as much as the second would) and is
    // removed below (reserved keys are never listed, but they are garbage).
    const key = `${this.#prefix}${RESERVED_PREFIX}probe`;
    const body = Buffer.from('blobshift conditional-write probe\n');
    const params: PutObjectCommandInput = {
      Bucket: this.#bucket,
      Key: key,
      Body: body,
      ContentLength: body.length,
      IfNoneMatch: '*',
    };
    const where = `the conditional-write probe in bucket ${JSON.stringify(this.#bucket)} at ${this.#endpoint}`;
    try {
      let refused = false;
      try {
        await this.#client.send(new PutObjectCommand(params));
      } catch (err) {
        // A server that refuses the header outright has no conditional writes.
        if (refusesHeader(err)) return NO_CONDITIONALS;
        // Another process's probe is there this instant, and the header kept it.
        refused = isPreconditionFailed(err) || isConditionalConflict(err);
        if (!refused) {
          throw new BackendError(`${where} could not write its probe object: ${describeS3Error(err)}`, {
            cause: err,
          });
        }
      }
      if (!refused) {
        try {
          await this.#client.send(new PutObjectCommand(params));
          return NO_CONDITIONALS;
        } catch (err) {
          if (!isPreconditionFailed(err) && !isConditionalConflict(err)) {
            throw new BackendError(`${where} failed: ${describeS3Error(err)}`, { cause: err });
          }
        }
      }
      // CompleteMultipartUpload and CopyObject are asked about when first needed.
      return { put: true, multipartComplete: false, copy: false };
    } finally {
      await this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: key })).catch(() => {
        // A leftover probe object is reserved and never listed.
      });
    }
  }

  /**
   * Whether CompleteMultipartUpload honours `If-None-Match: *`, asked the
   * first time a conditional put or copy would go multipart (most runs never
   * do): puts a reserved probe object, completes a one-part upload onto it
   * with the header (412 → conditional), deletes it. Once per endpoint and
   * bucket in this process; false where PutObject is not conditional.
   */
  async #multipartSupport(): Promise<boolean> {
    const support = (await this.probeCapabilities()).conditional;
    if (!support.put) return false;
    if (this.#multipartProbed) return support.multipartComplete;
    const { endpoint } = await this.resolveIdentity();
    const cacheKey = `${endpoint}\u0000${this.#bucket}`;
    let probe = multipartProbeCache.get(cacheKey);
    if (!probe) {
      probe = this.#runMultipartProbe();
      multipartProbeCache.set(cacheKey, probe);
      probe.catch(() => multipartProbeCache.delete(cacheKey));
    }
    const multipartComplete = await probe;
    this.#conditional = { ...(this.#conditional ?? NO_CONDITIONALS), multipartComplete };
    this.#multipartProbed = true;
    return multipartComplete;
  }

  async #runMultipartProbe(): Promise<boolean> {
    const key = `${this.#prefix}${RESERVED_PREFIX}probe-multipart`;
    const body = Buffer.from('blobshift conditional-completion probe\n');
    const where = `the conditional-completion probe in bucket ${JSON.stringify(this.#bucket)} at ${this.#endpoint}`;
    try {
      try {
        await this.#client.send(
          new PutObjectCommand({ Bucket: this.#bucket, Key: key, Body: body, ContentLength: body.length }),
        );
      } catch (err) {
        throw new BackendError(`${where} could not write its probe object: ${describeS3Error(err)}`, {
          cause: err,
        });
      }
      return await this.#probeConditionalComplete(key, body, where);
    } finally {
      await this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: key })).catch(() => {});
    }
  }

  /** Completes a one-part upload onto the existing probe object with `If-None-Match: *`: 412 → conditional. */
  async #probeConditionalComplete(key: string, body: Buffer, where: string): Promise<boolean> {
    const checksums = (await this.#client.config.requestChecksumCalculation()) === 'WHEN_SUPPORTED';
    let uploadId: string | undefined;
    let completed = false;
    try {
      const created = await this.#client.send(
        new CreateMultipartUploadCommand({
          Bucket: this.#bucket,
          Key: key,
          ...(checksums ? { ChecksumAlgorithm: 'CRC32' as const } : {}),
        }),
      );
      uploadId = created.UploadId;
      const part = await this.#client.send(
        new UploadPartCommand({
          Bucket: this.#bucket,
          Key: key,
          UploadId: uploadId,
          PartNumber: 1,
          Body: body,
          ContentLength: body.length,
        }),
      );
      try {
        await this.#client.send(
          new CompleteMultipartUploadCommand({
            Bucket: this.#bucket,
            Key: key,
            UploadId: uploadId,
            IfNoneMatch: '*',
            MultipartUpload: {
              Parts: [
                {
                  PartNumber: 1,
                  ETag: part.ETag,
                  ...(part.ChecksumCRC32 ? { ChecksumCRC32: part.ChecksumCRC32 } : {}),
                },
              ],
            },
          }),
        );
        completed = true;
        return false;
      } catch (err) {
        if (isPreconditionFailed(err) || isConditionalConflict(err)) return true;
        if (refusesHeader(err)) return false;
        throw err;
      }
    } catch (err) {
      throw new BackendError(`${where} failed on its multipart step: ${describeS3Error(err)}`, {
        cause: err,
      });
    } finally {
      if (uploadId !== undefined && !completed) {
        await this.#client
          .send(new AbortMultipartUploadCommand({ Bucket: this.#bucket, Key: key, UploadId: uploadId }))
          .catch(() => {});
      }
    }
  }

  /**
   * What a preflight asks before a command writes anything: the bucket exists
   * and these credentials may list it, in one ListObjectsV2 of one key (a
   * server that builds whole pages, like s3rver, answers that fast too).
   */
  async preflight(_opts?: { write: boolean }): Promise<void> {
    this.#checkOpen();
    try {
      await this.#client.send(
        new ListObjectsV2Command({
          Bucket: this.#bucket,
          MaxKeys: 1,
          ...(this.#prefix !== '' ? { Prefix: this.#prefix } : {}),
        }),
      );
    } catch (err) {
      throw this.#backendError(`ListObjectsV2 (prefix ${JSON.stringify(this.#prefix)})`, undefined, err);
    }
  }

  /** The object key for `key`: validated, prefixed, and within S3's 1024 bytes. */
  #fullKey(key: string): string {
    const full = this.#prefix + validateKey(key);
    const bytes = Buffer.byteLength(full, 'utf8');
    if (bytes > MAX_S3_KEY_BYTES) {
      throw new InvalidKeyError(
        key,
        `under the prefix ${JSON.stringify(this.#prefix)} the S3 object key would be ${bytes} bytes; S3 allows ${MAX_S3_KEY_BYTES}`,
      );
    }
    return full;
  }

  #where(): string {
    return `bucket ${JSON.stringify(this.#bucket)} at ${this.#endpoint}`;
  }

  #backendError(op: string, key: string | undefined, err: unknown): BackendError {
    const what = key === undefined ? '' : ` of ${describeKey(key)}`;
    const hint = refusesAcl(err)
      ? ' (the bucket has ACLs disabled: drop the acl option, or the acl a source read with readAcl gives, and grant public reads with a bucket policy)'
      : '';
    return new BackendError(`S3 ${op}${what} failed in ${this.#where()}: ${describeS3Error(err)}${hint}`, {
      cause: err,
      ...(key === undefined ? {} : { key }),
    });
  }

  #checkOpen(): void {
    if (this.#closed) throw new BackendError(`this S3BlobDB (${this.#where()}) is closed`);
  }

  /** The lean request path, set up on first use; undefined where this client goes through the SDK. */
  #leanPath(): LeanS3 | undefined | Promise<LeanS3 | undefined> {
    const lean = this.#lean;
    if (lean === null) return undefined;
    if (lean instanceof LeanS3) return lean;
    if (lean !== undefined) return lean;
    const made = LeanS3.create(this.#client, this.#bucket).then(
      (path) => {
        this.#lean = path ?? null;
        return path;
      },
      () => {
        this.#lean = null;
        return undefined;
      },
    );
    this.#lean = made;
    return made;
  }

  /** Whether requests of this instance take the lean path (resolves it on first call). */
  async usesLeanPath(): Promise<boolean> {
    return (await this.#leanPath()) !== undefined;
  }

  async put(key: string, body: BlobBody, opts: PutOptions = {}): Promise<BlobInfo> {
    const stream = bodyBuffer(body) === undefined ? (body as Readable) : undefined;
    try {
      return await this.#put(key, body, opts);
    } catch (err) {
      // A put that fails owns nothing more: release the caller's stream (and its socket).
      if (stream && !stream.destroyed) stream.destroy();
      throw err;
    }
  }

  async #put(key: string, body: BlobBody, opts: PutOptions): Promise<BlobInfo> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    const expected = opts.size;
    if (expected !== undefined && !isValidSize(expected)) {
      throw new RangeError(
        `put ${describeKey(key)}: size must be a non-negative integer, got ${String(expected)}`,
      );
    }
    const buf = bodyBuffer(body);
    if (buf !== undefined && expected !== undefined && buf.length !== expected) {
      throw new SizeMismatchError(key, expected, buf.length);
    }
    const length = buf?.length ?? expected;
    // Where the body goes: one PutObject (streamed or not) or a multipart upload.
    let multipart = length === undefined || length > this.#threshold;
    let conditional = false;
    if (opts.overwrite === false) {
      const support = (await this.probeCapabilities()).conditional;
      conditional = support.put;
      if (multipart && conditional && !(await this.#multipartSupport())) {
        if (length !== undefined && length <= MAX_PUT_OBJECT_BYTES) {
          // This server ignores If-None-Match on CompleteMultipartUpload: a
          // body of known size goes as one conditional PutObject instead.
          multipart = false;
        } else {
          // Unknown length: a body that fits one part is still a conditional
          // PutObject inside the upload; a longer one is checked, then written.
          if (await this.exists(key)) throw new BlobExistsError(key);
        }
      }
      if (!conditional && (await this.exists(key))) throw new BlobExistsError(key);
    }
    const params = this.#putParams(fullKey, opts, conditional);
    if (buf !== undefined) {
      return multipart
        ? this.#putMultipart(key, params, buf, buf.length, opts)
        : this.#putBuffer(key, params, buf, opts);
    }
    const source = body as Readable;
    if (!multipart && length !== undefined && length <= SMALL_BODY_BYTES) {
      return this.#putBuffer(key, params, await readExactly(key, source, length), opts);
    }
    if (!multipart && length !== undefined) return this.#putStream(key, params, source, length, opts);
    if (length !== undefined) return this.#putParts(key, params, source, length, opts);
    return this.#putMultipart(key, params, source, expected, opts);
  }

  #putParams(fullKey: string, opts: PutOptions, atomic: boolean): PutObjectCommandInput {
    const params: PutObjectCommandInput = { Bucket: this.#bucket, Key: fullKey };
    if (opts.contentType !== undefined) params.ContentType = opts.contentType;
    const meta = opts.httpMeta;
    if (meta?.contentEncoding !== undefined) params.ContentEncoding = meta.contentEncoding;
    if (meta?.cacheControl !== undefined) params.CacheControl = meta.cacheControl;
    if (meta?.contentDisposition !== undefined) params.ContentDisposition = meta.contentDisposition;
    if (meta?.contentLanguage !== undefined) params.ContentLanguage = meta.contentLanguage;
    if (meta?.metadata !== undefined && Object.keys(meta.metadata).length > 0)
      params.Metadata = { ...meta.metadata };
    const acl = meta?.acl ?? this.#acl;
    if (acl !== undefined) params.ACL = acl;
    if (atomic) params.IfNoneMatch = '*';
    return params;
  }

  #putResult(key: string, size: number, etag: string | undefined, opts: PutOptions): BlobInfo {
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

  /** Maps a failed put: 412 → BlobExistsError; everything else → BackendError. */
  #putError(key: string, op: string, err: unknown, conditional: boolean): Error {
    if (conditional && isPreconditionFailed(err)) return new BlobExistsError(key, { cause: err });
    if (conditional && isConditionalConflict(err)) {
      return new BackendError(
        `S3 ${op} of ${describeKey(key)} in ${this.#where()} met a concurrent conditional write ` +
          `(409 ConditionalRequestConflict); the streamed body cannot be re-sent: retry the put`,
        { cause: err, key },
      );
    }
    return this.#backendError(op, key, err);
  }

  async #putBuffer(
    key: string,
    params: PutObjectCommandInput,
    buf: Buffer,
    opts: PutOptions,
  ): Promise<BlobInfo> {
    const conditional = params.IfNoneMatch !== undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        const lean = await this.#leanPath();
        const out =
          lean && leanPutFits(params, buf.length)
            ? await lean.put(params as LeanPutInput, buf)
            : await this.#client.send(
                new PutObjectCommand({ ...params, Body: buf, ContentLength: buf.length }),
              );
        return this.#putResult(key, buf.length, out.ETag, opts);
      } catch (err) {
        // An in-memory body can be re-sent: a 409 from a concurrent conditional write is retried.
        if (conditional && isConditionalConflict(err) && attempt < CONFLICT_ATTEMPTS) {
          await new Promise((r) => setTimeout(r, 25 * 2 ** attempt * (0.5 + Math.random())));
          continue;
        }
        throw this.#putError(key, 'PutObject', err, conditional);
      }
    }
  }

  /**
   * One PutObject with `Content-Length: size` and the body streamed through a
   * byte counter. On a mismatch or a failed source the request is aborted
   * before its last bytes leave, so the server never stores the object.
   */
  async #putStream(
    key: string,
    params: PutObjectCommandInput,
    source: Readable,
    size: number,
    opts: PutOptions,
  ): Promise<BlobInfo> {
    const counter = new ByteCounter(key, size);
    const hold = new HoldLastChunk();
    const abort = new AbortController();
    let streamError: unknown;
    pipeline(source, counter, hold, (err) => {
      if (err) {
        streamError ??= err;
        abort.abort();
      }
    });
    try {
      const command = new PutObjectCommand({ ...params, Body: hold, ContentLength: size });
      withoutStreamingChecksum(command);
      // No overall deadline for a streamed body (it moves at the source's pace);
      // the idle-socket timeout still ends a stalled request.
      const out = await this.#client.send(command, { abortSignal: abort.signal, requestTimeout: 0 });
      return this.#putResult(key, size, out.ETag, opts);
    } catch (err) {
      hold.destroy();
      if (streamError !== undefined) throw streamError;
      throw this.#putError(key, 'PutObject', err, params.IfNoneMatch !== undefined);
    }
  }

  /**
   * A multipart upload of a stream of known `size`, in bounded memory:
   * `queueSize + 1` part buffers, allocated once, are all it holds. The bytes
   * are copied from the stream straight into the part being filled (no
   * concatenation, no garbage per part), up to `queueSize` parts upload at
   * once, and the stream is not read while every buffer is in flight. The
   * upload completes only after the stream has ended with exactly `size`
   * bytes; a short, long or failed stream, or a failed part, aborts it. Parts
   * are Buffers, so the SDK retries a failed part by itself. Completion
   * carries `If-None-Match: *` when the put is conditional (412 →
   * BlobExistsError), and a HEAD then confirms the object is this upload's.
   * A blob too large for 10,000 parts of `partSize` gets larger parts.
   */
  async #putParts(
    key: string,
    params: PutObjectCommandInput,
    source: Readable,
    size: number,
    opts: PutOptions,
  ): Promise<BlobInfo> {
    const partSize = Math.max(this.#partSize, Math.ceil(size / MAX_PARTS / MiB) * MiB);
    const partCount = Math.max(1, Math.ceil(size / partSize));
    const conditional = params.IfNoneMatch !== undefined;
    const { IfNoneMatch: _condition, Body: _body, ContentLength: _length, ...createParams } = params;
    const checksums = (await this.#client.config.requestChecksumCalculation()) === 'WHEN_SUPPORTED';
    const tagger = new PartTagger(partSize);
    let uploadId: string | undefined;
    let completed = false;
    let completedTag: string | undefined;
    // What S3 answered wrong is mapped; the caller's stream failing, or a wrong size, is thrown as it is.
    const fromS3 = <T>(request: Promise<T>): Promise<T> =>
      request.catch((err: unknown) => {
        throw new S3Failure(err);
      });
    const inFlight = new Set<Promise<void>>();
    try {
      const created = await fromS3(
        this.#client.send(
          new CreateMultipartUploadCommand({
            ...createParams,
            ...(checksums ? { ChecksumAlgorithm: 'CRC32' as const } : {}),
          }),
        ),
      );
      uploadId = created.UploadId;
      if (uploadId === undefined) throw new Error('CreateMultipartUpload returned no UploadId');
      const parts: CompletedPart[] = [];
      const free: Buffer[] = [];
      let allocated = 0;
      const maxBuffers = Math.min(this.#queueSize, partCount) + 1;
      let partFailure: unknown;
      const takeBuffer = (): Buffer => {
        const reused = free.pop();
        if (reused) return reused;
        if (allocated >= maxBuffers) throw new Error('no free part buffer (internal error)');
        allocated++;
        return Buffer.allocUnsafeSlow(partSize);
      };
      const upload = (buffer: Buffer, length: number, partNumber: number): void => {
        const body = buffer.subarray(0, length);
        tagger.hashBuffer(body);
        const sent: Promise<void> = this.#client
          .send(
            new UploadPartCommand({
              Bucket: this.#bucket,
              Key: params.Key,
              UploadId: uploadId,
              PartNumber: partNumber,
              Body: body,
              ContentLength: length,
            }),
          )
          .then((out) => {
            if (!out.ETag) throw new Error(`UploadPart ${partNumber} returned no ETag`);
            parts[partNumber - 1] = {
              PartNumber: partNumber,
              ETag: out.ETag,
              ...(out.ChecksumCRC32 ? { ChecksumCRC32: out.ChecksumCRC32 } : {}),
            };
          })
          .catch((err: unknown) => {
            partFailure ??= err;
          })
          .finally(() => {
            inFlight.delete(sent);
            free.push(buffer);
          });
        inFlight.add(sent);
      };
      let current = takeBuffer();
      let filled = 0;
      let partNumber = 1;
      let total = 0;
      for await (const piece of source) {
        const chunk: Buffer = typeof piece === 'string' ? Buffer.from(piece) : piece;
        total += chunk.length;
        if (total > size) throw new SizeMismatchError(key, size, total);
        for (let offset = 0; offset < chunk.length; ) {
          const n = Math.min(partSize - filled, chunk.length - offset);
          chunk.copy(current, filled, offset, offset + n);
          filled += n;
          offset += n;
          if (filled === partSize) {
            upload(current, filled, partNumber++);
            filled = 0;
            while (inFlight.size >= this.#queueSize && partFailure === undefined)
              await Promise.race(inFlight);
            if (partFailure !== undefined) throw new S3Failure(partFailure);
            current = takeBuffer();
          }
        }
      }
      if (total !== size) throw new SizeMismatchError(key, size, total);
      if (filled > 0 || partNumber === 1) upload(current, filled, partNumber++);
      await Promise.all(inFlight);
      if (partFailure !== undefined) throw new S3Failure(partFailure);
      const out = await fromS3(
        this.#client.send(
          new CompleteMultipartUploadCommand({
            Bucket: this.#bucket,
            Key: params.Key,
            UploadId: uploadId,
            ...(conditional ? { IfNoneMatch: '*' } : {}),
            MultipartUpload: { Parts: parts },
          }),
        ),
      );
      completed = true;
      completedTag = stripQuotes(out.ETag);
    } catch (err) {
      if (!source.destroyed) source.destroy();
      if (err instanceof S3Failure) throw this.#putError(key, 'multipart upload', err.cause, conditional);
      throw err;
    } finally {
      // Parts still on their way settle first: the abort must not race them.
      await Promise.allSettled([...inFlight]);
      if (uploadId !== undefined && !completed) {
        await this.#client
          .send(
            new AbortMultipartUploadCommand({ Bucket: this.#bucket, Key: params.Key, UploadId: uploadId }),
          )
          .catch(() => {});
      }
    }
    return this.#confirmMultipart(key, params, size, partCount, tagger, completedTag, opts);
  }

  /**
   * A lib-storage Upload (one PutObject when the body fits one part). A byte
   * count that differs from `size` fails the body stream, which aborts the
   * upload; after a multipart completion a HEAD confirms the stored size
   * (older lib-storage versions completed short objects), and an object of
   * the wrong size is deleted unless a concurrent writer has replaced it.
   */
  async #putMultipart(
    key: string,
    params: PutObjectCommandInput,
    body: Readable | Buffer,
    size: number | undefined,
    opts: PutOptions,
  ): Promise<BlobInfo> {
    let streamError: unknown;
    let counter: ByteCounter | undefined;
    const tagger = new PartTagger(this.#partSize);
    let uploadBody: Readable | Buffer = body;
    if (Buffer.isBuffer(body)) {
      tagger.hashBuffer(body);
    } else {
      counter = new ByteCounter(key, size);
      pipeline(body, counter, tagger, (err) => {
        if (err) streamError ??= err;
      });
      uploadBody = tagger;
    }
    const conditional = params.IfNoneMatch !== undefined;
    // lib-storage spreads these params into PutObject (single part) and into
    // CompleteMultipartUpload, so `IfNoneMatch` reaches the completion request.
    const upload = new Upload({
      client: this.#client,
      params: { ...params, Body: uploadBody },
      partSize: this.#partSize,
      queueSize: this.#queueSize,
      leavePartsOnError: false,
    });
    let completed: { ETag?: string | undefined };
    try {
      completed = await upload.done();
    } catch (err) {
      tagger.destroy();
      if (streamError !== undefined) throw streamError;
      throw this.#putError(key, 'multipart upload', err, conditional);
    }
    const sent = counter ? counter.bytes : (size ?? 0);
    const parts = Math.max(1, Math.ceil(sent / this.#partSize));
    // A body that fits one part went as one PutObject with its exact length.
    if (parts === 1) return this.#putResult(key, sent, completed.ETag, opts);
    return this.#confirmMultipart(key, params, sent, parts, tagger, stripQuotes(completed.ETag), opts);
  }

  /**
   * HEAD after a multipart completion (older lib-storage versions completed
   * short objects). The object is recognised as this upload's by its ETag
   * (the MD5 of the parts' MD5s, or the completion's ETag): this upload's
   * object with fewer parts or another size is deleted and the put fails. An
   * object a concurrent writer put there since is left alone.
   */
  async #confirmMultipart(
    key: string,
    params: PutObjectCommandInput,
    sent: number,
    parts: number,
    tagger: PartTagger,
    completedTag: string | undefined,
    opts: PutOptions,
  ): Promise<BlobInfo> {
    let head: HeadObjectCommandOutput;
    try {
      head = await this.#client.send(new HeadObjectCommand({ Bucket: this.#bucket, Key: params.Key }));
    } catch (err) {
      throw this.#backendError('HeadObject after a multipart upload', key, err);
    }
    const stored = head.ContentLength ?? -1;
    const headTag = stripQuotes(head.ETag);
    const ours =
      headTag !== undefined && (headTag === completedTag || headTag === tagger.multipartTag(parts));
    let oursShort = false;
    for (let k = 1; k < parts && !ours && !oursShort; k++) oursShort = headTag === tagger.multipartTag(k);
    if (stored === sent && !oursShort) return this.#putResult(key, sent, headTag ?? completedTag, opts);
    if (ours || oursShort) {
      await this.#client
        .send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: params.Key }))
        .catch(() => {});
      throw new SizeMismatchError(key, sent, stored);
    }
    if (completedTag !== undefined && headTag !== undefined) {
      // The completion said another ETag: a concurrent writer replaced this upload's object.
      return this.#putResult(key, sent, completedTag, opts);
    }
    throw new BackendError(
      `after the multipart upload of ${describeKey(key)} in ${this.#where()} the object holds ${stored} bytes, ` +
        `not ${sent}, and its ETag is not this upload's: a concurrent writer replaced it, or the server stored it ` +
        'short. It was left in place; check the key and put again.',
      { key },
    );
  }

  /**
   * How `copyFrom` keeps `overwrite: false` for a copy of `size` bytes:
   * `atomic` where the server honours `If-None-Match: *` on the copy
   * (CopyObject, or CompleteMultipartUpload above 5 GiB); `check` (exists,
   * then copy) where it honours it nowhere, so a put would check then write
   * too and the copy is no less safe; `undefined` where only a put is atomic
   * (Ceph RGW before Squid): then the blob is streamed through `put`.
   * `undefined` too before `probeCapabilities({ copyFrom })` has run.
   */
  #copyGuard(size: number): 'atomic' | 'check' | undefined {
    const support = this.#conditional;
    if (support === undefined) return undefined;
    if (!support.put) return 'check';
    if (size > MAX_COPY_OBJECT_BYTES ? !this.#multipartProbed : !this.#copyProbed) return undefined;
    const atomic = size > MAX_COPY_OBJECT_BYTES ? support.multipartComplete : support.copy;
    return atomic ? 'atomic' : undefined;
  }

  /**
   * Copies `key` from `source` (an S3BlobDB on the same endpoint with the
   * same credentials: `capabilities.serverSideCopyFrom(source)`) without the
   * bytes passing through this process: CopyObject up to 5 GiB,
   * UploadPartCopy parts above. The source is pinned by its ETag
   * (`x-amz-copy-source-if-match`): `opts.sourceEtag` with `opts.size` (what
   * the caller's `stat` said), or a HEAD here that checks `size`.
   * `overwrite: false` is kept as `#copyGuard` says: with `If-None-Match: *`
   * where the probe showed the server honours it on copies, by a check then
   * the copy where the server has no conditional writes at all (as a put
   * does there), and otherwise, like any source this backend cannot copy
   * from, the blob is streamed through `put`, which keeps every rule of a put.
   * A server that answers "no such key" for a source that is there (s3rver
   * decodes some characters of `x-amz-copy-source` wrongly) gets the stream.
   */
  async copyFrom(source: BlobDB, key: string, opts: CopyFromOptions = {}): Promise<BlobInfo> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    if (!(source instanceof S3BlobDB) || !this.#sameServerAndIdentity(source))
      return this.#streamFrom(source, key, opts);
    const { sourceEtag, ...putOpts } = opts;
    const noOverwrite = putOpts.overwrite === false;
    if (noOverwrite) await this.probeCapabilities({ copyFrom: source });
    let size = putOpts.size;
    let etag = sourceEtag;
    if (size === undefined || etag === undefined) {
      const head = await source.#head(key);
      if (head === undefined) throw new BlobNotFoundError(key, { where: source.#where() });
      const actual = head.ContentLength ?? 0;
      if (size !== undefined && actual !== size) throw new SizeMismatchError(key, size, actual);
      size = actual;
      etag = stripQuotes(head.ETag);
    }
    if (noOverwrite && size > MAX_COPY_OBJECT_BYTES) await this.#multipartSupport();
    const guard = noOverwrite ? this.#copyGuard(size) : 'none';
    if (guard === undefined) return this.#streamFrom(source, key, putOpts);
    if (guard === 'check' && (await this.exists(key))) throw new BlobExistsError(key);
    const conditional = guard === 'atomic';
    try {
      if (size > MAX_COPY_OBJECT_BYTES)
        return await this.#copyMultipart(source, key, fullKey, size, etag, putOpts, conditional);
      return await this.#copyObject(source, key, fullKey, size, etag, putOpts, conditional);
    } catch (err) {
      if (err instanceof BlobNotFoundError && (await source.exists(key)))
        return this.#streamFrom(source, key, putOpts);
      throw err;
    }
  }

  /** One CopyObject, pinned to the source's ETag, with `If-None-Match: *` when `conditional`. */
  async #copyObject(
    source: S3BlobDB,
    key: string,
    fullKey: string,
    size: number,
    etag: string | undefined,
    opts: PutOptions,
    conditional: boolean,
  ): Promise<BlobInfo> {
    const params = this.#putParams(fullKey, opts, conditional);
    const input: CopyObjectCommandInput = {
      ...(params as CopyObjectCommandInput),
      CopySource: copySource(source.#bucket, source.#fullKey(key)),
      ...(etag ? { CopySourceIfMatch: `"${etag}"` } : {}),
      // What the caller says about the blob replaces the source's; else the source's stays.
      MetadataDirective: opts.contentType !== undefined || opts.httpMeta !== undefined ? 'REPLACE' : 'COPY',
    };
    try {
      const out = await this.#client.send(new CopyObjectCommand(input));
      return this.#putResult(key, size, out.CopyObjectResult?.ETag, opts);
    } catch (err) {
      throw await this.#copyError(source, key, err, conditional);
    }
  }

  /**
   * The fallback of `copyFrom`: the bytes stream through this process. As
   * with a server-side copy, the source's content type and HTTP metadata go
   * along unless the caller gives either.
   */
  async #streamFrom(source: BlobDB, key: string, opts: PutOptions): Promise<BlobInfo> {
    const { info, body } = await getWithInfo(source, key);
    const replace = opts.contentType !== undefined || opts.httpMeta !== undefined;
    const putOpts: PutOptions = { ...opts };
    if (!replace && info.contentType !== undefined) putOpts.contentType = info.contentType;
    if (!replace && info.httpMeta !== undefined) putOpts.httpMeta = info.httpMeta;
    return this.put(key, body, putOpts);
  }

  /** 412 from a conditional copy: the destination exists (BlobExistsError) or the source changed. */
  async #copyError(source: S3BlobDB, key: string, err: unknown, conditional: boolean): Promise<Error> {
    if (isS3NotFoundError(err)) return new BlobNotFoundError(key, { cause: err, where: source.#where() });
    if (isPreconditionFailed(err)) {
      if (conditional && (await this.exists(key))) return new BlobExistsError(key, { cause: err });
      return new BackendError(
        `S3 CopyObject of ${describeKey(key)} from ${source.#where()}: the source changed during the copy; copy it again`,
        { cause: err, key },
      );
    }
    return this.#backendError('CopyObject', key, err);
  }

  /** Above 5 GiB: a multipart upload of UploadPartCopy ranges, completed with `If-None-Match: *` when `conditional`. */
  async #copyMultipart(
    source: S3BlobDB,
    key: string,
    fullKey: string,
    size: number,
    etag: string | undefined,
    opts: PutOptions,
    conditional: boolean,
  ): Promise<BlobInfo> {
    const params = this.#putParams(fullKey, opts, false);
    let uploadId: string | undefined;
    let completed = false;
    try {
      const created = await this.#client.send(new CreateMultipartUploadCommand(params));
      uploadId = created.UploadId;
      const parts: { PartNumber: number; ETag: string | undefined }[] = [];
      const ranges: [number, number][] = [];
      for (let start = 0; start < size; start += COPY_PART_SIZE)
        ranges.push([start, Math.min(size, start + COPY_PART_SIZE) - 1]);
      let next = 0;
      let failed = false;
      const worker = async () => {
        for (;;) {
          // After a failure no new part starts; the ones in flight settle
          // before the abort below (a part landing after it would linger).
          if (failed) return;
          const i = next++;
          const range = ranges[i];
          if (range === undefined) return;
          const out = await this.#client.send(
            new UploadPartCopyCommand({
              Bucket: this.#bucket,
              Key: fullKey,
              UploadId: uploadId,
              PartNumber: i + 1,
              CopySource: copySource(source.#bucket, source.#fullKey(key)),
              CopySourceRange: `bytes=${range[0]}-${range[1]}`,
              ...(etag ? { CopySourceIfMatch: `"${etag}"` } : {}),
            }),
          );
          parts[i] = { PartNumber: i + 1, ETag: out.CopyPartResult?.ETag };
        }
      };
      const settled = await Promise.allSettled(
        Array.from({ length: Math.min(this.#queueSize, ranges.length) }, () =>
          worker().catch((err: unknown) => {
            failed = true;
            throw err;
          }),
        ),
      );
      const rejected = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (rejected) throw rejected.reason;
      const out = await this.#client.send(
        new CompleteMultipartUploadCommand({
          Bucket: this.#bucket,
          Key: fullKey,
          UploadId: uploadId,
          ...(conditional ? { IfNoneMatch: '*' } : {}),
          MultipartUpload: { Parts: parts },
        }),
      );
      completed = true;
      return this.#putResult(key, size, out.ETag, opts);
    } catch (err) {
      throw await this.#copyError(source, key, err, conditional);
    } finally {
      if (uploadId !== undefined && !completed) {
        await this.#client
          .send(new AbortMultipartUploadCommand({ Bucket: this.#bucket, Key: fullKey, UploadId: uploadId }))
          .catch(() => {});
      }
    }
  }

  /**
   * Whether CopyObject honours `If-None-Match: *`: puts a reserved probe
   * object and copies it twice to a second reserved key with the header (the
   * second must answer 412), then deletes both. Any doubt (another process's
   * probe in the way, an error) answers false: blobs are then streamed, which
   * is always safe.
   */
  async #probeConditionalCopy(): Promise<boolean> {
    const from = `${this.#prefix}${RESERVED_PREFIX}probe-copy-source`;
    const to = `${this.#prefix}${RESERVED_PREFIX}probe-copy`;
    const body = Buffer.from('blobshift conditional-copy probe\n');
    const copy = () =>
      this.#client.send(
        new CopyObjectCommand({
          Bucket: this.#bucket,
          Key: to,
          CopySource: copySource(this.#bucket, from),
          IfNoneMatch: '*',
        }),
      );
    try {
      await this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: to })).catch(() => {});
      await this.#client.send(
        new PutObjectCommand({ Bucket: this.#bucket, Key: from, Body: body, ContentLength: body.length }),
      );
      await copy();
      try {
        await copy();
        return false;
      } catch (err) {
        return isPreconditionFailed(err) || isConditionalConflict(err);
      }
    } catch {
      return false;
    } finally {
      await this.#client
        .send(
          new DeleteObjectsCommand({
            Bucket: this.#bucket,
            Delete: { Objects: [{ Key: from }, { Key: to }], Quiet: true },
          }),
        )
        .catch(() => {});
    }
  }

  async get(key: string): Promise<Readable> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    try {
      // GetObject resolves after the response headers: a missing key rejects here.
      const out = await this.#getObject(fullKey);
      if (out.Body === undefined) throw new Error('GetObject returned no body');
      return out.Body as Readable;
    } catch (err) {
      if (isS3NotFoundError(err)) throw new BlobNotFoundError(key, { cause: err, where: this.#where() });
      throw this.#backendError('GetObject', key, err);
    }
  }

  /** GetObject through the lean path where it serves GETs, else the SDK. */
  async #getObject(fullKey: string): Promise<LeanObjectOutput & { Body?: unknown }> {
    const lean = await this.#leanPath();
    if (lean?.getsLean) return lean.get(fullKey);
    return this.#client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: fullKey }));
  }

  async #head(key: string): Promise<LeanObjectOutput | undefined> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    try {
      const lean = await this.#leanPath();
      if (lean) return await lean.headIfPresent(fullKey);
      return await this.#client.send(new HeadObjectCommand({ Bucket: this.#bucket, Key: fullKey }));
    } catch (err) {
      if (isS3NotFoundError(err)) return undefined;
      throw this.#backendError('HeadObject', key, err);
    }
  }

  async stat(key: string): Promise<BlobInfo> {
    const head = await this.#head(key);
    if (head === undefined) throw new BlobNotFoundError(key, { where: this.#where() });
    return this.#withAcl(objectInfo(key, head, head.ContentLength ?? 0));
  }

  /** With `readAcl`: the object's ACL, as a canned one, into `info.httpMeta.acl`. */
  async #withAcl(info: BlobInfo): Promise<BlobInfo> {
    if (!this.#readAcl) return info;
    let grants: Parameters<typeof cannedFromGrants>[0];
    try {
      const out = await this.#client.send(
        new GetObjectAclCommand({ Bucket: this.#bucket, Key: this.#fullKey(info.key) }),
      );
      grants = out.Grants ?? [];
    } catch (err) {
      if (isS3NotFoundError(err)) throw new BlobNotFoundError(info.key, { cause: err, where: this.#where() });
      throw this.#backendError('GetObjectAcl', info.key, err);
    }
    const acl = cannedFromGrants(grants);
    if (acl !== undefined) info.httpMeta = { ...info.httpMeta, acl };
    return info;
  }

  /** One GetObject: the response headers are the info, its body the bytes. */
  async getWithInfo(key: string): Promise<BlobWithInfo> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    let out: LeanObjectOutput & { Body?: unknown };
    try {
      out = await this.#getObject(fullKey);
    } catch (err) {
      if (isS3NotFoundError(err)) throw new BlobNotFoundError(key, { cause: err, where: this.#where() });
      throw this.#backendError('GetObject', key, err);
    }
    const body = out.Body as Readable | undefined;
    if (body === undefined) {
      throw this.#backendError('GetObject', key, new Error('the answer has no body'));
    }
    if (out.ContentLength !== undefined) {
      if (!this.#readAcl) return { info: objectInfo(key, out, out.ContentLength), body };
      try {
        return { info: await this.#withAcl(objectInfo(key, out, out.ContentLength)), body };
      } catch (err) {
        body.destroy();
        throw err;
      }
    }
    // No Content-Length (a chunked answer through a proxy): the size comes
    // from a HEAD, which must describe the same version as the body.
    let info: BlobInfo;
    try {
      info = await this.stat(key);
    } catch (err) {
      body.destroy();
      throw err;
    }
    const etag = stripQuotes(out.ETag);
    if (etag !== undefined && info.etag !== undefined && info.etag !== etag) {
      body.destroy();
      throw this.#backendError(
        'GetObject',
        key,
        new Error(
          'the answer has no Content-Length, and a HEAD describes another version: the blob changed while being read; read it again',
        ),
      );
    }
    const result = objectInfo(key, out, info.size);
    // The HEAD's stat asked for the ACL already (with readAcl).
    if (info.httpMeta?.acl !== undefined) result.httpMeta = { ...result.httpMeta, acl: info.httpMeta.acl };
    return { info: result, body };
  }

  async exists(key: string): Promise<boolean> {
    return (await this.#head(key)) !== undefined;
  }

  /**
   * A presigned GetObject URL for `key`, valid `expiresIn` seconds (default
   * 900, at most 604800), signed locally with this client's credentials,
   * endpoint and addressing style: no request is made, so the blob's
   * existence is not checked (a URL for a missing key answers 404). The URL
   * carries the credentials' access key id, never the secret; with temporary
   * credentials it stops working when they expire, whatever `expiresIn` says.
   * `responseContentDisposition` / `responseContentType` make the server
   * answer with those headers. The presigner module loads on the first call.
   */
  async getSignedUrl(key: string, opts: SignedUrlOptions = {}): Promise<string> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    const expiresIn = opts.expiresIn ?? DEFAULT_SIGNED_URL_SECONDS;
    if (!Number.isSafeInteger(expiresIn) || expiresIn < 1 || expiresIn > MAX_SIGNED_URL_SECONDS) {
      throw new InvalidFieldError(
        'expiresIn',
        `getSignedUrl ${describeKey(key)}: expiresIn must be a whole number of seconds from 1 to ${MAX_SIGNED_URL_SECONDS} (seven days), got ${String(opts.expiresIn)}`,
        { key },
      );
    }
    const { getSignedUrl } = await import('@aws-sdk/s3-request-presigner');
    const command = new GetObjectCommand({
      Bucket: this.#bucket,
      Key: fullKey,
      ...(opts.responseContentDisposition !== undefined
        ? { ResponseContentDisposition: opts.responseContentDisposition }
        : {}),
      ...(opts.responseContentType !== undefined ? { ResponseContentType: opts.responseContentType } : {}),
    });
    try {
      return await getSignedUrl(this.#client, command, { expiresIn });
    } catch (err) {
      throw this.#backendError('presigning GetObject', key, err);
    }
  }

  async size(key: string): Promise<number> {
    return (await this.stat(key)).size;
  }

  async delete(key: string): Promise<boolean> {
    const fullKey = this.#fullKey(key);
    // S3's DeleteObject does not say whether anything was there: ask first.
    if (!(await this.exists(key))) return false;
    try {
      const lean = await this.#leanPath();
      if (lean) await lean.delete(fullKey);
      else await this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: fullKey }));
      return true;
    } catch (err) {
      if (isS3NotFoundError(err)) return false;
      throw this.#backendError('DeleteObject', key, err);
    }
  }

  async bulkDelete(keys: string[]): Promise<BulkDeleteResult> {
    this.#checkOpen();
    const errors: BulkDeleteResult['errors'] = [];
    const valid: string[] = [];
    const seen = new Set<string>();
    for (const key of keys) {
      try {
        this.#fullKey(key);
      } catch (err) {
        errors.push({
          key,
          error: err instanceof InvalidKeyError ? err : new InvalidKeyError(String(key), errorMessage(err)),
        });
        continue;
      }
      if (!seen.has(key)) {
        seen.add(key);
        valid.push(key);
      }
    }
    for (let i = 0; i < valid.length; i += DELETE_BATCH) {
      const batch = valid.slice(i, i + DELETE_BATCH);
      try {
        const out = await this.#client.send(
          new DeleteObjectsCommand({
            Bucket: this.#bucket,
            Delete: { Objects: batch.map((key) => ({ Key: this.#prefix + key })), Quiet: true },
          }),
        );
        for (const e of out.Errors ?? []) {
          if (e.Code === 'NoSuchKey') continue;
          const key = e.Key?.startsWith(this.#prefix) ? e.Key.slice(this.#prefix.length) : (e.Key ?? '');
          errors.push({
            key,
            error: new BackendError(
              `S3 DeleteObjects could not delete ${describeKey(key)} in ${this.#where()}: ${redactString(
                `${e.Code ?? 'error'}: ${e.Message ?? 'no message'}`,
              )}`,
              { key },
            ),
          });
        }
      } catch (err) {
        for (const key of batch) errors.push({ key, error: this.#backendError('DeleteObjects', key, err) });
      }
    }
    return { errors };
  }

  /**
   * Pages through ListObjectsV2, 1000 keys a page. The next page is asked for
   * as soon as a page arrives, before its keys are handed out, so the server
   * works on it while the caller handles this one (at most two pages held).
   */
  async *list(opts: ListOptions = {}): AsyncGenerator<BlobInfo> {
    const sub = validatePrefix(opts.prefix);
    this.#checkOpen();
    const listPrefix = this.#prefix + sub;
    let last: string | undefined;
    let startAfter: string | undefined;
    if (opts.startAfter !== undefined && opts.startAfter !== '') {
      startAfter = this.#prefix + opts.startAfter;
      last = startAfter;
    }
    const fetchPage = (page: number, token: string | undefined): Promise<ListObjectsV2CommandOutput> => {
      const request = this.#client
        .send(
          new ListObjectsV2Command({
            Bucket: this.#bucket,
            MaxKeys: 1000,
            ...(listPrefix !== '' ? { Prefix: listPrefix } : {}),
            ...(token !== undefined
              ? { ContinuationToken: token }
              : startAfter !== undefined
                ? { StartAfter: startAfter }
                : {}),
          }),
        )
        .catch((err: unknown) => {
          throw this.#backendError(
            `ListObjectsV2 (prefix ${JSON.stringify(listPrefix)}, page ${page})`,
            undefined,
            err,
          );
        });
      // A caller that stops early leaves the prefetched page unread: not an unhandled rejection.
      request.catch(() => {});
      return request;
    };
    let page = 1;
    let next: Promise<ListObjectsV2CommandOutput> | undefined = fetchPage(page, undefined);
    while (next !== undefined) {
      const out: ListObjectsV2CommandOutput = await next;
      const token = out.IsTruncated ? out.NextContinuationToken : undefined;
      if (out.IsTruncated && token === undefined) {
        throw new BackendError(
          `the S3 server at ${this.#endpoint} sent a truncated listing of bucket ${JSON.stringify(this.#bucket)} ` +
            'without a continuation token',
        );
      }
      next = token !== undefined ? fetchPage(page + 1, token) : undefined;
      let contents = out.Contents ?? [];
      const misorder = findMisorder(contents, last);
      if (misorder !== undefined) {
        if (page === 1 && !out.IsTruncated) {
          // The whole listing fits this one page: nothing can be skipped or
          // repeated, so a server that lists in another order is sorted here.
          contents = contents
            .filter((o) => startAfter === undefined || compareKeys(o.Key ?? '', startAfter) > 0)
            .sort((x, y) => compareKeys(x.Key ?? '', y.Key ?? ''));
        } else {
          throw new BackendError(
            `the S3 server at ${this.#endpoint} lists bucket ${JSON.stringify(this.#bucket)} out of S3 byte order: ` +
              `${describeKey(misorder.key)} came after ${describeKey(misorder.after)} (page ${page}). A paged ` +
              'listing in another order skips or repeats keys; use a server that lists in UTF-8 byte order, as S3 does.',
          );
        }
      }
      for (const obj of contents) {
        const full = obj.Key ?? '';
        last = full;
        if (!full.startsWith(listPrefix)) {
          throw new BackendError(
            `the S3 server at ${this.#endpoint} returned ${describeKey(full)} for prefix ${JSON.stringify(listPrefix)} ` +
              `in bucket ${JSON.stringify(this.#bucket)}`,
          );
        }
        const key = full.slice(this.#prefix.length);
        if (key === '' || hasReservedSegment(key)) continue;
        const info: BlobInfo = { key, size: obj.Size ?? 0 };
        const etag = stripQuotes(obj.ETag);
        if (etag !== undefined) info.etag = etag;
        if (obj.LastModified) info.lastModified = obj.LastModified;
        yield info;
      }
      page++;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ownsClient) this.#client.destroy();
  }
}

/** An S3 request's failure inside a multipart upload, told apart from the source stream's. */
class S3Failure extends Error {
  constructor(cause: unknown) {
    super('S3 request failed', { cause });
  }
}

/**
 * Reads a small stream whole into one buffer of `size` bytes, failing with
 * SizeMismatchError unless it holds exactly that many (the source is destroyed
 * on the first extra byte). No pipeline: at thousands of small blobs a second,
 * a pipeline's per-call AbortController and error objects are measurable.
 */
function readExactly(key: string, source: Readable, size: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const out = Buffer.allocUnsafe(size);
    let at = 0;
    let settled = false;
    const settle = (err: unknown) => {
      if (settled) return;
      settled = true;
      source.off('data', onData);
      stopWatching();
      if (err !== undefined) reject(err);
      else if (at !== size) reject(new SizeMismatchError(key, size, at));
      else resolve(out);
    };
    const onData = (chunk: Buffer | string) => {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      if (at + buf.length > size) {
        settle(new SizeMismatchError(key, size, at + buf.length));
        source.destroy();
        return;
      }
      buf.copy(out, at);
      at += buf.length;
    };
    const stopWatching = finished(source, (err) => settle(err ?? undefined));
    source.on('data', onData);
  });
}
