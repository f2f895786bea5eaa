/**
 * `S3BlobDB`: blobs in an S3 bucket (AWS S3 or an S3-compatible server such
 * as Ceph RGW, MinIO or s3rver), optionally under a key prefix.
 *
 * - Puts: in-memory bodies and streams of a known `size` up to
 *   `multipartThreshold` go through one PutObject with `Content-Length`;
 *   anything else through lib-storage `Upload` (memory bounded by
 *   `queueSize × partSize`). A streamed byte count that differs from `size`
 *   fails the request before the object becomes visible (the PutObject is
 *   aborted short of its `Content-Length`; the multipart upload is aborted),
 *   and a multipart result is confirmed with a HEAD.
 * - `overwrite: false` sends `If-None-Match: *` where a probe (made once per
 *   endpoint and bucket) showed the server honours it; elsewhere it checks,
 *   then writes, and `capabilities.conditionalWrites` says false.
 * - Retries are the SDK's (`retryMode: 'adaptive'`); a consumed stream is
 *   never re-sent by hand.
 */
import { randomBytes } from 'node:crypto';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { pipeline, type Readable, Transform, type TransformCallback } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
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
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { ByteCounter, bodyBuffer, isValidSize } from '../body.js';
import {
  BackendError,
  BlobExistsError,
  BlobNotFoundError,
  ConfigError,
  describeKey,
  errorMessage,
  InvalidKeyError,
  SizeMismatchError,
} from '../errors.js';
import { compareKeys, RESERVED_PREFIX, validateKey, validatePrefix } from '../keys.js';
import { redactString, registerSecret } from '../redact.js';
import type {
  BlobBody,
  BlobDB,
  BlobInfo,
  BulkDeleteResult,
  Capabilities,
  HttpMeta,
  ListOptions,
  PutOptions,
} from '../types.js';

export const DEFAULT_MAX_SOCKETS = 64;
export const DEFAULT_CONNECTION_TIMEOUT_MS = 5_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 120_000;
export const DEFAULT_PART_SIZE = 8 * 1024 * 1024;
export const DEFAULT_QUEUE_SIZE = 4;
export const DEFAULT_MULTIPART_THRESHOLD = 16 * 1024 * 1024;
/** S3's smallest part (all parts but the last). */
const MIN_PART_SIZE = 5 * 1024 * 1024;
/** S3's largest single PutObject. */
const MAX_PUT_OBJECT_BYTES = 5 * 1024 * 1024 * 1024;
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
function isPreconditionFailed(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { name?: unknown; $metadata?: { httpStatusCode?: unknown } };
  return e.name === 'PreconditionFailed' || e.$metadata?.httpStatusCode === 412;
}

/** A 409 ConditionalRequestConflict: a concurrent conditional write; retry. */
function isConditionalConflict(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { name?: unknown; $metadata?: { httpStatusCode?: unknown } };
  return (
    e.name === 'ConditionalRequestConflict' ||
    (e.$metadata?.httpStatusCode === 409 && e.name !== 'BucketAlreadyExists')
  );
}

/** An SDK error's name and message, safe to show. */
function describeS3Error(err: unknown): string {
  if (typeof err === 'object' && err !== null) {
    const e = err as { name?: unknown; message?: unknown; $metadata?: { httpStatusCode?: unknown } };
    const status =
      typeof e.$metadata?.httpStatusCode === 'number' ? ` (HTTP ${e.$metadata.httpStatusCode})` : '';
    const name = typeof e.name === 'string' && e.name !== 'Error' ? `${e.name}: ` : '';
    const message = typeof e.message === 'string' && e.message !== '' ? e.message : 'no message';
    return redactString(`${name}${message}${status}`);
  }
  return redactString(String(err));
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
 * redacted.
 */
const sdkLogger = {
  trace: () => {},
  debug: () => {},
  info: () => {},
  warn: (...args: unknown[]) => {
    if (args.some((a) => typeof a === 'string' && a.includes('non-retryable streaming request'))) return;
    console.warn(...args.map((a) => (typeof a === 'string' ? redactString(a) : a)));
  },
  error: () => {},
};

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
  return new S3Client(clientConfig);
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
}

/**
 * `conditionalWrites` is true where PutObject honours `If-None-Match: *`.
 * Then every `overwrite: false` put of a known size is atomic: bodies over
 * the multipart threshold go as one streamed PutObject (up to 5 GiB) where
 * CompleteMultipartUpload is not conditional. Only a stream of unknown
 * length longer than one part, on such a server, is checked and then
 * written.
 */
export interface S3Capabilities extends Capabilities {
  readonly conditional: ConditionalSupport;
}

/** Where a probe answer is cached: one probe per endpoint and bucket for the whole process. */
const probeCache = new Map<string, Promise<ConditionalSupport>>();

/** The parts of `S3Client.initConfig` read to name the endpoint and key id without a request. */
interface InitConfigView {
  endpoint?: unknown;
  region?: unknown;
  credentials?: unknown;
}

function stripQuotes(etag: string | undefined): string | undefined {
  if (etag === undefined || etag === '') return undefined;
  return etag.replace(/^"(.*)"$/, '$1');
}

function toHttpMeta(head: HeadObjectCommandOutput): HttpMeta | undefined {
  const meta: HttpMeta = {};
  if (head.ContentEncoding) meta.contentEncoding = head.ContentEncoding;
  if (head.CacheControl) meta.cacheControl = head.CacheControl;
  if (head.ContentDisposition) meta.contentDisposition = head.ContentDisposition;
  if (head.ContentLanguage) meta.contentLanguage = head.ContentLanguage;
  if (head.Metadata && Object.keys(head.Metadata).length > 0) meta.metadata = { ...head.Metadata };
  return Object.keys(meta).length > 0 ? meta : undefined;
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
  #endpoint: string;
  #accessKeyId: string | undefined;
  #conditional: ConditionalSupport | undefined;
  #closed = false;
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
    }
    const init = (this.#client as unknown as { initConfig?: InitConfigView }).initConfig ?? {};
    this.#endpoint = S3BlobDB.#guessEndpoint(init);
    const creds = init.credentials as { accessKeyId?: unknown } | undefined;
    this.#accessKeyId = typeof creds?.accessKeyId === 'string' ? creds.accessKeyId : undefined;

    const self = this;
    this.capabilities = {
      /** False until `probeCapabilities()` has shown the server honours `If-None-Match: *` on PutObject. */
      get conditionalWrites(): boolean {
        return self.#conditional?.put ?? false;
      },
      get conditional(): ConditionalSupport {
        return { ...(self.#conditional ?? { put: false, multipartComplete: false }) };
      },
      serverSideCopyFrom: (other: BlobDB): boolean => self.#sameServerAndIdentity(other),
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

  static #guessEndpoint(init: InitConfigView): string {
    const ep = init.endpoint;
    if (typeof ep === 'string' || ep instanceof URL) return displayEndpoint(ep);
    if (typeof ep === 'object' && ep !== null && 'url' in ep) {
      const url = (ep as { url: unknown }).url;
      if (typeof url === 'string' || url instanceof URL) return displayEndpoint(url);
    }
    if (typeof ep === 'object' && ep !== null && 'hostname' in ep) {
      const e = ep as { protocol?: string; hostname: string; port?: number; path?: string };
      return displayEndpoint(
        `${e.protocol ?? 'https:'}//${e.hostname}${e.port ? `:${e.port}` : ''}${e.path ?? ''}`,
      );
    }
    const region = typeof init.region === 'string' ? init.region : process.env.AWS_REGION;
    return region ? `https://s3.${region}.amazonaws.com` : 'https://s3.amazonaws.com';
  }

  /**
   * Resolves the endpoint and access key id the client really uses (a passed-in
   * client may hold providers). Cached; `endpoint` reflects it afterwards.
   */
  async resolveIdentity(): Promise<{ endpoint: string; accessKeyId: string | undefined }> {
    const config = this.#client.config as unknown as {
      endpoint?: () => Promise<{ protocol: string; hostname: string; port?: number; path?: string }>;
      region?: () => Promise<string>;
      credentials?: () => Promise<{ accessKeyId?: string }>;
    };
    try {
      if (typeof config.endpoint === 'function') {
        const e = await config.endpoint();
        this.#endpoint = displayEndpoint(
          `${e.protocol}//${e.hostname}${e.port ? `:${e.port}` : ''}${e.path ?? ''}`,
        );
      } else if (typeof config.region === 'function') {
        this.#endpoint = `https://s3.${await config.region()}.amazonaws.com`;
      }
    } catch {
      // Keep the guess from the client's settings.
    }
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

  #sameServerAndIdentity(other: BlobDB): boolean {
    if (!(other instanceof S3BlobDB)) return false;
    if (other.endpoint !== this.endpoint) return false;
    if (other.client === this.#client) return true;
    const mine = this.#accessKeyId;
    return mine !== undefined && mine === other.#accessKeyId;
  }

  /**
   * Finds out whether the server honours `If-None-Match: *`: puts a probe
   * object under a reserved key twice with the header (the second must answer
   * 412); where it does, also completes a one-part multipart upload onto the
   * probe object with the header (412 again means CompleteMultipartUpload is
   * conditional too); then deletes the probe. Made once per endpoint and
   * bucket in this process; `put(…, { overwrite: false })` awaits it.
   */
  async probeCapabilities(): Promise<S3Capabilities> {
    if (this.#conditional !== undefined) return this.capabilities;
    const { endpoint } = await this.resolveIdentity();
    const cacheKey = `${endpoint}\u0000${this.#bucket}`;
    let probe = probeCache.get(cacheKey);
    if (!probe) {
      probe = this.#runProbe();
      probeCache.set(cacheKey, probe);
      probe.catch(() => probeCache.delete(cacheKey));
    }
    this.#conditional = await probe;
    return this.capabilities;
  }

  async #runProbe(): Promise<ConditionalSupport> {
    const key = `${this.#prefix}${RESERVED_PREFIX}probe-${randomBytes(8).toString('hex')}`;
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
      try {
        await this.#client.send(new PutObjectCommand(params));
      } catch (err) {
        throw new BackendError(`${where} could not write its probe object: ${describeS3Error(err)}`, {
          cause: err,
        });
      }
      try {
        await this.#client.send(new PutObjectCommand(params));
        return { put: false, multipartComplete: false };
      } catch (err) {
        if (!isPreconditionFailed(err) && !isConditionalConflict(err)) {
          throw new BackendError(`${where} failed: ${describeS3Error(err)}`, { cause: err });
        }
      }
      return { put: true, multipartComplete: await this.#probeConditionalComplete(key, body, where) };
    } finally {
      await this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: key })).catch(() => {
        // A leftover probe object is reserved and never listed.
      });
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

  #fullKey(key: string): string {
    return this.#prefix + validateKey(key);
  }

  #where(): string {
    return `bucket ${JSON.stringify(this.#bucket)} at ${this.#endpoint}`;
  }

  #backendError(op: string, key: string | undefined, err: unknown): BackendError {
    const what = key === undefined ? '' : ` of ${describeKey(key)}`;
    return new BackendError(`S3 ${op}${what} failed in ${this.#where()}: ${describeS3Error(err)}`, {
      cause: err,
      ...(key === undefined ? {} : { key }),
    });
  }

  #checkOpen(): void {
    if (this.#closed) throw new BackendError(`this S3BlobDB (${this.#where()}) is closed`);
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
      if (multipart && conditional && !support.multipartComplete) {
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
    if (!multipart && length !== undefined) return this.#putStream(key, params, source, length, opts);
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
        const out = await this.#client.send(
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
   * A lib-storage Upload (one PutObject when the body fits one part). A byte
   * count that differs from `size` fails the body stream, which aborts the
   * upload; after completion a HEAD confirms the stored size.
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
    let uploadBody: Readable | Buffer = body;
    if (!Buffer.isBuffer(body)) {
      counter = new ByteCounter(key, size);
      pipeline(body, counter, (err) => {
        if (err) streamError ??= err;
      });
      uploadBody = counter;
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
    try {
      await upload.done();
    } catch (err) {
      counter?.destroy();
      if (streamError !== undefined) throw streamError;
      throw this.#putError(key, 'multipart upload', err, conditional);
    }
    const sent = counter ? counter.bytes : (size ?? 0);
    let head: HeadObjectCommandOutput;
    try {
      head = await this.#client.send(new HeadObjectCommand({ Bucket: this.#bucket, Key: params.Key }));
    } catch (err) {
      throw this.#backendError('HeadObject after a multipart upload', key, err);
    }
    const stored = head.ContentLength ?? -1;
    if (stored !== sent) {
      await this.#client
        .send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: params.Key }))
        .catch(() => {});
      throw new SizeMismatchError(key, sent, stored);
    }
    return this.#putResult(key, stored, head.ETag, opts);
  }

  async get(key: string): Promise<Readable> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    try {
      // GetObject resolves after the response headers: a missing key rejects here.
      const out = await this.#client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: fullKey }));
      if (out.Body === undefined) throw new Error('GetObject returned no body');
      return out.Body as Readable;
    } catch (err) {
      if (isS3NotFoundError(err)) throw new BlobNotFoundError(key, { cause: err, where: this.#where() });
      throw this.#backendError('GetObject', key, err);
    }
  }

  async #head(key: string): Promise<HeadObjectCommandOutput | undefined> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    try {
      return await this.#client.send(new HeadObjectCommand({ Bucket: this.#bucket, Key: fullKey }));
    } catch (err) {
      if (isS3NotFoundError(err)) return undefined;
      throw this.#backendError('HeadObject', key, err);
    }
  }

  async stat(key: string): Promise<BlobInfo> {
    const head = await this.#head(key);
    if (head === undefined) throw new BlobNotFoundError(key, { where: this.#where() });
    const info: BlobInfo = { key, size: head.ContentLength ?? 0 };
    const etag = stripQuotes(head.ETag);
    if (etag !== undefined) info.etag = etag;
    if (head.ContentType) info.contentType = head.ContentType;
    if (head.LastModified) info.lastModified = head.LastModified;
    const meta = toHttpMeta(head);
    if (meta) info.httpMeta = meta;
    return info;
  }

  async exists(key: string): Promise<boolean> {
    return (await this.#head(key)) !== undefined;
  }

  async size(key: string): Promise<number> {
    return (await this.stat(key)).size;
  }

  async delete(key: string): Promise<boolean> {
    const fullKey = this.#fullKey(key);
    // S3's DeleteObject does not say whether anything was there: ask first.
    if (!(await this.exists(key))) return false;
    try {
      await this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: fullKey }));
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
        validateKey(key);
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
    let token: string | undefined;
    let page = 0;
    do {
      page++;
      let out: ListObjectsV2CommandOutput;
      try {
        out = await this.#client.send(
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
        );
      } catch (err) {
        throw this.#backendError(
          `ListObjectsV2 (prefix ${JSON.stringify(listPrefix)}, page ${page})`,
          undefined,
          err,
        );
      }
      for (const obj of out.Contents ?? []) {
        const full = obj.Key ?? '';
        if (last !== undefined && compareKeys(full, last) <= 0) {
          throw new BackendError(
            `the S3 server at ${this.#endpoint} lists bucket ${JSON.stringify(this.#bucket)} out of S3 byte order: ` +
              `${describeKey(full)} came after ${describeKey(last)} (page ${page}). A listing in any other order ` +
              'skips or repeats keys across pages; use a server that lists in UTF-8 byte order, as S3 does.',
          );
        }
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
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
      if (out.IsTruncated && token === undefined) {
        throw new BackendError(
          `the S3 server at ${this.#endpoint} sent a truncated listing of bucket ${JSON.stringify(this.#bucket)} ` +
            'without a continuation token',
        );
      }
    } while (token !== undefined);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ownsClient) this.#client.destroy();
  }
}
