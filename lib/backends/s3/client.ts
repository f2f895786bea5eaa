/**
 * The S3 client this backend builds: a keep-alive agent limited to
 * `maxSockets`, connection and request timeouts, adaptive retries, a logger
 * that keeps the SDK's noise out, and the endpoint and access key id it
 * points at, remembered for messages and same-place checks.
 */
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import type { S3Client, S3ClientConfig } from '@aws-sdk/client-s3';
import { redactString, registerSecret } from '../../contract/redact.js';
import { type Sdk, sdkNow } from './sdk.js';

export const DEFAULT_MAX_SOCKETS = 64;
export const DEFAULT_CONNECTION_TIMEOUT_MS = 5_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 120_000;

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

/** Where a client points, and as whom: for messages and same-place checks. */
export interface ClientIdentity {
  endpoint: string;
  accessKeyId: string | undefined;
}

/** `scheme://host[:port][/path]` of an endpoint, without user info or a trailing slash. */
export function displayEndpoint(endpoint: string | URL): string {
  try {
    const url = new URL(String(endpoint));
    const path = url.pathname.replace(/\/+$/, '');
    return `${url.protocol}//${url.host}${path}`;
  } catch {
    return redactString(String(endpoint));
  }
}

export function awsEndpoint(region: string | undefined): string {
  return region ? `https://s3.${region}.amazonaws.com` : 'https://s3.amazonaws.com';
}

/** The region a client built from `config` uses, where the config decides it. */
function regionOf(config: S3ClientConfigLike): string | undefined {
  return config.region ?? (config.endpoint !== undefined ? 'us-east-1' : undefined);
}

/** Where a client built from `config` points, and as whom (no SDK needed). */
export function identityOf(config: S3ClientConfigLike): ClientIdentity {
  return {
    endpoint:
      config.endpoint !== undefined
        ? displayEndpoint(config.endpoint)
        : awsEndpoint(regionOf(config) ?? process.env.AWS_REGION),
    accessKeyId: config.credentials?.accessKeyId,
  };
}

/** What `createS3Client` knew about each client it built: where it points, and as whom. */
const clientIdentities = new WeakMap<S3Client, ClientIdentity>();

/** The identity of a client `createS3Client` built; undefined for one built elsewhere. */
export function knownIdentity(client: S3Client): ClientIdentity | undefined {
  return clientIdentities.get(client);
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

/** `createS3Client` with the SDK given (loaded already). */
export function buildS3Client(sdk: Sdk, config: S3ClientOptions = {}): S3Client {
  const maxSockets = config.maxSockets ?? DEFAULT_MAX_SOCKETS;
  const requestTimeout = config.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const agentOptions = { keepAlive: true, maxSockets };
  const requestHandler = new sdk.http.NodeHttpHandler({
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
  const region = regionOf(config);
  if (region !== undefined) clientConfig.region = region;
  if (config.forcePathStyle !== undefined) clientConfig.forcePathStyle = config.forcePathStyle;
  if (config.credentials) clientConfig.credentials = config.credentials;
  if (config.requestChecksumCalculation)
    clientConfig.requestChecksumCalculation = config.requestChecksumCalculation;
  if (config.responseChecksumValidation)
    clientConfig.responseChecksumValidation = config.responseChecksumValidation;
  const client = new sdk.s3.S3Client(clientConfig);
  clientIdentities.set(client, identityOf(config));
  return client;
}

/**
 * An `S3Client` with a keep-alive agent limited to `maxSockets`, connection
 * and request timeouts, and adaptive retries. Registers the secret key with
 * the redactor so it never shows in output. Loads the AWS SDK if nothing
 * has yet.
 */
export function createS3Client(config: S3ClientOptions = {}): S3Client {
  return buildS3Client(sdkNow(), config);
}
