/**
 * What the S3BlobDB test files share: one s3rver (or the run's Ceph RGW) per
 * file, a fresh bucket per test, the traits of each server, and the
 * skeleton every topic file registers its tests in (`describeS3Topic`), so
 * the tests keep their names whichever file they live in.
 */
import { once } from 'node:events';
import { createServer, request as httpRequest, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { inspect } from 'node:util';
import { ListMultipartUploadsCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { S3BlobDB, type S3BlobDBOptions, type S3ClientConfigLike } from '../../lib/backends/s3/index.js';
import type { BlobDB } from '../../lib/contract/types.js';
import { announce, RGW_ENDPOINT } from './env.js';
import { createBucket, deleteBucket, rgwClientConfig, type S3rverHandle, startS3rver } from './s3rver.js';

export const MiB = 1024 * 1024;

/** What the tests every server runs know of the server. */
export interface S3ServerTraits {
  /** Client settings. */
  config: () => S3ClientConfigLike;
  /** A client for direct checks. */
  admin: () => S3Client;
  /** The server honours If-None-Match on PutObject. */
  conditional: boolean;
  /** CopyObject honours If-None-Match (neither s3rver nor RGW Pacific does). */
  conditionalCopy: boolean;
  /** ListMultipartUploads and AbortMultipartUpload work (s3rver has neither). */
  uploads: boolean;
  /** An aborted PutObject leaves nothing (s3rver writes the object file in place as bytes arrive). */
  discardsAbortedPuts: boolean;
}

const S3RVER_TRAITS = {
  conditional: false,
  conditionalCopy: false,
  uploads: false,
  discardsAbortedPuts: false,
};
const RGW_TRAITS = { conditional: true, conditionalCopy: false, uploads: true, discardsAbortedPuts: true };

/** A test's fresh bucket and the instances it opens there. */
export interface S3Bench {
  /** The server the tests run on. */
  server: () => S3ServerTraits;
  /** This test's bucket. */
  bucket: () => string;
  /** A new S3BlobDB on this test's bucket, closed after the test. */
  make: (extra?: Partial<S3BlobDBOptions>) => S3BlobDB;
  /** Instances closed after the test (push any made otherwise). */
  open: BlobDB[];
}

/**
 * Registers, in the calling describe block, a fresh bucket before each test,
 * and after it the instances closed and the bucket deleted.
 */
export function useS3Bench(server: () => S3ServerTraits): S3Bench {
  let bucket: string | undefined;
  const open: BlobDB[] = [];
  const current = (): string => {
    if (bucket === undefined) throw new Error('no bucket: the test has not started');
    return bucket;
  };
  beforeEach(async () => {
    bucket = await createBucket(server().admin());
  });
  afterEach(async () => {
    for (const db of open.splice(0)) await db.close();
    try {
      await deleteBucket(server().admin(), current());
    } catch (err) {
      // s3rver cannot delete the partial file an aborted PutObject leaves; its directory goes at stop.
      if (server().discardsAbortedPuts) throw err;
    }
  });
  return {
    server,
    bucket: current,
    make: (extra = {}) => {
      const db = new S3BlobDB({ bucket: current(), clientConfig: server().config(), ...extra });
      open.push(db);
      return db;
    },
    open,
  };
}

/** The s3rver of the calling describe block, and a client of it. */
export interface S3rverFixture {
  /** The running s3rver (started before the block's tests, stopped after them). */
  server: S3rverHandle;
  /** A client of it for direct checks. */
  admin: () => S3Client;
}

/** Starts one s3rver before the calling describe block's tests and stops it after them. */
export function useS3rver(): S3rverFixture {
  let handle: S3rverHandle | undefined;
  let admin: S3Client | undefined;
  before(async () => {
    handle = await startS3rver();
    admin = handle.client();
  });
  after(async () => {
    admin?.destroy();
    await handle?.stop();
  });
  const started = (): S3rverHandle => {
    if (!handle) throw new Error('s3rver has not started');
    return handle;
  };
  return {
    server: {
      get endpoint() {
        return started().endpoint;
      },
      get httpServer() {
        return started().httpServer;
      },
      clientConfig: () => started().clientConfig(),
      client: (extra) => started().client(extra),
      stop: () => started().stop(),
    },
    admin: () => {
      if (!admin) throw new Error('s3rver has not started');
      return admin;
    },
  };
}

/** The run's Ceph RGW for the calling describe block: a client, and one bucket shared by the block. */
export function useRgw(): { admin: () => S3Client; bucket: () => string } {
  let admin: S3Client | undefined;
  let bucket: string | undefined;
  before(async () => {
    admin = new S3Client({ ...rgwClientConfig() });
    bucket = await createBucket(admin);
  });
  after(async () => {
    if (admin && bucket !== undefined) await deleteBucket(admin, bucket);
    admin?.destroy();
  });
  return {
    admin: () => {
      if (!admin) throw new Error('the RGW client is not open');
      return admin;
    },
    bucket: () => {
      if (bucket === undefined) throw new Error('the RGW bucket is not there');
      return bucket;
    },
  };
}

/** A fresh bucket before each test of the calling describe block, deleted after it. */
export function useBucket(admin: () => S3Client): () => string {
  let bucket: string | undefined;
  beforeEach(async () => {
    bucket = await createBucket(admin());
  });
  afterEach(async () => {
    if (bucket !== undefined) await deleteBucket(admin(), bucket);
  });
  return () => {
    if (bucket === undefined) throw new Error('no bucket: the test has not started');
    return bucket;
  };
}

/** One topic of the S3BlobDB tests, by where each part runs. */
export interface S3Topic {
  /** Tests every server runs (s3rver, and RGW in both checksum modes), a fresh bucket each. */
  specifics?: (bench: S3Bench) => void;
  /** Tests of s3rver alone, beside the specifics. */
  s3rver?: (s3rver: S3rverFixture) => void;
  /** Describe blocks of their own, after the s3rver ones (fake endpoints, the request path). */
  more?: () => void;
  /** Tests of RGW's conditional writes, a fresh bucket each. */
  rgwConditional?: (rgw: { admin: () => S3Client; b: () => string }) => void;
}

/**
 * Registers one topic's tests in the S3BlobDB skeleton: 'S3BlobDB' › 'on
 * s3rver' › 'S3BlobDB on s3rver: S3 specifics', then `more`, then (when
 * BLOBSHIFT_TEST_RGW is set) 'on Ceph RGW' › 'S3BlobDB on RGW, <mode>: S3
 * specifics' and 'S3BlobDB on RGW: conditional writes'.
 */
export function describeS3Topic(topic: S3Topic): void {
  describe('S3BlobDB', function () {
    this.timeout(120_000);

    const { specifics, rgwConditional } = topic;
    if (specifics || topic.s3rver) {
      describe('on s3rver', () => {
        const s3rver = useS3rver();
        describe('S3BlobDB on s3rver: S3 specifics', () => {
          specifics?.(
            useS3Bench(() => ({
              config: () => s3rver.server.clientConfig(),
              admin: s3rver.admin,
              ...S3RVER_TRAITS,
            })),
          );
          topic.s3rver?.(s3rver);
        });
      });
    }

    topic.more?.();

    if (!specifics && !rgwConditional) return;
    if (!RGW_ENDPOINT) {
      announce('BLOBSHIFT_TEST_RGW', 'S3BlobDB on Ceph RGW');
      return;
    }
    describe('on Ceph RGW', () => {
      const rgw = useRgw();
      if (specifics) {
        for (const mode of ['WHEN_REQUIRED', 'WHEN_SUPPORTED'] as const) {
          describe(`S3BlobDB on RGW, ${mode}: S3 specifics`, () => {
            specifics(
              useS3Bench(() => ({ config: () => rgwClientConfig(mode), admin: rgw.admin, ...RGW_TRAITS })),
            );
          });
        }
      }
      if (rgwConditional) {
        describe('S3BlobDB on RGW: conditional writes', () => {
          rgwConditional({ admin: rgw.admin, b: useBucket(rgw.admin) });
        });
      }
    });
  });
}
/** Every message along an error's cause chain, plus its inspected form. */
export function errorTexts(err: unknown): string[] {
  const out: string[] = [inspect(err, { depth: 6 })];
  let e: unknown = err;
  for (let i = 0; i < 10 && e instanceof Error; i++) {
    out.push(e.message, String(e));
    e = e.cause;
  }
  return out;
}

/** A 412 as the SDK surfaces it. */
export function preconditionFailed(): Error {
  return Object.assign(new Error('At least one of the pre-conditions you specified did not hold'), {
    name: 'PreconditionFailed',
    $fault: 'client',
    $metadata: { httpStatusCode: 412 },
  });
}

/** Raw object keys in a bucket (reserved ones included). */
export async function rawKeys(client: S3Client, bucket: string): Promise<string[]> {
  const out = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
  return (out.Contents ?? []).map((o) => o.Key ?? '');
}

/** Open multipart uploads, by ListMultipartUploads (RGW; s3rver lacks it). */
export async function listUploads(client: S3Client, bucket: string): Promise<number> {
  const out = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
  return out.Uploads?.length ?? 0;
}

/** A stream of `total` bytes (unknown length to the backend). */
export function bytesStream(total: number, fill = 0x61): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= total) {
        this.push(null);
        return;
      }
      const n = Math.min(256 * 1024, total - sent);
      sent += n;
      this.push(Buffer.alloc(n, fill));
    },
  });
}

/** What an intercepting proxy does with one request: answer it here, or forward it (optionally rewriting the answer's headers). */
export type Intercept =
  | { answer: { status: number; headers?: Record<string, string>; body?: string } }
  | { rewrite: (headers: Record<string, string | string[] | undefined>) => void }
  | undefined;

/**
 * An HTTP proxy on 127.0.0.1 in front of `target` that asks `intercept` about
 * each request: faults the real servers cannot make on demand (a 409, an
 * answer re-chunked without Content-Length), for either request path alike.
 */
export async function startInterceptor(
  target: string,
  intercept: (req: IncomingMessage) => Intercept,
): Promise<{ endpoint: string; stop(): Promise<void> }> {
  const to = new URL(target);
  const server = createServer((req, res) => {
    const decision = intercept(req);
    if (decision && 'answer' in decision) {
      req.resume();
      const body = decision.answer.body ?? '';
      res.writeHead(decision.answer.status, {
        'content-length': String(Buffer.byteLength(body)),
        ...decision.answer.headers,
      });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    const up = httpRequest(
      { host: to.hostname, port: to.port, method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        const headers = { ...upRes.headers };
        if (decision && 'rewrite' in decision) decision.rewrite(headers);
        res.writeHead(upRes.statusCode ?? 502, headers);
        upRes.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async stop() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}
