/**
 * Server-side copies on one endpoint: CopyObject up to 5 GiB, a multipart
 * upload of UploadPartCopy ranges above (through the one multipart
 * lifecycle), both pinned to the source's ETag; and the fallback that
 * streams the bytes through this process.
 */
import type { CompletedPart, CopyObjectCommandInput } from '@aws-sdk/client-s3';
import { getWithInfo } from '../../contract/body.js';
import { BackendError, BlobExistsError, BlobNotFoundError, describeKey } from '../../contract/errors.js';
import type { BlobDB, BlobInfo, PutOptions } from '../../contract/types.js';
import { COPY_PART_SIZE, copySource, putParams, putResult, type S3Context } from './common.js';
import { isPreconditionFailed, isS3NotFoundError } from './errors.js';
import { type MultipartUpload, multipartUpload, S3Failure } from './multipart.js';

/** The source of a server-side copy: its bucket, object key and description. */
export interface CopySourceObject {
  bucket: string;
  fullKey: string;
  where: string;
}

/** What a copy needs to map its failure: the source, and whether the destination is there now. */
export interface CopyTarget {
  ctx: S3Context;
  key: string;
  fullKey: string;
  size: number;
  etag: string | undefined;
  opts: PutOptions;
  conditional: boolean;
  source: CopySourceObject;
  exists(): Promise<boolean>;
}

/** 412 from a conditional copy: the destination exists (BlobExistsError) or the source changed. */
async function copyError(t: CopyTarget, err: unknown): Promise<Error> {
  if (isS3NotFoundError(err)) return new BlobNotFoundError(t.key, { cause: err, where: t.source.where });
  if (isPreconditionFailed(err)) {
    if (t.conditional && (await t.exists())) return new BlobExistsError(t.key, { cause: err });
    return new BackendError(
      `S3 CopyObject of ${describeKey(t.key)} from ${t.source.where}: the source changed during the copy; copy it again`,
      { cause: err, key: t.key },
    );
  }
  return t.ctx.backendError('CopyObject', t.key, err);
}

/** One CopyObject, pinned to the source's ETag, with `If-None-Match: *` when `conditional`. */
export async function copyObject(t: CopyTarget): Promise<BlobInfo> {
  const { sdk, client } = await t.ctx.io();
  const params = putParams(t.ctx, t.fullKey, t.opts, t.conditional);
  const input: CopyObjectCommandInput = {
    ...(params as CopyObjectCommandInput),
    CopySource: copySource(t.source.bucket, t.source.fullKey),
    ...(t.etag ? { CopySourceIfMatch: `"${t.etag}"` } : {}),
    // What the caller says about the blob replaces the source's; else the source's stays.
    MetadataDirective: t.opts.contentType !== undefined || t.opts.httpMeta !== undefined ? 'REPLACE' : 'COPY',
  };
  try {
    const out = await client.send(new sdk.s3.CopyObjectCommand(input));
    return putResult(t.key, t.size, out.CopyObjectResult?.ETag, t.opts);
  } catch (err) {
    throw await copyError(t, err);
  }
}

/** Above 5 GiB: a multipart upload of UploadPartCopy ranges, completed with `If-None-Match: *` when `conditional`. */
export async function copyMultipart(t: CopyTarget): Promise<BlobInfo> {
  const io = await t.ctx.io();
  const params = putParams(t.ctx, t.fullKey, t.opts, false);
  try {
    const etag = await multipartUpload(io, params, (upload) => copyParts(t, upload), t.conditional);
    return putResult(t.key, t.size, etag, t.opts);
  } catch (err) {
    throw await copyError(t, err instanceof S3Failure ? err.cause : err);
  }
}

/** The UploadPartCopy ranges, `queueSize` at once; after a failure no new part starts and those in flight settle. */
async function copyParts(t: CopyTarget, upload: MultipartUpload): Promise<CompletedPart[]> {
  const parts: CompletedPart[] = [];
  const ranges: [number, number][] = [];
  for (let start = 0; start < t.size; start += COPY_PART_SIZE)
    ranges.push([start, Math.min(t.size, start + COPY_PART_SIZE) - 1]);
  const from = copySource(t.source.bucket, t.source.fullKey);
  let next = 0;
  let failed = false;
  const worker = async () => {
    for (;;) {
      // After a failure no new part starts; the ones in flight settle
      // before the abort (a part landing after it would linger).
      if (failed) return;
      const i = next++;
      const range = ranges[i];
      if (range === undefined) return;
      parts[i] = await upload.uploadPartCopy(i + 1, from, range, t.etag);
    }
  };
  const settled = await Promise.allSettled(
    Array.from({ length: Math.min(t.ctx.queueSize, ranges.length) }, () =>
      worker().catch((err: unknown) => {
        failed = true;
        throw err;
      }),
    ),
  );
  const rejected = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (rejected) throw rejected.reason;
  return parts;
}

/**
 * The fallback of `copyFrom`: the bytes stream through this process. As
 * with a server-side copy, the source's content type and HTTP metadata go
 * along unless the caller gives either.
 */
export async function streamFrom(
  target: BlobDB,
  source: BlobDB,
  key: string,
  opts: PutOptions,
): Promise<BlobInfo> {
  const { info, body } = await getWithInfo(source, key);
  const replace = opts.contentType !== undefined || opts.httpMeta !== undefined;
  const putOpts: PutOptions = { ...opts };
  if (!replace && info.contentType !== undefined) putOpts.contentType = info.contentType;
  if (!replace && info.httpMeta !== undefined) putOpts.httpMeta = info.httpMeta;
  return target.put(key, body, putOpts);
}
