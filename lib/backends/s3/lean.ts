/**
 * The lean request path of `S3BlobDB`: PutObject of an in-memory body,
 * HeadObject, GetObject and DeleteObject without the SDK's middleware stack.
 *
 * Each request is built here, signed by the S3 client's own SigV4 signer
 * (`client.config.signer`, so the same credential provider with its refresh)
 * and sent through the client's own HTTP handler (the same keep-alive agent,
 * `maxSockets`, connection, request and socket timeouts). Everything else
 * keeps the client's semantics too:
 *
 * - the endpoint, path-style or virtual-host, a custom endpoint with a path,
 *   and the signing region and name come from the SDK's own endpoint
 *   resolution, asked once per bucket (and once more per region redirect);
 *   where it asks for anything but plain SigV4 (S3 Express, multi-region
 *   access points) or headers of its own, the SDK path is used;
 * - retries go through the client's retry strategy object itself (adaptive or
 *   standard: the same token bucket, backoff, and adaptive rate limiter as
 *   the SDK's requests), with the SDK's classification of throttling
 *   (503 SlowDown…), transient (5xx, resets, timeouts) and client errors;
 * - the clock offset is the client's `systemClockOffset`, sampled from every
 *   answer's `Date` as the SDK does; a RequestTimeTooSkewed that moved it is
 *   retried with the corrected time;
 * - a 301 with `x-amz-bucket-region` (a bucket in another region) is sent
 *   again to that region's endpoint, as `followRegionRedirects` does, and
 *   later requests go there directly;
 * - `requestChecksumCalculation: WHEN_SUPPORTED` sends the CRC32 of a PUT
 *   body as the SDK does; GetObject takes this path only where response
 *   checksums are `WHEN_REQUIRED` (the SDK validates them otherwise);
 * - failures are `S3ServiceException`s with the SDK's names (the XML error
 *   `Code`, `NotFound` for a bodiless 404), `$metadata.httpStatusCode` and
 *   `$response`, so callers map them exactly as the SDK's.
 */
import type { IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import { crc32 } from 'node:zlib';
import type { S3Client, S3ServiceException } from '@aws-sdk/client-s3';
import type { HttpRequest, HttpResponse } from '@smithy/protocol-http';
// The SDK's classes come from the one copy the backend loaded (this path only runs after its first request).
import { sdkNow } from './sdk.js';

/** Bodies above this go through the SDK (it adds `Expect: 100-continue` from 2 MiB). */
export const LEAN_MAX_PUT_BYTES = 2 * 1024 * 1024;

/** PutObject inputs this path knows how to send; any other field sends the request through the SDK. */
const LEAN_PUT_FIELDS = new Set([
  'Bucket',
  'Key',
  'Body',
  'ContentLength',
  'ContentType',
  'ContentEncoding',
  'CacheControl',
  'ContentDisposition',
  'ContentLanguage',
  'Metadata',
  'IfNoneMatch',
]);

/** The subset of `PutObjectCommandInput` the lean path sends. */
export interface LeanPutInput {
  Key: string;
  ContentType?: string;
  ContentEncoding?: string;
  CacheControl?: string;
  ContentDisposition?: string;
  ContentLanguage?: string;
  Metadata?: Record<string, string>;
  IfNoneMatch?: string;
}

/** The headers of an object, as the SDK's HeadObject and GetObject outputs name them. */
export interface LeanObjectOutput {
  ContentLength?: number;
  ETag?: string;
  ContentType?: string;
  LastModified?: Date;
  ContentEncoding?: string;
  CacheControl?: string;
  ContentDisposition?: string;
  ContentLanguage?: string;
  Metadata?: Record<string, string>;
}

/** One attempt as the lean path sends it (after signing), for observers such as request counters in tests. */
export interface LeanRequestEvent {
  command: 'PutObjectCommand' | 'HeadObjectCommand' | 'GetObjectCommand' | 'DeleteObjectCommand';
  method: string;
  path: string;
  headers: Record<string, string>;
  /** Numbers one operation (every attempt of it carries the same), as the SDK's invocation id does. */
  invocation: number;
  /** 1 for the first attempt, then 2, 3… for retries and a redirected resend. */
  attempt: number;
}

let invocations = 0;
const observers = new WeakMap<S3Client, Set<(event: LeanRequestEvent) => void>>();

/** Calls `listener` for every request attempt the lean path sends with `client`; returns the remover. */
export function observeLeanRequests(
  client: S3Client,
  listener: (event: LeanRequestEvent) => void,
): () => void {
  let set = observers.get(client);
  if (!set) {
    set = new Set();
    observers.set(client, set);
  }
  set.add(listener);
  return () => set.delete(listener);
}

/** True when a PutObject input holds only what this path sends and its body is small enough. */
export function leanPutFits(input: object, bodyLength: number): boolean {
  if (bodyLength > LEAN_MAX_PUT_BYTES) return false;
  for (const field of Object.keys(input)) {
    if (!LEAN_PUT_FIELDS.has(field) && (input as Record<string, unknown>)[field] !== undefined) return false;
  }
  return true;
}

// The SDK's error classification (@smithy/core retry), kept in step with it.
const THROTTLING_CODES = new Set([
  'BandwidthLimitExceeded',
  'EC2ThrottledException',
  'LimitExceededException',
  'PriorRequestNotComplete',
  'ProvisionedThroughputExceededException',
  'RequestLimitExceeded',
  'RequestThrottled',
  'RequestThrottledException',
  'SlowDown',
  'ThrottledException',
  'Throttling',
  'ThrottlingException',
  'TooManyRequestsException',
  'TransactionInProgressException',
]);
const TRANSIENT_CODES = new Set(['TimeoutError', 'RequestTimeout', 'RequestTimeoutException']);
const TRANSIENT_STATUS = new Set([500, 502, 503, 504]);
const NODE_TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

interface ErrorLike {
  name?: string;
  message?: string;
  code?: string;
  cause?: unknown;
  $retryable?: { throttling?: boolean };
  $metadata?: { httpStatusCode?: number; clockSkewCorrected?: boolean };
}

function isThrottling(e: ErrorLike): boolean {
  return (
    e.$metadata?.httpStatusCode === 429 ||
    THROTTLING_CODES.has(e.name ?? '') ||
    e.$retryable?.throttling === true
  );
}

function isTransient(e: ErrorLike | undefined, depth = 0): boolean {
  if (typeof e !== 'object' || e === null || e.name === 'AbortError') return false;
  return (
    e.$retryable !== undefined ||
    e.$metadata?.clockSkewCorrected === true ||
    (e.name === 'InvalidSignatureException' && (e.message ?? '').includes('Signature expired')) ||
    TRANSIENT_CODES.has(e.name ?? '') ||
    NODE_TRANSIENT_CODES.has(e.code ?? '') ||
    TRANSIENT_STATUS.has(e.$metadata?.httpStatusCode ?? 0) ||
    (e.code === 'ERR_HTTP2_STREAM_ERROR' && (e.message ?? '').includes('NGHTTP2_REFUSED_STREAM')) ||
    (e.cause !== undefined && depth <= 10 && isTransient(e.cause as ErrorLike, depth + 1))
  );
}

type RetryErrorType = 'THROTTLING' | 'TRANSIENT' | 'SERVER_ERROR' | 'CLIENT_ERROR';

/** The SDK's retry error type of a failure. */
export function retryErrorType(err: unknown): RetryErrorType {
  const e = (typeof err === 'object' && err !== null ? err : {}) as ErrorLike;
  if (isThrottling(e)) return 'THROTTLING';
  if (isTransient(e)) return 'TRANSIENT';
  const status = e.$metadata?.httpStatusCode;
  if (status !== undefined && status >= 500 && status <= 599) return 'SERVER_ERROR';
  return 'CLIENT_ERROR';
}

/** `Retry-After` (seconds or a date) or `x-amz-retry-after` (milliseconds) of an answer, as a date. */
function retryAfterHint(headers: Record<string, string> | undefined): Date | undefined {
  const amz = headers?.['x-amz-retry-after'];
  if (amz !== undefined && !Number.isNaN(Number(amz))) return new Date(Date.now() + Number(amz));
  const after = headers?.['retry-after'];
  if (after === undefined) return undefined;
  if (/^\d+(\.\d+)?$/.test(after)) return new Date(Date.now() + Number(after) * 1000);
  const at = Date.parse(after);
  return Number.isNaN(at) ? undefined : new Date(at);
}

interface RetryToken {
  getRetryCount(): number;
  getRetryDelay(): number;
}
interface RetryStrategyV2 {
  acquireInitialRetryToken(scope: string): Promise<RetryToken>;
  refreshRetryTokenForRetry(
    token: RetryToken,
    info: { errorType: RetryErrorType; retryAfterHint?: Date },
  ): Promise<RetryToken>;
  recordSuccess(token: RetryToken): void;
}
interface Signer {
  sign(
    request: HttpRequest,
    opts: { signingDate: Date; signingRegion: string; signingService: string },
  ): Promise<HttpRequest>;
}
interface Handler {
  handle(request: HttpRequest, opts?: Record<string, unknown>): Promise<{ response: HttpResponse }>;
}
/** What the lean path reads from (and writes to: `systemClockOffset`) the S3 client's resolved config. */
interface ResolvedConfig {
  signer: (authScheme?: unknown) => Promise<Signer>;
  requestHandler: Handler;
  retryStrategy: () => Promise<RetryStrategyV2 | object>;
  maxAttempts: () => Promise<number>;
  systemClockOffset: number;
  disableClockSkewCorrection?: () => Promise<boolean>;
  requestChecksumCalculation: () => Promise<string>;
  responseChecksumValidation: () => Promise<string>;
}

interface Endpoint {
  protocol: string;
  hostname: string;
  port: number | undefined;
  host: string;
  /** `/bucket` (path-style), `''` (virtual host), or a custom endpoint's path before it. */
  basePath: string;
  region: string;
  service: string;
  signer: Signer;
}

const RESOLVED = new Error('endpoint resolved');

/**
 * The endpoint and signing scheme the SDK would use for an object request to
 * `bucket` (in `region`, after a redirect), from its own endpoint resolution:
 * a HeadObject command is run up to its build step and stopped there.
 * `undefined` where the answer is anything but plain SigV4 without headers.
 */
async function resolveEndpoint(
  client: S3Client,
  bucket: string,
  region: string | undefined,
): Promise<Endpoint | undefined> {
  const command = new (sdkNow().s3.HeadObjectCommand)({ Bucket: bucket, Key: 'k' });
  let captured:
    | { url?: URL; headers?: Record<string, unknown>; properties?: Record<string, unknown> }
    | undefined;
  if (region !== undefined) {
    // The SDK's region-redirect middleware reads this before endpoint resolution.
    command.middlewareStack.add(
      (next, context) => (args) => {
        (context as { __s3RegionRedirect?: string }).__s3RegionRedirect = region;
        return next(args);
      },
      { step: 'initialize', priority: 'high', name: 'blobshiftLeanRegion' },
    );
  }
  command.middlewareStack.add(
    (_next, context) => async () => {
      captured = (context as { endpointV2?: typeof captured }).endpointV2;
      throw RESOLVED;
    },
    { step: 'build', priority: 'low', name: 'blobshiftLeanEndpoint' },
  );
  try {
    await client.send(command);
  } catch (err) {
    if (err !== RESOLVED) return undefined;
  }
  const url = captured?.url;
  if (url?.search !== '' || url.username !== '' || url.password !== '') return undefined;
  if (captured?.headers && Object.keys(captured.headers).length > 0) return undefined;
  const schemes = captured?.properties?.authSchemes as
    | { name?: string; signingName?: string; signingRegion?: string }[]
    | undefined;
  const scheme = schemes?.[0];
  if (scheme?.name !== 'sigv4' || !scheme.signingRegion) return undefined;
  const config = client.config as unknown as ResolvedConfig;
  const signer = await config.signer(scheme);
  const port = url.port === '' ? undefined : Number(url.port);
  return {
    protocol: url.protocol,
    hostname: url.hostname,
    port,
    host: url.host,
    basePath: url.pathname === '/' ? '' : url.pathname.replace(/\/+$/, ''),
    region: scheme.signingRegion,
    service: scheme.signingName ?? 's3',
    signer,
  };
}

/** A key's path segments percent-encoded as the SDK does (`encodeURIComponent`, plus `!'()*`). */
function encodeKey(key: string): string {
  return key
    .split('/')
    .map((segment) =>
      encodeURIComponent(segment).replace(
        /[!'()*]/g,
        (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
      ),
    )
    .join('/');
}

const XML_ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

function xmlText(xml: string, tag: string): string | undefined {
  const m = new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml);
  return m?.[1]?.replace(/&(amp|lt|gt|quot|apos);/g, (_, e: string) => XML_ENTITIES[e] ?? '');
}

/** Reads a small error body (at most 64 KiB kept). */
function readSmall(body: Readable | undefined): Promise<string> {
  if (!body) return Promise.resolve('');
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let kept = 0;
    body.on('data', (chunk: Buffer) => {
      if (kept < 65536) {
        chunks.push(chunk);
        kept += chunk.length;
      }
    });
    body.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    body.on('error', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

/** The SDK's name for a failure whose answer has no XML error code (a HEAD's never has one). */
function bodilessName(status: number): string {
  return status === 404 ? 'NotFound' : 'Unknown';
}

/** An `S3ServiceException` shaped as the SDK's for the same answer. */
async function serviceError(
  response: HttpResponse,
  method: string,
): Promise<S3ServiceException & { ServerTime?: string }> {
  const status = response.statusCode;
  const body = response.body as Readable | undefined;
  // A HEAD answer has no body, but its stream must still end for the socket to go back to the pool.
  if (method === 'HEAD') body?.resume();
  const text = method === 'HEAD' ? '' : await readSmall(body);
  const code = text === '' ? undefined : xmlText(text, 'Code');
  const message = (text === '' ? undefined : xmlText(text, 'Message')) || 'UnknownError';
  const headers = response.headers;
  const err = new (sdkNow().s3.S3ServiceException)({
    name: code ?? bodilessName(status),
    $fault: status >= 500 ? 'server' : 'client',
    message,
    $metadata: {
      httpStatusCode: status,
      requestId: headers['x-amz-request-id'] ?? xmlText(text, 'RequestId'),
      extendedRequestId: headers['x-amz-id-2'],
      cfId: headers['x-amz-cf-id'],
    },
  }) as S3ServiceException & { ServerTime?: string; $response?: HttpResponse };
  const serverTime = xmlText(text, 'ServerTime');
  if (serverTime !== undefined) err.ServerTime = serverTime;
  err.$response = response;
  return err;
}

/** The object headers of an answer, named as the SDK's outputs name them. */
function objectOutput(headers: Record<string, string>): LeanObjectOutput {
  const out: LeanObjectOutput = {};
  const length = headers['content-length'];
  if (length !== undefined && length !== '') out.ContentLength = Number(length);
  if (headers.etag !== undefined) out.ETag = headers.etag;
  if (headers['content-type'] !== undefined) out.ContentType = headers['content-type'];
  if (headers['last-modified'] !== undefined) {
    const at = new Date(headers['last-modified']);
    if (!Number.isNaN(at.getTime())) out.LastModified = at;
  }
  if (headers['content-encoding'] !== undefined) out.ContentEncoding = headers['content-encoding'];
  if (headers['cache-control'] !== undefined) out.CacheControl = headers['cache-control'];
  if (headers['content-disposition'] !== undefined) out.ContentDisposition = headers['content-disposition'];
  if (headers['content-language'] !== undefined) out.ContentLanguage = headers['content-language'];
  for (const name in headers) {
    if (name.startsWith('x-amz-meta-')) {
      out.Metadata ??= {};
      out.Metadata[name.slice(11)] = headers[name] as string;
    }
  }
  return out;
}

type Command = LeanRequestEvent['command'];

/**
 * The lean path for one client and bucket. `LeanS3.create` answers
 * `undefined` where this client is not one the path can serve as the SDK
 * would (then every request goes through the SDK).
 */
export class LeanS3 {
  readonly #client: S3Client;
  readonly #config: ResolvedConfig;
  readonly #bucket: string;
  readonly #strategy: RetryStrategyV2;
  readonly #skewCorrection: boolean;
  readonly #putChecksum: boolean;
  /** GetObject through this path: only where the SDK would not validate response checksums. */
  readonly getsLean: boolean;
  #endpoint: Endpoint;
  readonly #redirects = new Map<string, Promise<Endpoint | undefined>>();

  private constructor(
    client: S3Client,
    bucket: string,
    endpoint: Endpoint,
    strategy: RetryStrategyV2,
    flags: { skewCorrection: boolean; putChecksum: boolean; getsLean: boolean },
  ) {
    this.#client = client;
    this.#config = client.config as unknown as ResolvedConfig;
    this.#bucket = bucket;
    this.#endpoint = endpoint;
    this.#strategy = strategy;
    this.#skewCorrection = flags.skewCorrection;
    this.#putChecksum = flags.putChecksum;
    this.getsLean = flags.getsLean;
  }

  static async create(client: S3Client, bucket: string): Promise<LeanS3 | undefined> {
    const config = client.config as unknown as Partial<ResolvedConfig>;
    if (
      typeof config.signer !== 'function' ||
      typeof config.requestHandler?.handle !== 'function' ||
      typeof config.retryStrategy !== 'function' ||
      typeof config.systemClockOffset !== 'number'
    ) {
      return undefined;
    }
    const strategy = (await config.retryStrategy()) as Partial<RetryStrategyV2>;
    if (
      typeof strategy.acquireInitialRetryToken !== 'function' ||
      typeof strategy.refreshRetryTokenForRetry !== 'function' ||
      typeof strategy.recordSuccess !== 'function'
    ) {
      return undefined;
    }
    const endpoint = await resolveEndpoint(client, bucket, undefined);
    if (!endpoint) return undefined;
    const skewCorrection = (await config.disableClockSkewCorrection?.()) !== true;
    const putChecksum = (await config.requestChecksumCalculation?.()) === 'WHEN_SUPPORTED';
    const getsLean = (await config.responseChecksumValidation?.()) === 'WHEN_REQUIRED';
    return new LeanS3(client, bucket, endpoint, strategy as RetryStrategyV2, {
      skewCorrection,
      putChecksum,
      getsLean,
    });
  }

  /** PutObject of an in-memory body (`leanPutFits` said yes); resolves the answer's ETag. */
  async put(input: LeanPutInput, body: Buffer): Promise<{ ETag?: string }> {
    const headers: Record<string, string> = {
      'content-length': String(body.length),
      'content-type': input.ContentType ?? 'application/octet-stream',
    };
    if (input.IfNoneMatch !== undefined) headers['if-none-match'] = input.IfNoneMatch;
    if (input.ContentEncoding !== undefined) headers['content-encoding'] = input.ContentEncoding;
    if (input.CacheControl !== undefined) headers['cache-control'] = input.CacheControl;
    if (input.ContentDisposition !== undefined) headers['content-disposition'] = input.ContentDisposition;
    if (input.ContentLanguage !== undefined) headers['content-language'] = input.ContentLanguage;
    if (input.Metadata) {
      for (const [name, value] of Object.entries(input.Metadata))
        headers[`x-amz-meta-${name.toLowerCase()}`] = value;
    }
    if (this.#putChecksum) {
      const sum = Buffer.alloc(4);
      sum.writeUInt32BE(crc32(body) >>> 0);
      headers['x-amz-sdk-checksum-algorithm'] = 'CRC32';
      headers['x-amz-checksum-crc32'] = sum.toString('base64');
    }
    const response = await this.#send('PutObjectCommand', 'PUT', input.Key, headers, body);
    (response.body as Readable | undefined)?.resume();
    const etag = response.headers.etag;
    return etag === undefined ? {} : { ETag: etag };
  }

  /** HeadObject: the object's headers; rejects with the SDK's `NotFound` (404) when absent. */
  async head(key: string): Promise<LeanObjectOutput> {
    const response = await this.#send('HeadObjectCommand', 'HEAD', key, {}, undefined);
    (response.body as Readable | undefined)?.resume();
    return objectOutput(response.headers);
  }

  /**
   * HeadObject that resolves `undefined` for a 404 instead of building an
   * error: the existence check a no-overwrite copy makes where writes are not
   * conditional, for nearly every blob. A 404 is final, as in the SDK (never
   * retried); here it counts as an answer for the retry strategy.
   */
  async headIfPresent(key: string): Promise<LeanObjectOutput | undefined> {
    const response = await this.#send('HeadObjectCommand', 'HEAD', key, {}, undefined, true);
    (response.body as Readable | undefined)?.resume();
    return response.statusCode === 404 ? undefined : objectOutput(response.headers);
  }

  /** GetObject: the headers and the body stream (not read here); rejects with `NoSuchKey` when absent. */
  async get(key: string): Promise<LeanObjectOutput & { Body: Readable }> {
    const response = await this.#send('GetObjectCommand', 'GET', key, {}, undefined);
    const body = response.body as IncomingMessage | undefined;
    if (!body) throw new Error('GetObject returned no body');
    return { ...objectOutput(response.headers), Body: body };
  }

  /** DeleteObject (S3 answers 204 whether or not the key was there). */
  async delete(key: string): Promise<void> {
    const response = await this.#send('DeleteObjectCommand', 'DELETE', key, {}, undefined);
    (response.body as Readable | undefined)?.resume();
  }

  /** One operation: sign, send, and retry as the client's retry strategy says. */
  async #send(
    command: Command,
    method: string,
    key: string,
    headers: Record<string, string>,
    body: Buffer | undefined,
    notFoundIsAnswer = false,
  ): Promise<HttpResponse> {
    let token = await this.#strategy.acquireInitialRetryToken('');
    const invocation = ++invocations;
    let sent = 0;
    let redirected = false;
    let attempts = 0;
    let totalRetryDelay = 0;
    for (;;) {
      const endpoint = this.#endpoint;
      const request = new (sdkNow().protocol.HttpRequest)({
        method,
        protocol: endpoint.protocol,
        hostname: endpoint.hostname,
        ...(endpoint.port !== undefined ? { port: endpoint.port } : {}),
        path: `${endpoint.basePath}/${encodeKey(key)}`,
        headers: { ...headers, host: endpoint.host, 'user-agent': 'blobshift' },
        ...(body !== undefined ? { body } : {}),
      });
      const preOffset = this.#config.systemClockOffset;
      const sentAt = Date.now();
      let failure: unknown;
      let response: HttpResponse | undefined;
      try {
        const signed = await endpoint.signer.sign(request, {
          signingDate: new Date(this.#skewCorrection ? sentAt + preOffset : sentAt),
          signingRegion: endpoint.region,
          signingService: endpoint.service,
        });
        const listeners = observers.get(this.#client);
        if (listeners) {
          const headers = { ...signed.headers };
          const event = { command, method, path: signed.path, headers, invocation, attempt: sent + 1 };
          for (const listener of listeners) listener(event);
        }
        sent++;
        ({ response } = await this.#config.requestHandler.handle(signed, {}));
      } catch (err) {
        failure = err;
      }
      if (response !== undefined) {
        this.#sampleClock(response.headers.date, response.headers.age, sentAt);
        const status = response.statusCode;
        if ((status >= 200 && status < 300) || (status === 404 && notFoundIsAnswer)) {
          this.#strategy.recordSuccess(token);
          return response;
        }
        const err = await serviceError(response, method);
        if (this.#skewCorrection && err.ServerTime !== undefined && response.headers.date === undefined) {
          this.#sampleClock(err.ServerTime, undefined, sentAt);
        }
        const offset = this.#config.systemClockOffset;
        if (this.#skewCorrection && Math.abs(offset) >= 240_000 && offset !== preOffset) {
          (err.$metadata as { clockSkewCorrected?: boolean }).clockSkewCorrected = true;
        }
        const bucketRegion = response.headers['x-amz-bucket-region'];
        if (
          !redirected &&
          bucketRegion !== undefined &&
          (status === 301 || (status === 400 && err.name === 'IllegalLocationConstraintException'))
        ) {
          const target = await this.#redirect(bucketRegion);
          if (target) {
            this.#endpoint = target;
            redirected = true;
            continue;
          }
        }
        failure = err;
      }
      try {
        token = await this.#strategy.refreshRetryTokenForRetry(token, {
          errorType: retryErrorType(failure),
          ...hintOf(failure),
        });
      } catch {
        throw withAttempts(failure, attempts + 1, totalRetryDelay);
      }
      attempts = token.getRetryCount();
      const delay = token.getRetryDelay();
      // The strategy may have waited inside the refresh already (it logs how long), as the SDK counts it.
      const waited =
        (token as { $retryLog?: { acquisitionDelay?: number } }).$retryLog?.acquisitionDelay ?? 0;
      totalRetryDelay += waited + delay;
      if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  /** The SDK's clock-skew sampling: the server's time minus ours, from an answer that did not sit in a cache. */
  #sampleClock(date: string | undefined, age: string | undefined, sentAt: number): void {
    if (!this.#skewCorrection || date === undefined || age !== undefined) return;
    const serverTime = Date.parse(date);
    if (Number.isNaN(serverTime)) return;
    const now = Date.now();
    if (now - sentAt > 900_000) return;
    this.#config.systemClockOffset = serverTime - now;
  }

  #redirect(region: string): Promise<Endpoint | undefined> {
    let target = this.#redirects.get(region);
    if (!target) {
      target = resolveEndpoint(this.#client, this.#bucket, region).catch(() => undefined);
      this.#redirects.set(region, target);
    }
    return target;
  }
}

function hintOf(err: unknown): { retryAfterHint?: Date } {
  const headers = (err as { $response?: { headers?: Record<string, string> } } | undefined)?.$response
    ?.headers;
  const hint = retryAfterHint(headers);
  return hint ? { retryAfterHint: hint } : {};
}

function withAttempts(err: unknown, attempts: number, totalRetryDelay: number): unknown {
  if (typeof err === 'object' && err !== null) {
    const e = err as { $metadata?: Record<string, unknown> };
    e.$metadata ??= {};
    e.$metadata.attempts = attempts;
    e.$metadata.totalRetryDelay = totalRetryDelay;
  }
  return err;
}
