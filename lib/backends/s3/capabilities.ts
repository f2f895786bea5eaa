/**
 * What an S3 server can do, found by probes on reserved keys: whether it
 * honours `If-None-Match: *` on PutObject, on CompleteMultipartUpload and on
 * CopyObject. Each probe is made once per endpoint and bucket for the whole
 * process (the caches below); `S3BlobDB#probeCapabilities` asks them.
 */
import type { PutObjectCommandInput } from '@aws-sdk/client-s3';
import { BackendError } from '../../contract/errors.js';
import { RESERVED_PREFIX } from '../../contract/keys.js';
import type { Capabilities } from '../../contract/types.js';
import { copySource, type S3Context } from './common.js';
import { describeS3Error, isConditionalConflict, isPreconditionFailed, refusesHeader } from './errors.js';
import { multipartUpload, S3Failure } from './multipart.js';

/** What a server's probe showed about `If-None-Match: *`. */
export interface ConditionalSupport {
  /** PutObject answers 412 when the key exists. */
  put: boolean;
  /** CompleteMultipartUpload answers 412 when the key exists (Ceph RGW before Squid does not). */
  multipartComplete: boolean;
  /** CopyObject answers 412 when the destination exists (Ceph RGW before Squid does not). */
  copy: boolean;
}

export const NO_CONDITIONALS: ConditionalSupport = { put: false, multipartComplete: false, copy: false };

/**
 * `conditionalWrites` is true where PutObject honours `If-None-Match: *`.
 * Then every `overwrite: false` put of a known size is atomic: bodies over
 * the multipart threshold go as one streamed PutObject (up to 5 GiB) where
 * CompleteMultipartUpload is not conditional. Only a stream of unknown
 * length longer than one part, on such a server, is checked and then
 * written. `conditional.multipartComplete` and `conditional.copy` are false
 * until the first upload or copy that needs them has asked.
 */
export interface S3Capabilities extends Capabilities {
  readonly conditional: ConditionalSupport;
}

/** Where a probe answer is cached: one probe per endpoint and bucket for the whole process. */
const putProbes = new Map<string, Promise<ConditionalSupport>>();
/** Whether CompleteMultipartUpload honours `If-None-Match: *`, per endpoint and bucket (probed when first needed). */
const completeProbes = new Map<string, Promise<boolean>>();
/** Whether CopyObject honours `If-None-Match: *`, per endpoint and bucket (probed only for S3 → S3 copies). */
const copyProbes = new Map<string, Promise<boolean>>();

/** The cached answer for `cacheKey`, or `run()`'s (a failed probe is asked again next time). */
function cached<T>(cache: Map<string, Promise<T>>, cacheKey: string, run: () => Promise<T>): Promise<T> {
  let probe = cache.get(cacheKey);
  if (!probe) {
    probe = run();
    cache.set(cacheKey, probe);
    probe.catch(() => cache.delete(cacheKey));
  }
  return probe;
}

/** The cache key of a bucket on an endpoint. */
export function probeKey(endpoint: string, bucket: string): string {
  return `${endpoint}\u0000${bucket}`;
}

/** Whether PutObject honours `If-None-Match: *` (cached per endpoint and bucket). */
export function conditionalPutSupport(ctx: S3Context, cacheKey: string): Promise<ConditionalSupport> {
  return cached(putProbes, cacheKey, () => probeConditionalPut(ctx));
}

/** Whether CompleteMultipartUpload honours `If-None-Match: *` (cached per endpoint and bucket). */
export function conditionalCompleteSupport(ctx: S3Context, cacheKey: string): Promise<boolean> {
  return cached(completeProbes, cacheKey, () => probeConditionalComplete(ctx));
}

/** Whether CopyObject honours `If-None-Match: *` (cached per endpoint and bucket). */
export function conditionalCopySupport(ctx: S3Context, cacheKey: string): Promise<boolean> {
  return cached(copyProbes, cacheKey, () => probeConditionalCopy(ctx));
}

/**
 * Puts a probe object under a reserved key twice with `If-None-Match: *`
 * (the second must answer 412), then deletes it.
 */
async function probeConditionalPut(ctx: S3Context): Promise<ConditionalSupport> {
  const { sdk, client } = await ctx.io();
  // One fixed name: a probe object a killed process left behind makes the
  // first put answer 412 (which tells as much as the second would) and is
  // removed below (reserved keys are never listed, but they are garbage).
  const key = `${ctx.prefix}${RESERVED_PREFIX}probe`;
  const body = Buffer.from('blobshift conditional-write probe\n');
  const params: PutObjectCommandInput = {
    Bucket: ctx.bucket,
    Key: key,
    Body: body,
    ContentLength: body.length,
    IfNoneMatch: '*',
  };
  const where = `the conditional-write probe in bucket ${JSON.stringify(ctx.bucket)} at ${ctx.endpoint()}`;
  try {
    let refused = false;
    try {
      await client.send(new sdk.s3.PutObjectCommand(params));
    } catch (err) {
      // A server that refuses the header outright has no conditional writes.
      if (refusesHeader(err)) return NO_CONDITIONALS;
      // Another process's probe is there this instant, and the header kept it.
      refused = isPreconditionFailed(err) || isConditionalConflict(err);
      if (!refused) {
        throw new BackendError(`${where} could not write its probe object: ${describeS3Error(err)}`, {
          cause: err,
        });
      }
    }
    if (!refused) {
      try {
        await client.send(new sdk.s3.PutObjectCommand(params));
        return NO_CONDITIONALS;
      } catch (err) {
        if (!isPreconditionFailed(err) && !isConditionalConflict(err)) {
          throw new BackendError(`${where} failed: ${describeS3Error(err)}`, { cause: err });
        }
      }
    }
    // CompleteMultipartUpload and CopyObject are asked about when first needed.
    return { put: true, multipartComplete: false, copy: false };
  } finally {
    await client.send(new sdk.s3.DeleteObjectCommand({ Bucket: ctx.bucket, Key: key })).catch(() => {
      // A leftover probe object is reserved and never listed.
    });
  }
}

/**
 * Puts a reserved probe object, completes a one-part upload onto it with
 * `If-None-Match: *` (412 → conditional), deletes it.
 */
async function probeConditionalComplete(ctx: S3Context): Promise<boolean> {
  const { sdk, client } = await ctx.io();
  const key = `${ctx.prefix}${RESERVED_PREFIX}probe-multipart`;
  const body = Buffer.from('blobshift conditional-completion probe\n');
  const where = `the conditional-completion probe in bucket ${JSON.stringify(ctx.bucket)} at ${ctx.endpoint()}`;
  try {
    try {
      await client.send(
        new sdk.s3.PutObjectCommand({ Bucket: ctx.bucket, Key: key, Body: body, ContentLength: body.length }),
      );
    } catch (err) {
      throw new BackendError(`${where} could not write its probe object: ${describeS3Error(err)}`, {
        cause: err,
      });
    }
    return await completesConditionally(ctx, key, body, where);
  } finally {
    await client.send(new sdk.s3.DeleteObjectCommand({ Bucket: ctx.bucket, Key: key })).catch(() => {});
  }
}

/** Completes a one-part upload onto the existing probe object with `If-None-Match: *`: 412 → conditional. */
async function completesConditionally(
  ctx: S3Context,
  key: string,
  body: Buffer,
  where: string,
): Promise<boolean> {
  const io = await ctx.io();
  const checksums = (await io.client.config.requestChecksumCalculation()) === 'WHEN_SUPPORTED';
  const create = {
    Bucket: ctx.bucket,
    Key: key,
    ...(checksums ? { ChecksumAlgorithm: 'CRC32' as const } : {}),
  };
  try {
    await multipartUpload(io, create, async (upload) => [await upload.uploadPart(1, body)], true);
    return false;
  } catch (err) {
    const cause = err instanceof S3Failure ? err.cause : err;
    if (err instanceof S3Failure && err.step === 'complete') {
      if (isPreconditionFailed(cause) || isConditionalConflict(cause)) return true;
      if (refusesHeader(cause)) return false;
    }
    throw new BackendError(`${where} failed on its multipart step: ${describeS3Error(cause)}`, { cause });
  }
}

/**
 * Whether CopyObject honours `If-None-Match: *`: puts a reserved probe
 * object and copies it twice to a second reserved key with the header (the
 * second must answer 412), then deletes both. Any doubt (another process's
 * probe in the way, an error) answers false: blobs are then streamed, which
 * is always safe.
 */
async function probeConditionalCopy(ctx: S3Context): Promise<boolean> {
  const { sdk, client } = await ctx.io();
  const from = `${ctx.prefix}${RESERVED_PREFIX}probe-copy-source`;
  const to = `${ctx.prefix}${RESERVED_PREFIX}probe-copy`;
  const body = Buffer.from('blobshift conditional-copy probe\n');
  const copy = () =>
    client.send(
      new sdk.s3.CopyObjectCommand({
        Bucket: ctx.bucket,
        Key: to,
        CopySource: copySource(ctx.bucket, from),
        IfNoneMatch: '*',
      }),
    );
  try {
    await client.send(new sdk.s3.DeleteObjectCommand({ Bucket: ctx.bucket, Key: to })).catch(() => {});
    await client.send(
      new sdk.s3.PutObjectCommand({ Bucket: ctx.bucket, Key: from, Body: body, ContentLength: body.length }),
    );
    await copy();
    try {
      await copy();
      return false;
    } catch (err) {
      return isPreconditionFailed(err) || isConditionalConflict(err);
    }
  } catch {
    return false;
  } finally {
    await client
      .send(
        new sdk.s3.DeleteObjectsCommand({
          Bucket: ctx.bucket,
          Delete: { Objects: [{ Key: from }, { Key: to }], Quiet: true },
        }),
      )
      .catch(() => {});
  }
}
