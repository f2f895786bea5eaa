/**
 * The ways a put's body reaches S3: one PutObject of an in-memory body (lean
 * path where it fits, a 409 conflict re-sent), one streamed PutObject of a
 * known size, and a multipart upload (`multipart.ts`) of a large body, a
 * known size read in bounded memory or a stream of unknown length. A
 * multipart result is confirmed with a HEAD.
 */
import { finished, pipeline, type Readable, Transform, type TransformCallback } from 'node:stream';
import type { PutObjectCommand, PutObjectCommandInput } from '@aws-sdk/client-s3';
import { ByteCounter } from '../../contract/body.js';
import { BackendError, BlobExistsError, describeKey, SizeMismatchError } from '../../contract/errors.js';
import type { BlobInfo, PutOptions } from '../../contract/types.js';
import {
  CONFLICT_ATTEMPTS,
  MAX_PARTS,
  MiB,
  putResult,
  type S3Context,
  type S3Io,
  stripQuotes,
} from './common.js';
import { isConditionalConflict, isPreconditionFailed } from './errors.js';
import { type LeanPutInput, leanPutFits } from './lean.js';
import {
  bufferParts,
  type MultipartUpload,
  multipartUpload,
  type Part,
  PartCutter,
  PartTagger,
  S3Failure,
  sendParts,
} from './multipart.js';

/** Maps a failed put: 412 → BlobExistsError; everything else → BackendError. */
export function putError(ctx: S3Context, key: string, op: string, err: unknown, conditional: boolean): Error {
  if (conditional && isPreconditionFailed(err)) return new BlobExistsError(key, { cause: err });
  if (conditional && isConditionalConflict(err)) {
    return new BackendError(
      `S3 ${op} of ${describeKey(key)} in ${ctx.where()} met a concurrent conditional write ` +
        `(409 ConditionalRequestConflict); the streamed body cannot be re-sent: retry the put`,
      { cause: err, key },
    );
  }
  return ctx.backendError(op, key, err);
}

/** One PutObject of an in-memory body; a 409 from a concurrent conditional write is sent again. */
export async function putBuffer(
  ctx: S3Context,
  key: string,
  params: PutObjectCommandInput,
  buf: Buffer,
  opts: PutOptions,
): Promise<BlobInfo> {
  const conditional = params.IfNoneMatch !== undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      const lean = await ctx.lean();
      let etag: string | undefined;
      if (lean && leanPutFits(params, buf.length)) {
        etag = (await lean.put(params as LeanPutInput, buf)).ETag;
      } else {
        const { sdk, client } = await ctx.io();
        const command = new sdk.s3.PutObjectCommand({ ...params, Body: buf, ContentLength: buf.length });
        etag = (await client.send(command)).ETag;
      }
      return putResult(key, buf.length, etag, opts);
    } catch (err) {
      // An in-memory body can be re-sent: a 409 from a concurrent conditional write is retried.
      if (conditional && isConditionalConflict(err) && attempt < CONFLICT_ATTEMPTS) {
        await new Promise((r) => setTimeout(r, 25 * 2 ** attempt * (0.5 + Math.random())));
        continue;
      }
      throw putError(ctx, key, 'PutObject', err, conditional);
    }
  }
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

/**
 * One PutObject with `Content-Length: size` and the body streamed through a
 * byte counter. On a mismatch or a failed source the request is aborted
 * before its last bytes leave, so the server never stores the object.
 */
export async function putStream(
  ctx: S3Context,
  key: string,
  params: PutObjectCommandInput,
  source: Readable,
  size: number,
  opts: PutOptions,
): Promise<BlobInfo> {
  const { sdk, client } = await ctx.io();
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
    const command = new sdk.s3.PutObjectCommand({ ...params, Body: hold, ContentLength: size });
    withoutStreamingChecksum(command);
    // No overall deadline for a streamed body (it moves at the source's pace);
    // the idle-socket timeout still ends a stalled request.
    const out = await client.send(command, { abortSignal: abort.signal, requestTimeout: 0 });
    return putResult(key, size, out.ETag, opts);
  } catch (err) {
    hold.destroy();
    if (streamError !== undefined) throw streamError;
    throw putError(ctx, key, 'PutObject', err, params.IfNoneMatch !== undefined);
  }
}

/** The rest of `parts` after the ones already read. */
async function* followedBy(first: readonly Part[], rest: AsyncGenerator<Part>): AsyncGenerator<Part> {
  yield* first;
  yield* rest;
}

/**
 * A multipart upload of an in-memory body, a stream of known `size`, or a
 * stream of unknown length (`size` undefined), in bounded memory: a stream
 * goes through `queueSize + 1` part buffers, allocated once, and is not read
 * while every buffer is in flight. The upload completes only after the body
 * has ended (with exactly `size` bytes where given); a short, long or failed
 * stream, or a failed part, aborts it. Completion carries `If-None-Match: *`
 * when the put is conditional (412 → BlobExistsError), and a HEAD then
 * confirms the object is this upload's. A blob too large for 10,000 parts of
 * `partSize` gets larger parts. A body of unknown length (or in memory) that
 * fits one part goes as one PutObject instead.
 */
export async function putParts(
  ctx: S3Context,
  key: string,
  params: PutObjectCommandInput,
  body: Readable | Buffer,
  size: number | undefined,
  opts: PutOptions,
): Promise<BlobInfo> {
  const io = await ctx.io();
  const partSize =
    size === undefined ? ctx.partSize : Math.max(ctx.partSize, Math.ceil(size / MAX_PARTS / MiB) * MiB);
  const conditional = params.IfNoneMatch !== undefined;
  const source = Buffer.isBuffer(body) ? undefined : body;
  const partCount = size === undefined ? Number.POSITIVE_INFINITY : Math.max(1, Math.ceil(size / partSize));
  const cutter =
    source && new PartCutter(key, source, partSize, Math.min(ctx.queueSize, partCount) + 1, size);
  const tagger = new PartTagger(partSize);
  let completedTag: string | undefined;
  try {
    let parts = cutter ? cutter.parts() : bufferParts(body as Buffer, partSize);
    if (size === undefined || !cutter) {
      // A body that fits one part goes as one PutObject with its exact length.
      const lead = await leadingParts(parts, partSize);
      if (lead.length < 2) {
        const only = lead[0] ?? { buffer: Buffer.alloc(0), length: 0 };
        await parts.return(undefined);
        return await putOnePart(ctx, io, key, params, only.buffer.subarray(0, only.length), opts);
      }
      parts = followedBy(lead, parts);
    }
    const { IfNoneMatch: _condition, Body: _body, ContentLength: _length, ...createParams } = params;
    const checksums = (await io.client.config.requestChecksumCalculation()) === 'WHEN_SUPPORTED';
    const create = { ...createParams, ...(checksums ? { ChecksumAlgorithm: 'CRC32' as const } : {}) };
    const send = (upload: MultipartUpload) =>
      sendParts(upload, parts, { queueSize: ctx.queueSize, tagger, release: (b) => cutter?.release(b) });
    completedTag = stripQuotes(await multipartUpload(io, create, send, conditional));
  } catch (err) {
    if (source && !source.destroyed) source.destroy();
    if (err instanceof S3Failure) throw putError(ctx, key, 'multipart upload', err.cause, conditional);
    throw err;
  }
  const sent = cutter ? cutter.total : (body as Buffer).length;
  const parts = Math.max(1, Math.ceil(sent / partSize));
  return confirmMultipart(ctx, io, key, params, sent, parts, tagger, completedTag, opts);
}

/**
 * The first part, and the second where there is one: fewer than two means
 * the body fits one part. A full first part may still be the last; only
 * asking for the next tells.
 */
async function leadingParts(parts: AsyncGenerator<Part>, partSize: number): Promise<Part[]> {
  const first = await parts.next();
  if (first.done) return [];
  if (first.value.length < partSize) return [first.value];
  const second = await parts.next();
  return second.done ? [first.value] : [first.value, second.value];
}

/** One PutObject standing in for a multipart upload whose body fits one part. */
async function putOnePart(
  ctx: S3Context,
  io: S3Io,
  key: string,
  params: PutObjectCommandInput,
  buf: Buffer,
  opts: PutOptions,
): Promise<BlobInfo> {
  try {
    const out = await io.client.send(
      new io.sdk.s3.PutObjectCommand({ ...params, Body: buf, ContentLength: buf.length }),
    );
    return putResult(key, buf.length, out.ETag, opts);
  } catch (err) {
    throw putError(ctx, key, 'multipart upload', err, params.IfNoneMatch !== undefined);
  }
}

/**
 * HEAD after a multipart completion (a completion that left out a part
 * stores a short object). The object is recognised as this upload's by its
 * ETag (the MD5 of the parts' MD5s, or the completion's ETag): this upload's
 * object with fewer parts or another size is deleted and the put fails. An
 * object a concurrent writer put there since is left alone.
 */
async function confirmMultipart(
  ctx: S3Context,
  io: S3Io,
  key: string,
  params: PutObjectCommandInput,
  sent: number,
  parts: number,
  tagger: PartTagger,
  completedTag: string | undefined,
  opts: PutOptions,
): Promise<BlobInfo> {
  let head: { ContentLength?: number | undefined; ETag?: string | undefined };
  try {
    head = await io.client.send(new io.sdk.s3.HeadObjectCommand({ Bucket: ctx.bucket, Key: params.Key }));
  } catch (err) {
    throw ctx.backendError('HeadObject after a multipart upload', key, err);
  }
  const stored = head.ContentLength ?? -1;
  const headTag = stripQuotes(head.ETag);
  const ours = headTag !== undefined && (headTag === completedTag || headTag === tagger.multipartTag(parts));
  let oursShort = false;
  for (let k = 1; k < parts && !ours && !oursShort; k++) oursShort = headTag === tagger.multipartTag(k);
  if (stored === sent && !oursShort) return putResult(key, sent, headTag ?? completedTag, opts);
  if (ours || oursShort) {
    await io.client
      .send(new io.sdk.s3.DeleteObjectCommand({ Bucket: ctx.bucket, Key: params.Key }))
      .catch(() => {});
    throw new SizeMismatchError(key, sent, stored);
  }
  if (completedTag !== undefined && headTag !== undefined) {
    // The completion said another ETag: a concurrent writer replaced this upload's object.
    return putResult(key, sent, completedTag, opts);
  }
  throw new BackendError(
    `after the multipart upload of ${describeKey(key)} in ${ctx.where()} the object holds ${stored} bytes, ` +
      `not ${sent}, and its ETag is not this upload's: a concurrent writer replaced it, or the server stored it ` +
      'short. It was left in place; check the key and put again.',
    { key },
  );
}

/**
 * Reads a small stream whole into one buffer of `size` bytes, failing with
 * SizeMismatchError unless it holds exactly that many (the source is destroyed
 * on the first extra byte). No pipeline: at thousands of small blobs a second,
 * a pipeline's per-call AbortController and error objects are measurable.
 */
export function readExactly(key: string, source: Readable, size: number): Promise<Buffer> {
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
