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

/** One operation in flight on the lean path: its request, and what its attempts share. */
interface Operation {
  command: Command;
  method: string;
  key: string;
  headers: Record<string, string>;
  body: Buffer | undefined;
  invocation: number;
  /** Attempts handed to the request handler so far. */
  sent: number;
  redirected: boolean;
  /** The retry count of the latest token, and the retry delay so far, for a final error's `$metadata`. */
  attempts: number;
  totalRetryDelay: number;
}

/** The unsigned request of an operation's attempt, to `endpoint`. */
function buildRequest(endpoint: Endpoint, op: Operation): HttpRequest {
  const { method, key, headers, body } = op;
  return new (sdkNow().protocol.HttpRequest)({
    method,
    protocol: endpoint.protocol,
    hostname: endpoint.hostname,
    ...(endpoint.port !== undefined ? { port: endpoint.port } : {}),
    path: `${endpoint.basePath}/${encodeKey(key)}`,
    headers: { ...headers, host: endpoint.host, 'user-agent': 'blobshift' },
    ...(body !== undefined ? { body } : {}),
  });
}

/** Whether an answer ends the operation: a success, or a 404 where that counts as an answer. */
function isAnswer(status: number, notFoundIsAnswer: boolean): boolean {
  return (status >= 200 && status < 300) || (status === 404 && notFoundIsAnswer);
}

/** Whether a failed answer sends the request to the bucket's own region. */
function isRegionRedirect(status: number, errorName: string): boolean {
  return status === 301 || (status === 400 && errorName === 'IllegalLocationConstraintException');
}

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
    const op: Operation = {
      command,
      method,
      key,
      headers,
      body,
      invocation: ++invocations,
      sent: 0,
      redirected: false,
      attempts: 0,
      totalRetryDelay: 0,
    };
    for (;;) {
      const endpoint = this.#endpoint;
      const request = buildRequest(endpoint, op);
      const preOffset = this.#config.systemClockOffset;
      const sentAt = Date.now();
      const { response, failure: sendFailure } = await this.#attempt(
        endpoint,
        request,
        op,
        sentAt,
        preOffset,
      );
      let failure = sendFailure;
      if (response !== undefined) {
        this.#sampleClock(response.headers.date, response.headers.age, sentAt);
        if (isAnswer(response.statusCode, notFoundIsAnswer)) {
          this.#strategy.recordSuccess(token);
          return response;
        }
        const err = await this.#failedAnswer(response, method, sentAt, preOffset);
        if (await this.#followRedirect(response, err, op)) continue;
        failure = err;
      }
      token = await this.#nextRetry(token, failure, op);
    }
  }

  /**
   * One attempt: sign the request (dated by the corrected clock), tell the
   * observers, and hand it to the request handler. A failure to sign or send
   * is returned, not thrown.
   */
  async #attempt(
    endpoint: Endpoint,
    request: HttpRequest,
    op: Operation,
    sentAt: number,
    preOffset: number,
  ): Promise<{ response?: HttpResponse | undefined; failure?: unknown }> {
    try {
      const signed = await endpoint.signer.sign(request, {
        signingDate: new Date(this.#skewCorrection ? sentAt + preOffset : sentAt),
        signingRegion: endpoint.region,
        signingService: endpoint.service,
      });
      this.#notify(signed, op);
      op.sent++;
      const { response } = await this.#config.requestHandler.handle(signed, {});
      return { response };
    } catch (err) {
      return { failure: err };
    }
  }

  /** Calls the observers of this client with the signed attempt about to be sent. */
  #notify(signed: HttpRequest, op: Operation): void {
    const listeners = observers.get(this.#client);
    if (!listeners) return;
    const headers = { ...signed.headers };
    const event = {
      command: op.command,
      method: op.method,
      path: signed.path,
      headers,
      invocation: op.invocation,
      attempt: op.sent + 1,
    };
    for (const listener of listeners) listener(event);
  }

  /**
   * The error of an answer that is no success, after sampling the clock
   * from the error's `ServerTime` where the answer had no date, and marked
   * `clockSkewCorrected` where this answer moved a large clock offset.
   */
  async #failedAnswer(
    response: HttpResponse,
    method: string,
    sentAt: number,
    preOffset: number,
  ): Promise<S3ServiceException & { ServerTime?: string }> {
    const err = await serviceError(response, method);
    if (this.#skewCorrection && err.ServerTime !== undefined && response.headers.date === undefined) {
      this.#sampleClock(err.ServerTime, undefined, sentAt);
    }
    const offset = this.#config.systemClockOffset;
    if (this.#skewCorrection && Math.abs(offset) >= 240_000 && offset !== preOffset) {
      (err.$metadata as { clockSkewCorrected?: boolean }).clockSkewCorrected = true;
    }
    return err;
  }

  /**
   * Follows a region redirect (once per operation) where the answer names
   * the bucket's region and the endpoint there resolves: true when the
   * attempt should be sent again to the new endpoint.
   */
  async #followRedirect(response: HttpResponse, err: S3ServiceException, op: Operation): Promise<boolean> {
    const bucketRegion = response.headers['x-amz-bucket-region'];
    if (op.redirected || bucketRegion === undefined || !isRegionRedirect(response.statusCode, err.name)) {
      return false;
    }
    const target = await this.#redirect(bucketRegion);
    if (!target) return false;
    this.#endpoint = target;
    op.redirected = true;
    return true;
  }

  /**
   * The retry token for the next attempt, after waiting its delay; throws the
   * failure (with the attempts and retry delay so far) where the strategy
   * allows no retry.
   */
  async #nextRetry(token: RetryToken, failure: unknown, op: Operation): Promise<RetryToken> {
    let next: RetryToken;
    try {
      next = await this.#strategy.refreshRetryTokenForRetry(token, {
        errorType: retryErrorType(failure),
        ...hintOf(failure),
      });
    } catch {
      throw withAttempts(failure, op.attempts + 1, op.totalRetryDelay);
    }
    op.attempts = next.getRetryCount();
    const delay = next.getRetryDelay();
    // The strategy may have waited inside the refresh already (it logs how long), as the SDK counts it.
    const waited = (next as { $retryLog?: { acquisitionDelay?: number } }).$retryLog?.acquisitionDelay ?? 0;
    op.totalRetryDelay += waited + delay;
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    return next;
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
