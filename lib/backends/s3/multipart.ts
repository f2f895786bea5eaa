/**
 * The multipart upload, once: create → parts → complete → abort on any
 * failure (`multipartUpload`). Every multipart path goes through it: a put
 * of a large stream or buffer (parts cut by `PartCutter`, sent by
 * `sendParts`), a server-side copy above 5 GiB (UploadPartCopy ranges), and
 * the probe of conditional completion. Completion carries `If-None-Match: *`
 * when the write is conditional; the caller reads a 412 from it.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { CompletedPart, CreateMultipartUploadCommandInput } from '@aws-sdk/client-s3';
import { SizeMismatchError } from '../../contract/errors.js';
import type { S3Io } from './common.js';

/** Which step of a multipart upload an S3 request failed in. */
export type MultipartStep = 'create' | 'part' | 'complete';

/** An S3 request's failure inside a multipart upload, told apart from the source stream's. */
export class S3Failure extends Error {
  readonly step: MultipartStep;
  constructor(cause: unknown, step: MultipartStep) {
    super('S3 request failed', { cause });
    this.step = step;
  }
}

/** One multipart upload that has been created: its parts, its completion, its abort. */
export class MultipartUpload {
  readonly #io: S3Io;
  readonly #bucket: string | undefined;
  readonly #key: string | undefined;
  readonly uploadId: string;

  private constructor(io: S3Io, bucket: string | undefined, key: string | undefined, uploadId: string) {
    this.#io = io;
    this.#bucket = bucket;
    this.#key = key;
    this.uploadId = uploadId;
  }

  /** CreateMultipartUpload; an S3 failure rejects as `S3Failure` (step `create`). */
  static async create(io: S3Io, input: CreateMultipartUploadCommandInput): Promise<MultipartUpload> {
    let uploadId: string | undefined;
    try {
      uploadId = (await io.client.send(new io.sdk.s3.CreateMultipartUploadCommand(input))).UploadId;
    } catch (err) {
      throw new S3Failure(err, 'create');
    }
    if (uploadId === undefined) throw new Error('CreateMultipartUpload returned no UploadId');
    return new MultipartUpload(io, input.Bucket, input.Key, uploadId);
  }

  /** UploadPart of an in-memory body (the SDK retries it by itself); rejects with S3's error as it is. */
  async uploadPart(partNumber: number, body: Buffer): Promise<CompletedPart> {
    const out = await this.#io.client.send(
      new this.#io.sdk.s3.UploadPartCommand({
        Bucket: this.#bucket,
        Key: this.#key,
        UploadId: this.uploadId,
        PartNumber: partNumber,
        Body: body,
        ContentLength: body.length,
      }),
    );
    if (!out.ETag) throw new Error(`UploadPart ${partNumber} returned no ETag`);
    return {
      PartNumber: partNumber,
      ETag: out.ETag,
      ...(out.ChecksumCRC32 ? { ChecksumCRC32: out.ChecksumCRC32 } : {}),
    };
  }

  /** UploadPartCopy of `range` (inclusive byte offsets) of `copySource`, pinned to `etag` when given. */
  async uploadPartCopy(
    partNumber: number,
    copySource: string,
    range: readonly [number, number],
    etag: string | undefined,
  ): Promise<CompletedPart> {
    const out = await this.#io.client.send(
      new this.#io.sdk.s3.UploadPartCopyCommand({
        Bucket: this.#bucket,
        Key: this.#key,
        UploadId: this.uploadId,
        PartNumber: partNumber,
        CopySource: copySource,
        CopySourceRange: `bytes=${range[0]}-${range[1]}`,
        ...(etag ? { CopySourceIfMatch: `"${etag}"` } : {}),
      }),
    );
    return { PartNumber: partNumber, ETag: out.CopyPartResult?.ETag };
  }

  /** CompleteMultipartUpload, with `If-None-Match: *` when `conditional`; resolves the ETag S3 gave. */
  async complete(parts: CompletedPart[], conditional: boolean): Promise<string | undefined> {
    try {
      const out = await this.#io.client.send(
        new this.#io.sdk.s3.CompleteMultipartUploadCommand({
          Bucket: this.#bucket,
          Key: this.#key,
          UploadId: this.uploadId,
          ...(conditional ? { IfNoneMatch: '*' } : {}),
          MultipartUpload: { Parts: parts },
        }),
      );
      return out.ETag;
    } catch (err) {
      throw new S3Failure(err, 'complete');
    }
  }

  /** AbortMultipartUpload, best effort: an upload left behind is S3's to expire. */
  async abort(): Promise<void> {
    await this.#io.client
      .send(
        new this.#io.sdk.s3.AbortMultipartUploadCommand({
          Bucket: this.#bucket,
          Key: this.#key,
          UploadId: this.uploadId,
        }),
      )
      .catch(() => {});
  }
}

/**
 * The lifecycle: creates the upload, lets `sendParts` upload the parts (it
 * settles every part it started before it resolves or rejects), completes
 * it (conditionally when asked), and aborts it after any failure, so no
 * upload is left behind and no object appears unless every step succeeded.
 * Resolves the completion's ETag (with its quotes, as S3 gave it).
 */
export async function multipartUpload(
  io: S3Io,
  input: CreateMultipartUploadCommandInput,
  sendParts: (upload: MultipartUpload) => Promise<CompletedPart[]>,
  conditional: boolean,
): Promise<string | undefined> {
  const upload = await MultipartUpload.create(io, input);
  let completed = false;
  try {
    const parts = await sendParts(upload);
    const etag = await upload.complete(parts, conditional);
    completed = true;
    return etag;
  } finally {
    if (!completed) await upload.abort();
  }
}

/** A part's bytes: the first `length` bytes of `buffer`. */
export interface Part {
  buffer: Buffer;
  length: number;
}

/**
 * Cuts a stream into parts of `partSize` in bounded memory: at most
 * `maxBuffers` part buffers, allocated once each and reused as parts are
 * sent (`release`). The bytes are copied from the stream straight into the
 * part being filled (no concatenation, no garbage per part). With `size`
 * given, a stream that turns out longer fails on the first extra byte and a
 * shorter one at its end, with `SizeMismatchError`, before its last part.
 */
export class PartCutter {
  readonly #key: string;
  readonly #source: Readable;
  readonly #partSize: number;
  readonly #maxBuffers: number;
  readonly #size: number | undefined;
  readonly #free: Buffer[] = [];
  #allocated = 0;
  /** Bytes read from the stream so far. */
  total = 0;

  constructor(key: string, source: Readable, partSize: number, maxBuffers: number, size?: number) {
    this.#key = key;
    this.#source = source;
    this.#partSize = partSize;
    this.#maxBuffers = maxBuffers;
    this.#size = size;
  }

  /** Gives a part's buffer back once the part is sent (or failed). */
  release(buffer: Buffer): void {
    this.#free.push(buffer);
  }

  #take(): Buffer {
    const reused = this.#free.pop();
    if (reused) return reused;
    if (this.#allocated >= this.#maxBuffers) throw new Error('no free part buffer (internal error)');
    this.#allocated++;
    return Buffer.allocUnsafeSlow(this.#partSize);
  }

  /** The parts, in order; the last may be short (or empty, for an empty stream). */
  async *parts(): AsyncGenerator<Part> {
    const size = this.#size;
    let current = this.#take();
    let filled = 0;
    let yielded = false;
    for await (const piece of this.#source) {
      const chunk: Buffer = typeof piece === 'string' ? Buffer.from(piece) : piece;
      this.total += chunk.length;
      if (size !== undefined && this.total > size) throw new SizeMismatchError(this.#key, size, this.total);
      for (let offset = 0; offset < chunk.length; ) {
        const n = Math.min(this.#partSize - filled, chunk.length - offset);
        chunk.copy(current, filled, offset, offset + n);
        filled += n;
        offset += n;
        if (filled === this.#partSize) {
          yielded = true;
          yield { buffer: current, length: filled };
          filled = 0;
          current = this.#take();
        }
      }
    }
    if (size !== undefined && this.total !== size) throw new SizeMismatchError(this.#key, size, this.total);
    if (filled > 0 || !yielded) yield { buffer: current, length: filled };
  }
}

/** The parts of an in-memory body: views of it, nothing copied. */
export async function* bufferParts(body: Buffer, partSize: number): AsyncGenerator<Part> {
  for (let start = 0; start < body.length; start += partSize) {
    const buffer = body.subarray(start, Math.min(body.length, start + partSize));
    yield { buffer, length: buffer.length };
  }
}

/**
 * Uploads `parts` in order, up to `queueSize` at once: the next part is not
 * taken (nor its stream read) while `queueSize` are in flight. Parts are
 * Buffers, so the SDK retries a failed one by itself; a part that still
 * fails rejects as `S3Failure` (step `part`), after every part in flight
 * has settled. Each part is hashed into `tagger` and its buffer handed to
 * `release` once sent.
 */
export async function sendParts(
  upload: MultipartUpload,
  parts: AsyncIterable<Part>,
  opts: { queueSize: number; tagger: PartTagger; release?: (buffer: Buffer) => void },
): Promise<CompletedPart[]> {
  const done: CompletedPart[] = [];
  const inFlight = new Set<Promise<void>>();
  let failure: unknown;
  let partNumber = 1;
  try {
    for await (const part of parts) {
      const body = part.buffer.subarray(0, part.length);
      opts.tagger.hashBuffer(body);
      const number = partNumber++;
      const sent: Promise<void> = upload
        .uploadPart(number, body)
        .then((completed) => {
          done[number - 1] = completed;
        })
        .catch((err: unknown) => {
          failure ??= err;
        })
        .finally(() => {
          inFlight.delete(sent);
          opts.release?.(part.buffer);
        });
      inFlight.add(sent);
      while (inFlight.size >= opts.queueSize && failure === undefined) await Promise.race(inFlight);
      if (failure !== undefined) throw new S3Failure(failure, 'part');
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw new S3Failure(failure, 'part');
    return done;
  } finally {
    // Parts still on their way settle first: the abort must not race them.
    await Promise.allSettled([...inFlight]);
  }
}

/**
 * Recognises the multipart ETag S3 gives the completed object (the MD5 of
 * the parts' binary MD5s, `-N`): MD5s each part's bytes as they are sent.
 */
export class PartTagger {
  readonly #partSize: number;
  readonly #digests: Buffer[] = [];
  #hash = createHash('md5');
  #inPart = 0;

  constructor(partSize: number) {
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

  /** Hashes one part's (or a whole in-memory body's) bytes. */
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
