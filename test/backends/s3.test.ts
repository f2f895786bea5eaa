import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import {
  createServer,
  request as httpRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough, Readable } from 'node:stream';
import { inspect } from 'node:util';
import {
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { expect } from 'chai';
import {
  isS3NotFoundError,
  S3BlobDB,
  type S3BlobDBOptions,
  type S3ClientConfigLike,
} from '../../lib/backends/s3/index.js';
import { getWithInfo, readAll } from '../../lib/contract/body.js';
import {
  BackendError,
  BlobExistsError,
  BlobNotFoundError,
  InvalidKeyError,
  SizeMismatchError,
} from '../../lib/contract/errors.js';
import type { BlobBody, BlobDB, BlobInfo, ListOptions, PutOptions } from '../../lib/contract/types.js';
import { describeBlobDB, getBytes, listKeys, rejectionOf } from '../conformance/blobdb.suite.js';
import { announce, RGW_CREDENTIALS, RGW_ENDPOINT, uniqueName } from '../support/env.js';
import { startFaultProxy } from '../support/fault-proxy.js';
import {
  countRequests,
  createBucket,
  deleteBucket,
  rgwClientConfig,
  type S3rverHandle,
  startS3rver,
} from '../support/s3rver.js';

const MiB = 1024 * 1024;

/** Every message along an error's cause chain, plus its inspected form. */
function errorTexts(err: unknown): string[] {
  const out: string[] = [inspect(err, { depth: 6 })];
  let e: unknown = err;
  for (let i = 0; i < 10 && e instanceof Error; i++) {
    out.push(e.message, String(e));
    e = e.cause;
  }
  return out;
}

/** A 412 as the SDK surfaces it. */
function preconditionFailed(): Error {
  return Object.assign(new Error('At least one of the pre-conditions you specified did not hold'), {
    name: 'PreconditionFailed',
    $fault: 'client',
    $metadata: { httpStatusCode: 412 },
  });
}

/** Raw object keys in a bucket (reserved ones included). */
async function rawKeys(client: S3Client, bucket: string): Promise<string[]> {
  const out = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
  return (out.Contents ?? []).map((o) => o.Key ?? '');
}

/** Open multipart uploads, by ListMultipartUploads (RGW; s3rver lacks it). */
async function listUploads(client: S3Client, bucket: string): Promise<number> {
  const out = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
  return out.Uploads?.length ?? 0;
}

/** A stream of `total` bytes (unknown length to the backend). */
function bytesStream(total: number, fill = 0x61): Readable {
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
type Intercept =
  | { answer: { status: number; headers?: Record<string, string>; body?: string } }
  | { rewrite: (headers: Record<string, string | string[] | undefined>) => void }
  | undefined;

/**
 * An HTTP proxy on 127.0.0.1 in front of `target` that asks `intercept` about
 * each request: faults the real servers cannot make on demand (a 409, an
 * answer re-chunked without Content-Length), for either request path alike.
 */
async function startInterceptor(
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

/**
 * s3rver writes an object's file in place as the body arrives, so concurrent
 * PUTs to one key interleave into a mix of their bodies (AWS and RGW replace
 * objects whole). The conformance suite has no switch for that yet, so its
 * s3rver runs send puts to one key one at a time; RGW runs the races for real.
 */
class OnePutPerKey implements BlobDB {
  readonly #inner: BlobDB;
  readonly #tails = new Map<string, Promise<unknown>>();
  constructor(inner: BlobDB) {
    this.#inner = inner;
  }
  get capabilities() {
    return this.#inner.capabilities;
  }
  put(key: string, body: BlobBody, opts?: PutOptions): Promise<BlobInfo> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    const run = previous.then(
      () => this.#inner.put(key, body, opts),
      () => this.#inner.put(key, body, opts),
    );
    this.#tails.set(key, run);
    return run;
  }
  get(key: string) {
    return this.#inner.get(key);
  }
  stat(key: string) {
    return this.#inner.stat(key);
  }
  exists(key: string) {
    return this.#inner.exists(key);
  }
  size(key: string) {
    return this.#inner.size(key);
  }
  delete(key: string) {
    return this.#inner.delete(key);
  }
  bulkDelete(keys: string[]) {
    return this.#inner.bulkDelete(keys);
  }
  list(opts?: ListOptions) {
    return this.#inner.list(opts);
  }
  close() {
    return this.#inner.close();
  }
}

/**
 * Tests shared by both servers. `config` gives client settings; `admin` a
 * client for direct checks; `conditional` whether the server honours
 * If-None-Match on PutObject.
 */
function s3Behaviour(
  server: () => {
    config: () => S3ClientConfigLike;
    admin: () => S3Client;
    conditional: boolean;
    /** CopyObject honours If-None-Match (neither s3rver nor RGW Pacific does). */
    conditionalCopy: boolean;
    /** ListMultipartUploads and AbortMultipartUpload work (s3rver has neither). */
    uploads: boolean;
    /** An aborted PutObject leaves nothing (s3rver writes the object file in place as bytes arrive). */
    discardsAbortedPuts: boolean;
  },
): void {
  let bucket: string;
  const open: BlobDB[] = [];
  const make = (extra: Partial<S3BlobDBOptions> = {}): S3BlobDB => {
    const db = new S3BlobDB({ bucket, clientConfig: server().config(), ...extra });
    open.push(db);
    return db;
  };

  beforeEach(async () => {
    bucket = await createBucket(server().admin());
  });
  afterEach(async () => {
    for (const db of open.splice(0)) await db.close();
    try {
      await deleteBucket(server().admin(), bucket);
    } catch (err) {
      // s3rver cannot delete the partial file an aborted PutObject leaves; its directory goes at stop.
      if (server().discardsAbortedPuts) throw err;
    }
  });

  it('the probe answers once per bucket, leaves nothing behind, and matches the server', async () => {
    const db = make();
    expect(db.capabilities.conditionalWrites, 'false before the probe').to.equal(false);
    const counter = countRequests(db.client);
    const caps = await db.probeCapabilities();
    expect(caps.conditionalWrites).to.equal(server().conditional);
    expect(caps.conditional.put).to.equal(server().conditional);
    if (!server().conditional) expect(caps.conditional.multipartComplete).to.equal(false);
    expect(counter.count('PutObjectCommand')).to.equal(2);
    // A second instance on the same bucket reuses the answer.
    const again = make();
    const counter2 = countRequests(again.client);
    expect((await again.probeCapabilities()).conditionalWrites).to.equal(server().conditional);
    expect(counter2.requests).to.deep.equal([]);
    expect(await rawKeys(server().admin(), bucket)).to.deep.equal([]);
    if (server().uploads) expect(await listUploads(server().admin(), bucket)).to.equal(0);
  });

  it('the completion probe runs only for a conditional upload that needs it, once, and leaves nothing behind', async () => {
    const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
    await db.probeCapabilities();
    const counter = countRequests(db.client);
    await db.put('small', 'x', { overwrite: false });
    expect(counter.count('CreateMultipartUploadCommand'), 'not for a small put').to.equal(0);
    await db.put('big', bytesStream(6 * MiB), { overwrite: false, size: 6 * MiB });
    await db.put('big2', bytesStream(6 * MiB), { overwrite: false, size: 6 * MiB });
    // RGW before Squid: the probe finds completions unconditional, so known sizes go as one PutObject.
    const probes = server().conditional ? 1 : 0;
    const uploads = server().conditional && !db.capabilities.conditional.multipartComplete ? 0 : 2;
    expect(counter.count('CreateMultipartUploadCommand')).to.equal(probes + uploads);
    expect((await rawKeys(server().admin(), bucket)).sort()).to.deep.equal(['big', 'big2', 'small']);
    if (server().uploads) expect(await listUploads(server().admin(), bucket)).to.equal(0);
  });

  it('overwrite: false on a present key: one conditional PutObject where honoured, else a HEAD first', async () => {
    const db = make();
    await db.put('k', 'original');
    await db.probeCapabilities();
    const counter = countRequests(db.client);
    const err = await rejectionOf(db.put('k', Buffer.from('intruder'), { overwrite: false }));
    const sent = counter.byCommand();
    expect(err).to.be.instanceOf(BlobExistsError);
    expect((await getBytes(db, 'k')).toString()).to.equal('original');
    if (server().conditional) {
      expect(sent).to.deep.equal({ PutObjectCommand: 1 });
      expect(counter.requests[0]?.headers['if-none-match']).to.equal('*');
      expect((err as BlobExistsError).cause, 'the 412 rides along').to.have.property(
        'name',
        'PreconditionFailed',
      );
    } else {
      expect(sent).to.deep.equal({ HeadObjectCommand: 1 });
    }
  });

  it('a known-size stream over the multipart threshold with overwrite: false is refused and leaves no upload', async () => {
    const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
    await db.put('big', 'original');
    const err = await rejectionOf(db.put('big', bytesStream(6 * MiB), { size: 6 * MiB, overwrite: false }));
    expect(err).to.be.instanceOf(BlobExistsError);
    expect((await getBytes(db, 'big')).toString()).to.equal('original');
    if (server().uploads) expect(await listUploads(server().admin(), bucket)).to.equal(0);
  });

  for (const [what, total, size] of [
    ['short', 3 * MiB, 3 * MiB + 1],
    ['long', 3 * MiB, 2 * MiB],
  ] as const) {
    it(`a ${what} stream on the PutObject path fails with SizeMismatchError and stores nothing`, async () => {
      const db = make();
      const counter = countRequests(db.client);
      const err = await rejectionOf(db.put('p', bytesStream(total), { size }));
      expect(err).to.be.instanceOf(SizeMismatchError);
      expect(counter.count('PutObjectCommand'), 'it went as one PutObject').to.equal(1);
      expect(counter.count('CreateMultipartUploadCommand')).to.equal(0);
      // The request was cut short of its Content-Length: a real S3 stores nothing
      // (s3rver keeps the partial file it was writing in place).
      if (server().discardsAbortedPuts) {
        expect(await db.exists('p')).to.equal(false);
        expect(await rejectionOf(db.get('p'))).to.be.instanceOf(BlobNotFoundError);
        expect(await rawKeys(server().admin(), bucket)).to.deep.equal([]);
      }
    });

    it(`a ${what} stream on the multipart path fails with SizeMismatchError, aborts the upload, stores nothing`, async () => {
      const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
      const counter = countRequests(db.client);
      const err = await rejectionOf(db.put('m', bytesStream(total * 4), { size: size * 4 }));
      expect(err).to.be.instanceOf(SizeMismatchError);
      expect(counter.count('CreateMultipartUploadCommand'), 'it went multipart').to.equal(1);
      expect(counter.count('AbortMultipartUploadCommand')).to.equal(1);
      expect(counter.count('CompleteMultipartUploadCommand')).to.equal(0);
      expect(await db.exists('m')).to.equal(false);
      expect(await rawKeys(server().admin(), bucket)).to.deep.equal([]);
      if (server().uploads) expect(await listUploads(server().admin(), bucket)).to.equal(0);
    });
  }

  it('a completion that leaves out a part never leaves a short object behind', async () => {
    const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
    // Stand-in for the old lib-storage bug: the completion leaves out the last part.
    db.client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'CompleteMultipartUploadCommand') {
          const input = args.input as { MultipartUpload?: { Parts?: unknown[] } };
          input.MultipartUpload?.Parts?.pop();
        }
        return next(args);
      },
      { step: 'initialize', name: 'dropLastPart' },
    );
    const err = await rejectionOf(db.put('short', bytesStream(12 * MiB)));
    if (server().uploads) {
      // RGW refuses a completion that omits an uploaded part (InvalidPart).
      expect(err).to.be.instanceOf(BackendError);
      expect((err as Error).message).to.include('InvalidPart');
    } else {
      // s3rver completes it: the HEAD after completion finds 10 MiB, deletes it, and the put fails.
      expect(err).to.be.instanceOf(SizeMismatchError);
      expect((err as SizeMismatchError).expected).to.equal(12 * MiB);
      expect((err as SizeMismatchError).actual).to.equal(10 * MiB);
    }
    expect(await db.exists('short')).to.equal(false);
  });

  for (const requestPath of ['lean', 'sdk'] as const) {
    it(`getWithInfo of an answer without Content-Length (a proxy that re-chunks) takes the size from a HEAD (${requestPath} path)`, async () => {
      const endpoint = server().config().endpoint as string;
      // The proxy drops the GET answer's length: node then sends it chunked.
      const proxy = await startInterceptor(endpoint, (req) =>
        // An object GET (the SDK adds `?x-id=GetObject`; listings have `list-type`).
        req.method === 'GET' && !(req.url ?? '').includes('list-type')
          ? {
              rewrite: (h) => {
                delete h['content-length'];
              },
            }
          : undefined,
      );
      try {
        const db = make({ clientConfig: { ...server().config(), endpoint: proxy.endpoint }, requestPath });
        const bytes = randomBytes(70_000);
        await db.put('chunked', bytes, { contentType: 'image/png' });
        const counter = countRequests(db.client);
        const { info, body } = await getWithInfo(db, 'chunked');
        expect(info).to.include({ key: 'chunked', size: bytes.length, contentType: 'image/png' });
        expect((await readAll(body)).equals(bytes)).to.equal(true);
        expect(counter.count('HeadObjectCommand')).to.equal(1);
      } finally {
        await proxy.stop();
      }
    });
  }

  it('the HEAD after a multipart upload never deletes an object a concurrent writer put there', async () => {
    const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
    // Another writer replaces the object between the completion and the HEAD.
    db.client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'HeadObjectCommand') {
          const input = args.input as { Bucket: string; Key: string };
          await server()
            .admin()
            .send(new PutObjectCommand({ Bucket: input.Bucket, Key: input.Key, Body: 'the other writer' }));
        }
        return next(args);
      },
      { step: 'initialize', name: 'concurrentWriter' },
    );
    const outcome = await db.put('k', bytesStream(11 * MiB)).then(
      (info) => info,
      (err: unknown) => err,
    );
    if (outcome instanceof Error) {
      // No ETag from the completion (RGW): the put cannot tell, and says so.
      expect(outcome).to.be.instanceOf(BackendError);
      expect(outcome.message).to.include('left in place');
    } else {
      expect(outcome).to.include({ key: 'k', size: 11 * MiB });
    }
    const admin = server().admin();
    const head = await admin.send(new HeadObjectCommand({ Bucket: bucket, Key: 'k' }));
    expect(head.ContentLength).to.equal('the other writer'.length);
  });

  it('a known-size stream over the threshold goes up in parts from reused buffers, at most queueSize at once', async () => {
    const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB, queueSize: 2 });
    const counter = countRequests(db.client);
    let running = 0;
    let most = 0;
    db.client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName !== 'UploadPartCommand') return next(args);
        running++;
        most = Math.max(most, running);
        try {
          return await next(args);
        } finally {
          running--;
        }
      },
      { step: 'initialize', name: 'partsInFlight' },
    );
    const body = randomBytes(21 * MiB + 7);
    const info = await db.put('parts', Readable.from([body.subarray(0, 3), body.subarray(3)]), {
      size: body.length,
    });
    expect(info.size).to.equal(body.length);
    expect(counter.count('UploadPartCommand'), 'five parts: 4 × 5 MiB and the rest').to.equal(5);
    expect(most, 'parts in flight').to.be.within(1, 2);
    expect(await getBytes(db, 'parts')).to.deep.equal(body);
  });

  it('a source stream that fails midway rejects with its own error and aborts the multipart upload', async () => {
    const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
    const counter = countRequests(db.client);
    let sent = 0;
    const failing = new Readable({
      read() {
        if (sent >= 8 * MiB) {
          this.destroy(new Error('the disk went away'));
          return;
        }
        sent += MiB;
        this.push(Buffer.alloc(MiB, 1));
      },
    });
    const err = await rejectionOf(db.put('broken', failing, { size: 12 * MiB }));
    expect((err as Error).message).to.equal('the disk went away');
    expect(counter.count('AbortMultipartUploadCommand')).to.equal(1);
    expect(counter.count('CompleteMultipartUploadCommand')).to.equal(0);
    expect(await db.exists('broken')).to.equal(false);
    if (server().uploads) expect(await listUploads(server().admin(), bucket)).to.equal(0);
  });

  it('a part the server fails once is sent again (parts are buffers) and the upload completes', async () => {
    const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
    let failed = false;
    db.client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'UploadPartCommand' && !failed) {
          failed = true;
          throw Object.assign(new Error('We encountered an internal error.'), {
            name: 'InternalError',
            $fault: 'server',
            $metadata: { httpStatusCode: 500 },
          });
        }
        return next(args);
      },
      { step: 'finalizeRequest', priority: 'low', name: 'failOnePart' },
    );
    const body = randomBytes(11 * MiB);
    await db.put('retried', Readable.from([body]), { size: body.length });
    expect(failed).to.equal(true);
    expect(await getBytes(db, 'retried')).to.deep.equal(body);
  });

  it('carries content type and HTTP metadata through a multipart upload', async () => {
    const db = make({ partSize: 5 * MiB, multipartThreshold: 5 * MiB });
    const info = await db.put('mp', bytesStream(11 * MiB, 0x62), {
      contentType: 'video/mp4',
      httpMeta: { cacheControl: 'max-age=60', contentDisposition: 'inline', metadata: { owner: 'case-17' } },
    });
    expect(info.size).to.equal(11 * MiB);
    const st = await db.stat('mp');
    expect(st.size).to.equal(11 * MiB);
    expect(st.contentType).to.equal('video/mp4');
    expect(st.httpMeta).to.include({ cacheControl: 'max-age=60', contentDisposition: 'inline' });
    expect(st.httpMeta?.metadata).to.deep.equal({ owner: 'case-17' });
  });

  it('never lists reserved objects, and hides the prefix', async () => {
    const db = make({ prefix: 'tenant' });
    await db.put('a/b', '1');
    await server()
      .admin()
      .send(new PutObjectCommand({ Bucket: bucket, Key: 'tenant/a/.blobshift-tmp-1', Body: 'x' }));
    await server()
      .admin()
      .send(new PutObjectCommand({ Bucket: bucket, Key: 'tenant/.blobshift-probe-x', Body: 'x' }));
    await server()
      .admin()
      .send(new PutObjectCommand({ Bucket: bucket, Key: 'outside', Body: 'x' }));
    expect(await listKeys(db)).to.deep.equal(['a/b']);
    expect(await listKeys(db, { prefix: 'a/' })).to.deep.equal(['a/b']);
    expect(db.prefix).to.equal('tenant/');
    expect((await rawKeys(server().admin(), bucket)).sort()).to.deep.equal(
      ['outside', 'tenant/.blobshift-probe-x', 'tenant/a/.blobshift-tmp-1', 'tenant/a/b'].sort(),
    );
  });

  it('refuses a key that would pass 1024 bytes under the prefix with InvalidKeyError', async () => {
    const db = make({ prefix: 'p'.repeat(30) });
    const key = `${'k'.repeat(200)}/`.repeat(4) + 'k'.repeat(200); // 1004 bytes: valid alone
    const err = await rejectionOf(db.put(key, 'x'));
    expect(err).to.be.instanceOf(InvalidKeyError);
    expect((err as InvalidKeyError).reason).to.match(/1035 bytes; S3 allows 1024/);
    const res = await db.bulkDelete([key]);
    expect(res.errors[0]?.error).to.be.instanceOf(InvalidKeyError);
  });

  it('bulkDelete sends 1000 keys a request', async function () {
    this.timeout(120_000);
    const db = make();
    const keys = Array.from({ length: 1005 }, (_, i) => `d/${String(i).padStart(4, '0')}`);
    for (let i = 0; i < keys.length; i += 50) {
      await Promise.all(keys.slice(i, i + 50).map((key) => db.put(key, 'x')));
    }
    const counter = countRequests(db.client);
    const res = await db.bulkDelete([...keys, 'never-was']);
    expect(res.errors).to.deep.equal([]);
    expect(counter.invocations('DeleteObjectsCommand')).to.equal(2);
    expect(await listKeys(db)).to.deep.equal([]);
  });

  it('get, stat and size map the server’s not-found to BlobNotFoundError; exists and delete answer false', async () => {
    const db = make();
    for (const call of [() => db.get('nope'), () => db.stat('nope'), () => db.size('nope')]) {
      const err = await rejectionOf(call());
      expect(err).to.be.instanceOf(BlobNotFoundError);
      expect(isS3NotFoundError((err as Error).cause) || (err as Error).cause === undefined).to.equal(true);
    }
    expect(await db.exists('nope')).to.equal(false);
    expect(await db.delete('nope')).to.equal(false);
  });

  it('a missing bucket is a BackendError, never "not found"', async () => {
    const db = new S3BlobDB({ bucket: uniqueName('missing'), clientConfig: server().config() });
    open.push(db);
    const err = await rejectionOf(db.get('k'));
    expect(err).to.be.instanceOf(BackendError);
    expect((err as Error).message).to.include('NoSuchBucket');
  });

  it('close() destroys a client it built, and leaves a passed-in client usable', async () => {
    const client = server().admin();
    const borrowed = new S3BlobDB({ bucket, client });
    await borrowed.put('c', 'x');
    await borrowed.close();
    const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: 'c' }));
    expect(head.ContentLength).to.equal(1);
    const owned = make();
    await owned.close();
    expect(await rejectionOf(owned.exists('c'))).to.be.instanceOf(BackendError);
  });

  it('serverSideCopyFrom: same endpoint and access key only', async () => {
    const a = make();
    const b = make({ prefix: 'other' });
    expect(a.capabilities.serverSideCopyFrom?.(b)).to.equal(true);
    const otherKey = new S3BlobDB({
      bucket,
      clientConfig: {
        ...server().config(),
        credentials: { accessKeyId: 'SOMEONEELSE', secretAccessKey: 'x'.repeat(20) },
      },
    });
    open.push(otherKey);
    expect(a.capabilities.serverSideCopyFrom?.(otherKey)).to.equal(false);
    const elsewhere = new S3BlobDB({
      bucket,
      clientConfig: { ...server().config(), endpoint: 'http://127.0.0.1:9' },
    });
    open.push(elsewhere);
    expect(a.capabilities.serverSideCopyFrom?.(elsewhere)).to.equal(false);
    const notS3 = { capabilities: { conditionalWrites: true } } as unknown as BlobDB;
    expect(a.capabilities.serverSideCopyFrom?.(notS3)).to.equal(false);
  });

  it('the probe asks about CopyObject only for copies from the same server, and leaves no probe behind', async () => {
    const db = make();
    const counter = countRequests(db.client);
    await db.probeCapabilities();
    expect(counter.count('CopyObjectCommand'), 'not for puts').to.equal(0);
    const other = make({ prefix: 'other' });
    const caps = await db.probeCapabilities({ copyFrom: other });
    expect(caps.conditional.copy).to.equal(server().conditional && server().conditionalCopy);
    // Where PutObject is not conditional, a copy checks then copies, as a put does: nothing to ask.
    expect(counter.count('CopyObjectCommand')).to.equal(server().conditional ? 2 : 0);
    await db.probeCapabilities({ copyFrom: other });
    expect(counter.count('CopyObjectCommand'), 'asked once').to.equal(server().conditional ? 2 : 0);
    expect(await rawKeys(server().admin(), bucket)).to.deep.equal([]);
  });

  it('copyFrom on one endpoint: server-side where no-overwrite holds as for a put, else streamed', async () => {
    const src = make({ prefix: 'src' });
    const dst = make({ prefix: 'dst' });
    expect(dst.capabilities.serverSideCopyFrom?.(src, { overwrite: false }), 'before the probe').to.equal(
      false,
    );
    await dst.probeCapabilities({ copyFrom: src });
    // No conditional writes at all: a put checks then writes, and so does the copy.
    // Conditional puts but not copies (RGW Pacific): only the stream keeps no-overwrite atomic.
    const serverSide = !server().conditional || server().conditionalCopy;
    expect(dst.capabilities.serverSideCopyFrom?.(src, { overwrite: false })).to.equal(serverSide);
    expect(dst.capabilities.serverSideCopyFrom?.(src)).to.equal(true);
    const body = randomBytes(300_000);
    const httpMeta = { cacheControl: 'max-age=60', metadata: { origin: 'copy' } };
    await src.put('a/blob.bin', body, { contentType: 'application/x-test', httpMeta });
    const st = await src.stat('a/blob.bin');
    const fromSrc = countRequests(src.client);
    const fromDst = countRequests(dst.client);
    const info = await dst.copyFrom(src, 'a/blob.bin', {
      overwrite: false,
      size: st.size,
      ...(st.etag !== undefined ? { sourceEtag: st.etag } : {}),
    });
    const sent = { src: fromSrc.byCommand(), dst: fromDst.byCommand() };
    expect(info.size).to.equal(body.length);
    if (serverSide) {
      expect(sent.dst.CopyObjectCommand, 'one CopyObject').to.equal(1);
      expect(sent.src.GetObjectCommand, 'no byte read through the client').to.equal(undefined);
      expect(sent.src.HeadObjectCommand, 'the given ETag spares a HEAD of the source').to.equal(undefined);
    } else {
      expect(sent.dst.CopyObjectCommand).to.equal(undefined);
      expect(sent.src.GetObjectCommand).to.equal(1);
      expect(sent.dst.PutObjectCommand).to.equal(1);
    }
    expect(await getBytes(dst, 'a/blob.bin')).to.deep.equal(body);
    const copied = await dst.stat('a/blob.bin');
    expect(copied.contentType).to.equal('application/x-test');
    expect(copied.httpMeta?.cacheControl).to.equal('max-age=60');
    expect(copied.httpMeta?.metadata).to.deep.equal({ origin: 'copy' });
  });

  it('copyFrom with overwrite: false never replaces a present blob, and a missing source is not found', async () => {
    const src = make({ prefix: 'src' });
    const dst = make({ prefix: 'dst' });
    await dst.probeCapabilities();
    await src.put('k', 'from the source');
    await dst.put('k', 'original');
    expect(await rejectionOf(dst.copyFrom(src, 'k', { overwrite: false }))).to.be.instanceOf(BlobExistsError);
    expect((await getBytes(dst, 'k')).toString()).to.equal('original');
    const missing = await rejectionOf(dst.copyFrom(src, 'nope', { overwrite: false }));
    expect(missing).to.be.instanceOf(BlobNotFoundError);
    expect((missing as BlobNotFoundError).key).to.equal('nope');
    // A size the source does not have is refused before anything is written.
    await src.put('k2', 'ten bytes!');
    expect(await rejectionOf(dst.copyFrom(src, 'k2', { overwrite: false, size: 3 }))).to.be.instanceOf(
      SizeMismatchError,
    );
    expect(await dst.exists('k2')).to.equal(false);
  });

  it('copyFrom copies keys with characters servers decode differently in x-amz-copy-source', async () => {
    const src = make({ prefix: 'src' });
    const dst = make({ prefix: 'dst' });
    await dst.probeCapabilities();
    const key = 'odd/a+b=c&d$e,f;g:h@i j%20k.txt';
    await src.put(key, 'special');
    await dst.copyFrom(src, key, { overwrite: false });
    expect((await getBytes(dst, key)).toString()).to.equal('special');
  });
}

describe('S3BlobDB', function () {
  this.timeout(120_000);

  describe('on s3rver', () => {
    let server: S3rverHandle;
    let admin: S3Client;
    before(async () => {
      server = await startS3rver();
      admin = server.client();
    });
    after(async () => {
      admin.destroy();
      await server.stop();
    });

    // A fresh bucket per test: s3rver lists a bucket in directory-walk order,
    // and the suite's unprefixed listing must not meet other tests' keys.
    const factory = (prefix?: string, requestPath?: 'lean' | 'sdk') => async () => {
      const db = new S3BlobDB({
        bucket: await createBucket(admin),
        clientConfig: server.clientConfig(),
        ...(prefix ? { prefix } : {}),
        ...(requestPath ? { requestPath } : {}),
      });
      await db.probeCapabilities();
      return new OnePutPerKey(db);
    };
    const options = {
      // s3rver lists in directory-walk order ("a/a" before "a-c") and its paged
      // listings then skip keys: compare listings as sets and page flat keys.
      // (S3BlobDB sorts a listing that fits one page and refuses a misordered
      // paged one.) s3rver also ignores If-None-Match: the probe reports
      // conditionalWrites false and the suite checks check-then-write semantics.
      orderedListing: false,
      // s3rver stores a key's last segment as a file name plus a suffix of its
      // own (longest: "._S3rver_metadata.json"), within the 255-byte file name limit.
      maxSegmentBytes: 255 - '._S3rver_metadata.json'.length,
    };
    describeBlobDB('S3BlobDB on s3rver', factory(), options);
    // A passed-in client, or requestPath 'sdk', sends every request through the SDK: the same contract.
    describeBlobDB('S3BlobDB on s3rver, SDK request path', factory(undefined, 'sdk'), options);
    describeBlobDB('S3BlobDB on s3rver with a prefix', factory('app/blobs'), {
      ...options,
      maxKeyBytes: 1024 - 'app/blobs/'.length,
    });

    describe('S3BlobDB on s3rver: S3 specifics', () => {
      s3Behaviour(() => ({
        config: () => server.clientConfig(),
        admin: () => admin,
        conditional: false,
        conditionalCopy: false,
        uploads: false,
        discardsAbortedPuts: false,
      }));

      it('honours maxSockets: at most that many connections under 16 concurrent puts', async () => {
        const bucket = await createBucket(admin);
        const connectionsFor = async (maxSockets: number): Promise<number> => {
          const db = new S3BlobDB({ bucket, clientConfig: server.clientConfig(), maxSockets });
          let connections = 0;
          const onConnection = (): void => {
            connections++;
          };
          server.httpServer.on('connection', onConnection);
          try {
            await Promise.all(
              Array.from({ length: 16 }, (_, i) => db.put(`s/${i}`, Buffer.alloc(64 * 1024, i))),
            );
          } finally {
            server.httpServer.off('connection', onConnection);
            await db.close();
          }
          return connections;
        };
        const two = await connectionsFor(2);
        expect(two).to.be.within(1, 2);
        const many = await connectionsFor(16);
        expect(many, 'without the limit the same load opens more sockets').to.be.above(2);
        await deleteBucket(admin, bucket);
      });

      it('the conditional probe says false and overwrite: false still refuses a present key (check, then write)', async () => {
        const bucket = await createBucket(admin);
        const db = new S3BlobDB({ bucket, clientConfig: server.clientConfig() });
        await db.put('k', 'one');
        expect((await db.probeCapabilities()).conditionalWrites).to.equal(false);
        expect(await rejectionOf(db.put('k', 'two', { overwrite: false }))).to.be.instanceOf(BlobExistsError);
        expect((await getBytes(db, 'k')).toString()).to.equal('one');
        await db.close();
        await deleteBucket(admin, bucket);
      });

      it('sorts a misordered listing that fits one page (s3rver walks directories)', async () => {
        const bucket = await createBucket(admin);
        const db = new S3BlobDB({ bucket, clientConfig: server.clientConfig() });
        for (const key of ['a/a', 'a-c', 'a0', 'a']) await db.put(key, key);
        const raw = await rawKeys(admin, bucket);
        expect(raw, 's3rver itself lists out of byte order').to.not.deep.equal(['a', 'a-c', 'a/a', 'a0']);
        expect(await listKeys(db)).to.deep.equal(['a', 'a-c', 'a/a', 'a0']);
        expect(await listKeys(db, { startAfter: 'a-c' })).to.deep.equal(['a/a', 'a0']);
        await db.close();
        await deleteBucket(admin, bucket);
      });

      it('error messages hold no credentials (unknown key id, unreachable endpoint with a password in it)', async () => {
        // s3rver checks the key id but not the signature: the wrong secret is tried on RGW.
        const bucket = await createBucket(admin);
        const secret = 'SeCrEt-never-shown-7f3a9';
        const keyId = 'AKIAFAKEKEYID0001';
        const clients = [
          new S3Client({
            ...server.clientConfig(),
            credentials: { accessKeyId: keyId, secretAccessKey: secret },
          }),
          new S3Client({
            ...server.clientConfig(),
            endpoint: `http://user:${secret}@127.0.0.1:9`,
            maxAttempts: 1,
            credentials: { accessKeyId: keyId, secretAccessKey: secret },
          }),
        ];
        for (const client of clients) {
          const db = new S3BlobDB({ bucket, client });
          // The probe is cached per bucket: ask it about a bucket of its own.
          const prober = new S3BlobDB({ bucket: uniqueName('probe'), client });
          const errors = await Promise.all([
            rejectionOf(db.put('k', 'x')),
            rejectionOf(db.put('k', Readable.from([Buffer.from('x')]), { size: 1 })),
            rejectionOf(db.get('k')),
            rejectionOf(db.stat('k')),
            rejectionOf(db.exists('k')),
            rejectionOf(listKeys(db)),
            rejectionOf(prober.probeCapabilities()),
            db.bulkDelete(['k']).then((r) => r.errors[0]?.error),
          ]);
          expect(db.endpoint).to.not.include(secret);
          for (const err of errors) {
            expect(err).to.be.instanceOf(BackendError);
            for (const text of errorTexts(err)) expect(text).to.not.include(secret);
            expect((err as Error).message).to.not.include(keyId);
          }
          client.destroy();
        }
        await deleteBucket(admin, bucket);
      });
    });
  });

  describe('against a fake S3 endpoint (listing order and per-key delete errors)', () => {
    let fake: Server;
    let endpoint: string;
    let pages: Record<string, { keys: string[]; next?: string; truncated?: boolean }>;
    const listXml = (keys: string[], next: string | undefined, truncated: boolean): string =>
      '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
      `<Name>b</Name><KeyCount>${keys.length}</KeyCount><MaxKeys>1000</MaxKeys>` +
      `<IsTruncated>${truncated ? 'true' : 'false'}</IsTruncated>` +
      (next ? `<NextContinuationToken>${next}</NextContinuationToken>` : '') +
      keys
        .map(
          (k) =>
            `<Contents><Key>${k}</Key><Size>1</Size><ETag>"e"</ETag><LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents>`,
        )
        .join('') +
      '</ListBucketResult>';

    before(async () => {
      fake = createServer((req: IncomingMessage, res: ServerResponse) => {
        const url = new URL(req.url ?? '/', 'http://x');
        req.resume();
        req.on('end', () => {
          res.setHeader('content-type', 'application/xml');
          if (req.method === 'GET' && url.searchParams.get('list-type') === '2') {
            const page = pages[url.searchParams.get('continuation-token') ?? 'first'] ?? { keys: [] };
            res.end(listXml(page.keys, page.next, page.truncated ?? page.next !== undefined));
          } else if (req.method === 'POST' && url.searchParams.has('delete')) {
            res.end(
              '<?xml version="1.0" encoding="UTF-8"?><DeleteResult>' +
                '<Error><Key>pre/locked</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>' +
                '<Error><Key>pre/gone</Key><Code>NoSuchKey</Code><Message>no such key</Message></Error>' +
                '</DeleteResult>',
            );
          } else {
            res.statusCode = 501;
            res.end();
          }
        });
      });
      fake.listen(0, '127.0.0.1');
      await once(fake, 'listening');
      endpoint = `http://127.0.0.1:${(fake.address() as AddressInfo).port}`;
    });
    after(async () => {
      fake.closeAllConnections();
      await new Promise((r) => fake.close(r));
    });

    const fakeDb = (prefix?: string): S3BlobDB =>
      new S3BlobDB({
        bucket: 'b',
        ...(prefix ? { prefix } : {}),
        clientConfig: {
          endpoint,
          region: 'us-east-1',
          forcePathStyle: true,
          maxAttempts: 1,
          credentials: { accessKeyId: 'AKIDFAKE', secretAccessKey: 'fake-secret-fake' },
          requestChecksumCalculation: 'WHEN_REQUIRED',
          responseChecksumValidation: 'WHEN_REQUIRED',
        },
      });

    it('a paged listing whose page is out of byte order is a BackendError naming the server', async () => {
      pages = { first: { keys: ['a', 'c', 'b'], next: 't2' }, t2: { keys: ['d'] } };
      const db = fakeDb();
      const err = await rejectionOf(listKeys(db));
      expect(err).to.be.instanceOf(BackendError);
      expect((err as Error).message).to.include(endpoint);
      expect((err as Error).message).to.include('out of S3 byte order');
      expect((err as Error).message).to.include('"b" came after "c"');
      await db.close();
    });

    it('a page that starts before the previous page ended is a BackendError, after yielding the good page', async () => {
      pages = { first: { keys: ['a', 'c'], next: 't2' }, t2: { keys: ['b', 'd'] } };
      const db = fakeDb();
      const seen: string[] = [];
      const err = await rejectionOf(
        (async () => {
          for await (const info of db.list()) seen.push(info.key);
        })(),
      );
      expect(seen).to.deep.equal(['a', 'c']);
      expect(err).to.be.instanceOf(BackendError);
      expect((err as Error).message).to.match(/out of S3 byte order: "b" came after "c" \(page 2\)/);
      await db.close();
    });

    it('a truncated listing without a continuation token is a BackendError, not an endless loop', async () => {
      pages = { first: { keys: ['a'], truncated: true } };
      const db = fakeDb();
      const err = await rejectionOf(listKeys(db));
      expect(err).to.be.instanceOf(BackendError);
      expect((err as Error).message).to.include('without a continuation token');
      await db.close();
    });

    it('a misordered listing that fits one page is sorted (nothing can be skipped)', async () => {
      pages = { first: { keys: ['b', 'a/x', 'a-y', 'a'] } };
      const db = fakeDb();
      expect(await listKeys(db)).to.deep.equal(['a', 'a-y', 'a/x', 'b']);
      expect(await listKeys(db, { startAfter: 'a-y' })).to.deep.equal(['a/x', 'b']);
      await db.close();
    });

    it('a server that answers 501 to If-None-Match has no conditional writes (the probe says so)', async () => {
      const db = fakeDb();
      const caps = await db.probeCapabilities();
      expect(caps.conditionalWrites).to.equal(false);
      expect(caps.conditional).to.deep.equal({ put: false, multipartComplete: false, copy: false });
      await db.close();
    });

    it('bulkDelete returns per-key server errors without the prefix, and ignores NoSuchKey', async () => {
      const db = fakeDb('pre');
      const res = await db.bulkDelete(['locked', 'gone', 'fine', '../bad']);
      expect(res.errors.map((e) => e.key).sort()).to.deep.equal(['../bad', 'locked']);
      const locked = res.errors.find((e) => e.key === 'locked');
      expect(locked?.error).to.be.instanceOf(BackendError);
      expect(locked?.error.message).to.include('AccessDenied');
      expect(res.errors.find((e) => e.key === '../bad')?.error).to.be.instanceOf(InvalidKeyError);
      await db.close();
    });
  });

  describe('the lean request path (PutObject, HeadObject, GetObject, DeleteObject without the SDK middleware)', () => {
    let server: S3rverHandle;
    let admin: S3Client;
    let bucket: string;
    before(async () => {
      server = await startS3rver();
      admin = server.client();
    });
    after(async () => {
      admin.destroy();
      await server.stop();
    });
    beforeEach(async () => {
      bucket = await createBucket(admin);
    });
    afterEach(async () => {
      await deleteBucket(admin, bucket).catch(() => {});
    });

    /** One request as a fake S3 saw it: method, path, status answered, and its signing scope. */
    interface FakeSeen {
      method: string;
      path: string;
      status: number;
      accessKeyId: string;
      region: string;
      amzDate: string;
      token: string | undefined;
    }

    /**
     * A fake S3 on 127.0.0.1 for what no real server does on demand: it answers
     * every PUT (ETag) and HEAD (8 bytes) unless `refuse` says otherwise.
     */
    async function startFakeS3(
      clockAheadMs: number,
      refuse: (
        seen: Omit<FakeSeen, 'status'>,
      ) => { status: number; headers?: Record<string, string>; body?: string } | undefined,
    ): Promise<{ endpoint: string; seen: FakeSeen[]; stop(): Promise<void> }> {
      const seen: FakeSeen[] = [];
      const fake = createServer((req, res) => {
        req.resume();
        req.on('end', () => {
          const auth = /Credential=([^/]+)\/\d{8}\/([^/]+)\//.exec(req.headers.authorization ?? '');
          const request = {
            method: req.method ?? '',
            path: req.url ?? '',
            accessKeyId: auth?.[1] ?? '',
            region: auth?.[2] ?? '',
            amzDate: String(req.headers['x-amz-date'] ?? ''),
            token: req.headers['x-amz-security-token'] as string | undefined,
          };
          const refusal = refuse(request);
          const status = refusal?.status ?? 200;
          seen.push({ ...request, status });
          const body = refusal?.body ?? '';
          res.writeHead(status, {
            date: new Date(Date.now() + clockAheadMs).toUTCString(),
            'content-length': String(req.method === 'HEAD' && !refusal ? 8 : Buffer.byteLength(body)),
            etag: '"fake"',
            ...(refusal ? { 'content-type': 'application/xml' } : {}),
            ...refusal?.headers,
          });
          res.end(req.method === 'HEAD' ? undefined : body);
        });
      });
      fake.listen(0, '127.0.0.1');
      await once(fake, 'listening');
      return {
        endpoint: `http://127.0.0.1:${(fake.address() as AddressInfo).port}`,
        seen,
        async stop() {
          fake.closeAllConnections();
          await new Promise((r) => fake.close(r));
        },
      };
    }

    const fakeConfig = (endpoint: string): S3ClientConfigLike => ({
      endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: 'AKIDLEAN', secretAccessKey: 'lean-secret-never-shown' },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });

    it('is taken for a client the backend builds; requestPath "sdk" and a passed-in client go through the SDK', async () => {
      const lean = new S3BlobDB({ bucket, clientConfig: server.clientConfig() });
      const sdk = new S3BlobDB({ bucket, clientConfig: server.clientConfig(), requestPath: 'sdk' });
      const client = server.client();
      const passed = new S3BlobDB({ bucket, client });
      expect(await lean.usesLeanPath()).to.equal(true);
      expect(await sdk.usesLeanPath()).to.equal(false);
      expect(await passed.usesLeanPath()).to.equal(false);
      // The lean requests reach the server as the SDK's: one PUT, HEAD, GET and DELETE each.
      const counter = countRequests(lean.client);
      await lean.put('k', 'x');
      await lean.stat('k');
      await getBytes(lean, 'k');
      await lean.delete('k');
      expect(counter.byCommand()).to.deep.equal({
        PutObjectCommand: 1,
        HeadObjectCommand: 2,
        GetObjectCommand: 1,
        DeleteObjectCommand: 1,
      });
      for (const db of [lean, sdk, passed]) await db.close();
      client.destroy();
    });

    it('releases the socket of every answer, bodiless refusals included (200 HEADs of missing keys on 2 sockets)', async () => {
      const db = new S3BlobDB({
        bucket,
        clientConfig: { ...server.clientConfig(), maxAttempts: 1 },
        maxSockets: 2,
        connectionTimeoutMs: 2000,
      });
      expect(await db.usesLeanPath()).to.equal(true);
      const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => db.exists(`missing/${i}`)));
      expect(answers.every((a) => a === false)).to.equal(true);
      await db.close();
    });

    it('sends what the SDK sends for a put (headers, metadata, CRC32 under WHEN_SUPPORTED) and reads back the same info', async () => {
      for (const mode of ['WHEN_REQUIRED', 'WHEN_SUPPORTED'] as const) {
        const config = { ...server.clientConfig(), requestChecksumCalculation: mode };
        const lean = new S3BlobDB({ bucket, clientConfig: config });
        const sdk = new S3BlobDB({ bucket, clientConfig: config, requestPath: 'sdk' });
        const opts: PutOptions = {
          contentType: 'text/plain; charset=utf-8',
          overwrite: false,
          httpMeta: {
            cacheControl: 'max-age=60',
            contentDisposition: 'attachment; filename="a.txt"',
            contentEncoding: 'identity',
            contentLanguage: 'en',
            metadata: { origin: 'lean-test', Mixed: 'Case' },
          },
        };
        const body = randomBytes(3000);
        const sent: Record<string, string>[] = [];
        for (const [db, key] of [
          [lean, `${mode}/lean`],
          [sdk, `${mode}/sdk`],
        ] as const) {
          const counter = countRequests(db.client);
          await db.put(key, body, opts);
          // The last PutObject: the conditional-write probe comes first.
          const put = counter.requests.filter((r) => r.command === 'PutObjectCommand').at(-1);
          counter.remove();
          const wanted = Object.entries(put?.headers ?? {}).filter(
            ([h]) =>
              h.startsWith('content-') ||
              h.startsWith('x-amz-meta-') ||
              h.startsWith('x-amz-checksum') ||
              h === 'x-amz-sdk-checksum-algorithm' ||
              h === 'x-amz-content-sha256' ||
              h === 'if-none-match' ||
              h === 'cache-control',
          );
          sent.push(Object.fromEntries(wanted));
        }
        expect(sent[0], mode).to.deep.equal(sent[1]);
        if (mode === 'WHEN_SUPPORTED') expect(sent[0]).to.have.property('x-amz-checksum-crc32');
        const [a, b] = [await lean.stat(`${mode}/sdk`), await sdk.stat(`${mode}/lean`)];
        expect({ ...a, key: '', lastModified: undefined }).to.deep.equal({
          ...b,
          key: '',
          lastModified: undefined,
        });
        expect((await getBytes(lean, `${mode}/sdk`)).equals(body)).to.equal(true);
        await lean.close();
        await sdk.close();
      }
    });

    it('maps not-found and refused requests to the same errors as the SDK path', async () => {
      // A fake S3 that refuses everything as a wrong secret is refused (s3rver takes any secret).
      const fake = await startFakeS3(0, ({ method }) => ({
        status: 403,
        ...(method === 'HEAD'
          ? {}
          : {
              body: '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error>',
            }),
      }));
      const outcome = async (requestPath: 'lean' | 'sdk') => {
        const db = new S3BlobDB({ bucket, clientConfig: server.clientConfig(), requestPath });
        const bad = new S3BlobDB({
          bucket: 'b',
          clientConfig: { ...fakeConfig(fake.endpoint), maxAttempts: 1 },
          requestPath,
        });
        const out: unknown[] = [];
        for (const err of [
          await rejectionOf(db.get('missing')),
          await rejectionOf(db.stat('missing')),
          await rejectionOf(bad.put('k', 'x')),
          await rejectionOf(bad.stat('k')),
          await rejectionOf(bad.get('k')),
          await rejectionOf(bad.delete('k')),
        ]) {
          const cause = (err as Error).cause as
            | { name?: string; $metadata?: { httpStatusCode?: number } }
            | undefined;
          for (const text of errorTexts(err)) expect(text).to.not.include('lean-secret-never-shown');
          out.push([
            (err as Error).constructor.name,
            cause?.name,
            cause?.$metadata?.httpStatusCode,
            (err as Error).message,
          ]);
        }
        out.push(await db.exists('missing'), await db.delete('missing'));
        await db.close();
        await bad.close();
        return out;
      };
      try {
        const lean = await outcome('lean');
        expect(lean).to.deep.equal(await outcome('sdk'));
        expect((lean[0] as unknown[]).slice(0, 3)).to.deep.equal(['BlobNotFoundError', 'NoSuchKey', 404]);
        expect((lean[1] as unknown[]).slice(0, 3)).to.deep.equal(['BlobNotFoundError', undefined, undefined]);
        expect((lean[2] as unknown[]).slice(0, 3)).to.deep.equal([
          'BackendError',
          'SignatureDoesNotMatch',
          403,
        ]);
        expect((lean[3] as unknown[])[2]).to.equal(403);
      } finally {
        await fake.stop();
      }
    });

    it("retries 503 SlowDown with the client's retry strategy, and gives up after maxAttempts with the SDK's error", async () => {
      let slowdowns = 2;
      const proxy = await startFaultProxy({
        target: server.endpoint,
        rules: [
          {
            rate: 1,
            kinds: ['slowdown'],
            match: ({ method, path }) =>
              (method === 'PUT' && path === `/${bucket}/slow` && slowdowns-- > 0) ||
              (method === 'HEAD' && path === `/${bucket}/always`),
          },
        ],
      });
      try {
        const db = new S3BlobDB({
          bucket,
          clientConfig: { ...server.clientConfig(), endpoint: proxy.endpoint },
        });
        expect(await db.usesLeanPath()).to.equal(true);
        await db.put('slow', 'eventually');
        expect(proxy.count('PUT', (p) => p === `/${bucket}/slow`)).to.equal(3);
        expect(proxy.faults('slowdown')).to.equal(2);
        expect((await getBytes(db, 'slow')).toString()).to.equal('eventually');
        const err = await rejectionOf(db.stat('always'));
        expect(err).to.be.instanceOf(BackendError);
        const cause = (err as Error).cause as { $metadata?: { httpStatusCode?: number; attempts?: number } };
        expect(cause.$metadata?.httpStatusCode).to.equal(503);
        expect(cause.$metadata?.attempts).to.equal(3);
        expect((cause.$metadata as { totalRetryDelay?: number }).totalRetryDelay).to.be.greaterThan(0);
        expect(proxy.count('HEAD', (p) => p === `/${bucket}/always`)).to.equal(3);
        await db.close();
      } finally {
        await proxy.stop();
      }
    });

    for (const requestPath of ['lean', 'sdk'] as const) {
      it(`corrects the clock after RequestTimeTooSkewed and retries (${requestPath} path)`, async () => {
        // This server's clock runs two hours ahead; it refuses requests dated more than 15 minutes off.
        const ahead = 2 * 3600_000;
        const fake = await startFakeS3(ahead, ({ amzDate }) => {
          const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate);
          const signed = m ? Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!) : 0;
          const serverNow = Date.now() + ahead;
          if (Math.abs(serverNow - signed) <= 15 * 60_000) return undefined;
          return {
            status: 403,
            body: `<?xml version="1.0" encoding="UTF-8"?><Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the request time and the current time is too large.</Message><ServerTime>${new Date(serverNow).toISOString()}</ServerTime></Error>`,
          };
        });
        try {
          const db = new S3BlobDB({ bucket: 'b', clientConfig: fakeConfig(fake.endpoint), requestPath });
          await db.put('k', 'x');
          expect(fake.seen.map((r) => r.status)).to.deep.equal([403, 200]);
          // The offset sticks: the next request is dated right the first time.
          const head = await db.stat('k');
          expect(head.size).to.equal(8);
          expect(fake.seen.map((r) => r.status)).to.deep.equal([403, 200, 200]);
          await db.close();
        } finally {
          await fake.stop();
        }
      });

      it(`follows a 301 to the bucket's region and signs for it (${requestPath} path)`, async () => {
        const fake = await startFakeS3(0, ({ region, method }) =>
          region === 'eu-central-1'
            ? undefined
            : {
                status: 301,
                headers: { 'x-amz-bucket-region': 'eu-central-1' },
                ...(method === 'HEAD'
                  ? {}
                  : {
                      body: '<?xml version="1.0" encoding="UTF-8"?><Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be addressed using the specified endpoint.</Message></Error>',
                    }),
              },
        );
        try {
          const db = new S3BlobDB({ bucket: 'b', clientConfig: fakeConfig(fake.endpoint), requestPath });
          await db.put('k', 'x');
          expect((await db.stat('k')).size).to.equal(8);
          const statuses = fake.seen.map((r) => `${r.method} ${r.status} ${r.region}`);
          expect(statuses.slice(0, 2)).to.deep.equal(['PUT 301 us-east-1', 'PUT 200 eu-central-1']);
          expect(statuses.at(-1)).to.equal('HEAD 200 eu-central-1');
          // The lean path remembers the region: the HEAD went there directly.
          if (requestPath === 'lean') expect(statuses).to.have.length(3);
          await db.close();
        } finally {
          await fake.stop();
        }
      });
    }

    it('signs with credentials from the default chain and picks up refreshed ones', async () => {
      let issued = 0;
      const creds = createServer((_req, res) => {
        issued++;
        res.setHeader('content-type', 'application/json');
        // Expiring within the SDK's five-minute refresh window: every request asks again.
        res.end(
          JSON.stringify({
            AccessKeyId: `AKIDROTATED${issued}`,
            SecretAccessKey: `rotated-secret-${issued}`,
            Token: `token-${issued}`,
            Expiration: new Date(Date.now() + 120_000).toISOString(),
          }),
        );
      });
      creds.listen(0, '127.0.0.1');
      await once(creds, 'listening');
      const fake = await startFakeS3(0, () => undefined);
      const saved = { ...process.env };
      for (const name of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE']) {
        delete process.env[name];
      }
      process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI = `http://127.0.0.1:${(creds.address() as AddressInfo).port}/creds`;
      process.env.AWS_CONFIG_FILE = '/nonexistent/blobshift-test-config';
      process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent/blobshift-test-credentials';
      try {
        const { credentials: _none, ...config } = fakeConfig(fake.endpoint);
        const db = new S3BlobDB({ bucket: 'b', clientConfig: config });
        expect(await db.usesLeanPath()).to.equal(true);
        // The SDK's memoized provider refreshes in the background: a refreshed key shows by the third request.
        await db.put('k', 'x');
        await db.stat('k');
        await db.stat('k');
        const keys = fake.seen.map((r) => r.accessKeyId);
        expect(keys[0]).to.match(/^AKIDROTATED\d+$/);
        expect(new Set(keys).size, 'a refreshed key signs a later request').to.be.at.least(2);
        expect(fake.seen.every((r) => r.token?.startsWith('token-'))).to.equal(true);
        await db.close();
      } finally {
        for (const name of Object.keys(process.env)) if (!(name in saved)) delete process.env[name];
        Object.assign(process.env, saved);
        await fake.stop();
        creds.closeAllConnections();
        await new Promise((r) => creds.close(r));
      }
    });
  });

  describe('isS3NotFoundError', () => {
    it('is true for NotFound, NoSuchKey and a bare 404; false for a missing bucket or upload and others', () => {
      expect(isS3NotFoundError(Object.assign(new Error('x'), { name: 'NotFound' }))).to.equal(true);
      expect(isS3NotFoundError(Object.assign(new Error('x'), { name: 'NoSuchKey' }))).to.equal(true);
      expect(isS3NotFoundError({ name: 'Unknown', $metadata: { httpStatusCode: 404 } })).to.equal(true);
      expect(isS3NotFoundError({ name: 'NoSuchBucket', $metadata: { httpStatusCode: 404 } })).to.equal(false);
      expect(isS3NotFoundError({ Code: 'NoSuchUpload', $metadata: { httpStatusCode: 404 } })).to.equal(false);
      expect(isS3NotFoundError({ name: 'AccessDenied', $metadata: { httpStatusCode: 403 } })).to.equal(false);
      expect(isS3NotFoundError(new Error('not found'))).to.equal(false);
      expect(isS3NotFoundError(undefined)).to.equal(false);
      expect(isS3NotFoundError('NotFound')).to.equal(false);
    });
  });

  if (!RGW_ENDPOINT) {
    announce('BLOBSHIFT_TEST_RGW', 'S3BlobDB on Ceph RGW');
    return;
  }

  describe('on Ceph RGW', () => {
    let admin: S3Client;
    let bucket: string;
    before(async () => {
      admin = new S3Client({ ...rgwClientConfig() });
      bucket = await createBucket(admin);
    });
    after(async () => {
      await deleteBucket(admin, bucket);
      admin.destroy();
    });

    // One shared bucket: the suite writes every test under its own namespace.
    const factory = (config: () => S3ClientConfigLike, prefix?: string) => async () => {
      const db = new S3BlobDB({ bucket, clientConfig: config(), ...(prefix ? { prefix } : {}) });
      await db.probeCapabilities();
      return db;
    };
    // RGW lists in byte order and honours If-None-Match on PutObject: nothing switched off.
    describeBlobDB(
      'S3BlobDB on RGW, WHEN_REQUIRED checksums',
      factory(() => rgwClientConfig('WHEN_REQUIRED')),
    );
    describeBlobDB(
      'S3BlobDB on RGW, WHEN_SUPPORTED checksums',
      factory(() => rgwClientConfig('WHEN_SUPPORTED')),
    );
    describeBlobDB(
      'S3BlobDB on RGW with a prefix',
      factory(() => rgwClientConfig('WHEN_SUPPORTED'), 'tenant-1/blobs'),
      { maxKeyBytes: 1024 - 'tenant-1/blobs/'.length },
    );

    for (const mode of ['WHEN_REQUIRED', 'WHEN_SUPPORTED'] as const) {
      describe(`S3BlobDB on RGW, ${mode}: S3 specifics`, () => {
        s3Behaviour(() => ({
          config: () => rgwClientConfig(mode),
          admin: () => admin,
          conditional: true,
          conditionalCopy: false,
          uploads: true,
          discardsAbortedPuts: true,
        }));
      });
    }

    describe('S3BlobDB on RGW: conditional writes', () => {
      let b: string;
      beforeEach(async () => {
        b = await createBucket(admin);
      });
      afterEach(async () => {
        await deleteBucket(admin, b);
      });

      it('racing overwrite: false puts of a known-size stream over the threshold: exactly one winner', async () => {
        const db = new S3BlobDB({
          bucket: b,
          clientConfig: rgwClientConfig(),
          partSize: 5 * MiB,
          multipartThreshold: 5 * MiB,
        });
        const results = await Promise.allSettled(
          [0x41, 0x42, 0x43, 0x44].map((fill) =>
            db.put('race', bytesStream(6 * MiB, fill), { size: 6 * MiB, overwrite: false }),
          ),
        );
        expect(results.filter((r) => r.status === 'fulfilled')).to.have.length(1);
        for (const r of results)
          if (r.status === 'rejected') expect(r.reason).to.be.instanceOf(BlobExistsError);
        expect(await db.size('race')).to.equal(6 * MiB);
        expect(await listUploads(admin, b)).to.equal(0);
        await db.close();
      });

      it('where CompleteMultipartUpload honours If-None-Match, its 412 aborts the upload (BlobExistsError)', async () => {
        // Ceph RGW before Squid ignores If-None-Match on CompleteMultipartUpload
        // (the probe finds that out); this stand-in answers the completion as
        // AWS does, 412 when the key exists, checking the header on the wire.
        const client = new S3Client({ ...rgwClientConfig() });
        const plain = new S3Client({ ...rgwClientConfig() });
        const seenHeaders: (string | undefined)[] = [];
        client.middlewareStack.add(
          (next, context) => async (args) => {
            if (context.commandName === 'CompleteMultipartUploadCommand') {
              const headers = (args.request as { headers: Record<string, string> }).headers;
              seenHeaders.push(headers['if-none-match']);
              const input = args.input as { Bucket: string; Key: string };
              if (headers['if-none-match'] === '*') {
                const present = await plain
                  .send(new HeadObjectCommand({ Bucket: input.Bucket, Key: input.Key }))
                  .then(
                    () => true,
                    () => false,
                  );
                if (present) throw preconditionFailed();
              }
            }
            return next(args);
          },
          { step: 'finalizeRequest', priority: 'low', name: 'conditionalCompleteStandIn' },
        );
        const db = new S3BlobDB({ bucket: b, client, partSize: 5 * MiB, multipartThreshold: 5 * MiB });
        const caps = await db.probeCapabilities();
        expect(caps.conditional.put).to.equal(true);
        expect(caps.conditional.multipartComplete, 'asked when first needed').to.equal(false);
        // The first conditional upload that goes multipart asks about completions.
        await db.put('first', bytesStream(6 * MiB), { overwrite: false });
        expect(db.capabilities.conditional.multipartComplete).to.equal(true);
        await db.put('k', 'original', { contentType: 'text/plain' });
        const counter = countRequests(client);
        const err = await rejectionOf(db.put('k', bytesStream(12 * MiB), { overwrite: false }));
        expect(err).to.be.instanceOf(BlobExistsError);
        expect(counter.count('UploadPartCommand'), 'the parts went up first').to.be.at.least(2);
        expect(counter.count('AbortMultipartUploadCommand')).to.equal(1);
        expect(seenHeaders.at(-1), 'If-None-Match reached CompleteMultipartUpload').to.equal('*');
        expect(await listUploads(admin, b)).to.equal(0);
        expect((await getBytes(db, 'k')).toString()).to.equal('original');
        // A new key completes normally, with the header.
        await db.put('fresh', bytesStream(11 * MiB), { overwrite: false });
        expect(await db.size('fresh')).to.equal(11 * MiB);
        expect(seenHeaders.at(-1)).to.equal('*');
        await db.close();
        client.destroy();
        plain.destroy();
      });

      it('where it does not, an unknown-length multipart put with overwrite: false is refused by a HEAD first', async () => {
        const db = new S3BlobDB({
          bucket: b,
          clientConfig: rgwClientConfig(),
          partSize: 5 * MiB,
          multipartThreshold: 5 * MiB,
        });
        const caps = await db.probeCapabilities();
        expect(caps.conditionalWrites).to.equal(true);
        await db.put('first', bytesStream(6 * MiB), { overwrite: false });
        await db.put('k', 'original');
        const counter = countRequests(db.client);
        const err = await rejectionOf(db.put('k', bytesStream(12 * MiB), { overwrite: false }));
        expect(err).to.be.instanceOf(BlobExistsError);
        if (db.capabilities.conditional.multipartComplete) {
          expect(counter.count('AbortMultipartUploadCommand')).to.equal(1);
        } else {
          expect(counter.byCommand()).to.deep.equal({ HeadObjectCommand: 1 });
        }
        expect(await listUploads(admin, b)).to.equal(0);
        expect((await getBytes(db, 'k')).toString()).to.equal('original');
        await db.close();
      });

      for (const requestPath of ['lean', 'sdk'] as const) {
        it(`a 409 ConditionalRequestConflict is retried for an in-memory body (${requestPath} path)`, async () => {
          let conflicts = 0;
          // RGW makes no 409 on demand: a proxy answers the first two conditional PUTs of "c" with one.
          const proxy = await startInterceptor(RGW_ENDPOINT as string, (req) => {
            if (
              req.method === 'PUT' &&
              (req.url ?? '').split('?')[0] === `/${b}/c` &&
              req.headers['if-none-match'] === '*' &&
              conflicts < 2
            ) {
              conflicts++;
              return {
                answer: {
                  status: 409,
                  headers: { 'content-type': 'application/xml' },
                  body: '<?xml version="1.0" encoding="UTF-8"?><Error><Code>ConditionalRequestConflict</Code><Message>conflict</Message></Error>',
                },
              };
            }
            return undefined;
          });
          try {
            const db = new S3BlobDB({
              bucket: b,
              clientConfig: { ...rgwClientConfig(), endpoint: proxy.endpoint },
              requestPath,
            });
            await db.probeCapabilities();
            const info = await db.put('c', 'content', { overwrite: false });
            expect(conflicts).to.equal(2);
            expect(info.size).to.equal(7);
            expect((await getBytes(db, 'c')).toString()).to.equal('content');
            await db.close();
          } finally {
            await proxy.stop();
          }
        });
      }

      it('error messages hold no credentials (wrong secret, unknown key id)', async () => {
        const secret = 'RgwWrongSecret-never-shown-51';
        const keyId = 'AKIAUNKNOWNKEY0002';
        for (const credentials of [
          { accessKeyId: RGW_CREDENTIALS.accessKeyId, secretAccessKey: secret },
          { accessKeyId: keyId, secretAccessKey: secret },
        ]) {
          const client = new S3Client({ ...rgwClientConfig(), credentials, maxAttempts: 1 });
          const db = new S3BlobDB({ bucket: b, client });
          const prober = new S3BlobDB({ bucket: uniqueName('probe'), client });
          // The same backend on the lean request path (a client it builds).
          const lean = new S3BlobDB({
            bucket: b,
            clientConfig: { ...rgwClientConfig('WHEN_REQUIRED'), credentials, maxAttempts: 1 },
          });
          const errors = await Promise.all([
            rejectionOf(db.put('k', 'x')),
            rejectionOf(db.put('k', new PassThrough().end('x') as PassThrough, { size: 1 })),
            rejectionOf(db.get('k')),
            rejectionOf(db.stat('k')),
            rejectionOf(listKeys(db)),
            rejectionOf(prober.probeCapabilities()),
            db.bulkDelete(['k']).then((r) => r.errors[0]?.error),
            rejectionOf(lean.put('k', 'x')),
            rejectionOf(lean.get('k')),
            rejectionOf(lean.stat('k')),
            rejectionOf(lean.delete('k')),
          ]);
          expect(await lean.usesLeanPath()).to.equal(true);
          await lean.close();
          for (const err of errors) {
            expect(err).to.be.instanceOf(BackendError);
            expect((err as Error).message).to.match(
              /SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied|403/,
            );
            for (const text of errorTexts(err)) expect(text).to.not.include(secret);
            expect((err as Error).message).to.not.include(credentials.accessKeyId);
          }
          client.destroy();
        }
      });

      it('streams a known-size body as one PutObject in either checksum mode', async () => {
        for (const mode of ['WHEN_REQUIRED', 'WHEN_SUPPORTED'] as const) {
          const db = new S3BlobDB({ bucket: b, clientConfig: rgwClientConfig(mode) });
          const counter = countRequests(db.client);
          await db.put(`s-${mode}`, bytesStream(2 * MiB, 0x63), { size: 2 * MiB });
          expect(counter.byCommand()).to.deep.equal({ PutObjectCommand: 1 });
          expect(counter.requests[0]?.headers['content-length']).to.equal(String(2 * MiB));
          const back = await readAll(await db.get(`s-${mode}`));
          expect(back.equals(Buffer.alloc(2 * MiB, 0x63))).to.equal(true);
          await db.close();
        }
      });
    });
  });
});
