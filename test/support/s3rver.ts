/**
 * S3 servers for tests: an in-process s3rver on 127.0.0.1 (free port, temp
 * directory, silent), client settings for it and for Ceph RGW, bucket
 * helpers, and a request counter to hang on any S3Client.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectsCommand,
  ListObjectsV2Command,
  type S3Client,
} from '@aws-sdk/client-s3';
import {
  createS3Client,
  type S3ClientConfigLike,
  type S3ClientOptions,
} from '../../lib/backends/s3/index.js';
import { observeLeanRequests } from '../../lib/backends/s3/lean.js';
import { RGW_CREDENTIALS, RGW_ENDPOINT, uniqueName } from './env.js';

/** s3rver signs with this fixed account. */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
  httpServer?: Server;
}
type S3rverCtor = new (options: {
  address: string;
  port: number;
  silent: boolean;
  directory: string;
  resetOnClose?: boolean;
}) => S3rverInstance;

const require = createRequire(import.meta.url);

export interface S3rverHandle {
  /** `http://127.0.0.1:PORT` */
  readonly endpoint: string;
  /** The node HTTP server s3rver listens with (to watch connections). */
  readonly httpServer: Server;
  /** Client settings for this server (`WHEN_REQUIRED` checksums: s3rver stores aws-chunked framing as content). */
  clientConfig(): S3ClientConfigLike;
  /** A new client this test owns (destroy it). */
  client(extra?: Omit<S3ClientOptions, 'endpoint'>): S3Client;
  stop(): Promise<void>;
}

/** Starts s3rver in-process on 127.0.0.1, a free port and a fresh temp directory. */
export async function startS3rver(): Promise<S3rverHandle> {
  const S3rver = require('s3rver') as S3rverCtor;
  const directory = await mkdtemp(join(tmpdir(), 'blobshift-s3rver-'));
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory });
  const address = await server.run();
  const httpServer = server.httpServer;
  if (!httpServer) throw new Error('s3rver started without an HTTP server');
  const endpoint = `http://127.0.0.1:${address.port}`;
  const clientConfig = (): S3ClientConfigLike => ({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { ...S3RVER_CREDENTIALS },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  return {
    endpoint,
    httpServer,
    clientConfig,
    client: (extra = {}) => createS3Client({ ...clientConfig(), ...extra }),
    async stop() {
      httpServer.closeAllConnections();
      await server.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/** Client settings for the Ceph RGW of this run (`BLOBSHIFT_TEST_RGW`), in either checksum mode. */
export function rgwClientConfig(
  checksums: 'WHEN_REQUIRED' | 'WHEN_SUPPORTED' = 'WHEN_SUPPORTED',
): S3ClientConfigLike {
  if (!RGW_ENDPOINT) throw new Error('BLOBSHIFT_TEST_RGW is not set');
  return {
    endpoint: RGW_ENDPOINT,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { ...RGW_CREDENTIALS },
    requestChecksumCalculation: checksums,
    responseChecksumValidation: checksums,
  };
}

/** Creates a bucket with a fresh name (or `name`) and returns the name. */
export async function createBucket(client: S3Client, name = uniqueName('bkt')): Promise<string> {
  await client.send(new CreateBucketCommand({ Bucket: name }));
  return name;
}

/** Deletes every object in a bucket (1000 a request). */
export async function emptyBucket(client: S3Client, bucket: string): Promise<void> {
  let token: string | undefined;
  do {
    const page = await client.send(
      new ListObjectsV2Command({ Bucket: bucket, ...(token ? { ContinuationToken: token } : {}) }),
    );
    const keys = (page.Contents ?? []).flatMap((o) => (o.Key ? [{ Key: o.Key }] : []));
    if (keys.length > 0) {
      await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys, Quiet: true } }));
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
}

/** Empties and deletes a bucket. */
export async function deleteBucket(client: S3Client, bucket: string): Promise<void> {
  await emptyBucket(client, bucket);
  await client.send(new DeleteBucketCommand({ Bucket: bucket }));
}

/** One HTTP request as the counter saw it (after signing, once per attempt). */
export interface SeenRequest {
  command: string;
  method: string;
  path: string;
  headers: Record<string, string>;
}

export interface RequestCounter {
  /** HTTP requests sent for a command name (e.g. `PutObjectCommand`), retries included. */
  count(command: string): number;
  /** Calls of a command (one per `client.send`, whatever its retries). */
  invocations(command: string): number;
  /** Every request seen, oldest first. */
  readonly requests: readonly SeenRequest[];
  /** Calls by command name (retries not counted). */
  byCommand(): Record<string, number>;
  reset(): void;
  /** Takes the middleware off the client. */
  remove(): void;
}

let counterId = 0;

/** Distinct command calls among requests (the SDK tags every attempt of one call with one invocation id). */
function calls(requests: SeenRequest[]): number {
  return new Set(requests.map((r, i) => r.headers['amz-sdk-invocation-id'] ?? `#${i}`)).size;
}

/**
 * Counts the HTTP requests a client sends, by command: a middleware placed
 * inside the retry loop, and an observer of the lean request path (which
 * sends PutObject, HeadObject, GetObject and DeleteObject past the middleware).
 */
export function countRequests(client: S3Client): RequestCounter {
  const name = `blobshiftTestCounter${++counterId}`;
  const requests: SeenRequest[] = [];
  const stopObserving = observeLeanRequests(client, (event) => {
    const headers = { ...event.headers, 'amz-sdk-invocation-id': `lean-${event.invocation}` };
    requests.push({ command: event.command, method: event.method, path: event.path, headers });
  });
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const request = args.request as {
        method?: string;
        path?: string;
        headers?: Record<string, string>;
      };
      requests.push({
        command: context.commandName ?? 'unknown',
        method: request.method ?? '',
        path: request.path ?? '',
        headers: { ...(request.headers ?? {}) },
      });
      return next(args);
    },
    { step: 'finalizeRequest', priority: 'low', name },
  );
  return {
    count: (command) => requests.filter((r) => r.command === command).length,
    invocations: (command) => calls(requests.filter((r) => r.command === command)),
    requests,
    byCommand: () => {
      const out: Record<string, number> = {};
      for (const command of new Set(requests.map((r) => r.command))) {
        out[command] = calls(requests.filter((r) => r.command === command));
      }
      return out;
    },
    reset: () => {
      requests.length = 0;
    },
    remove: () => {
      client.middlewareStack.remove(name);
      stopObserving();
    },
  };
}
