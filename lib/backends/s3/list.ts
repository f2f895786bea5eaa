/**
 * Listing: ListObjectsV2 pages, the next one asked for while the caller
 * takes this one, each checked to be in S3's byte order and to continue
 * after the previous one.
 */
import type { ListObjectsV2CommandInput, ListObjectsV2CommandOutput } from '@aws-sdk/client-s3';
import { BackendError, describeKey } from '../../contract/errors.js';
import { compareKeys, RESERVED_PREFIX, validatePrefix } from '../../contract/keys.js';
import type { BlobInfo, ListOptions } from '../../contract/types.js';
import { type S3Context, stripQuotes } from './common.js';

/** The first key of a page not strictly after the one before it (or after `last`, the previous page's end). */
function findMisorder(
  contents: readonly { Key?: string }[],
  last: string | undefined,
): { key: string; after: string } | undefined {
  let previous = last;
  for (const obj of contents) {
    const key = obj.Key ?? '';
    if (previous !== undefined && compareKeys(key, previous) <= 0) return { key, after: previous };
    previous = key;
  }
  return undefined;
}

function hasReservedSegment(key: string): boolean {
  return key.split('/').some((segment) => segment.startsWith(RESERVED_PREFIX));
}

type Page = ListObjectsV2CommandOutput;
type Contents = NonNullable<Page['Contents']>;

/** A page's objects in order: a whole listing on one page is sorted; a misordered paged one is an error. */
function ordered(
  ctx: S3Context,
  out: Page,
  page: number,
  last: string | undefined,
  startAfter: string | undefined,
): Contents {
  const contents = out.Contents ?? [];
  const misorder = findMisorder(contents, last);
  if (misorder === undefined) return contents;
  if (page === 1 && !out.IsTruncated) {
    // The whole listing fits this one page: nothing can be skipped or
    // repeated, so a server that lists in another order is sorted here.
    return contents
      .filter((o) => startAfter === undefined || compareKeys(o.Key ?? '', startAfter) > 0)
      .sort((x, y) => compareKeys(x.Key ?? '', y.Key ?? ''));
  }
  throw new BackendError(
    `the S3 server at ${ctx.endpoint()} lists bucket ${JSON.stringify(ctx.bucket)} out of S3 byte order: ` +
      `${describeKey(misorder.key)} came after ${describeKey(misorder.after)} (page ${page}). A paged ` +
      'listing in another order skips or repeats keys; use a server that lists in UTF-8 byte order, as S3 does.',
  );
}

/** The ListObjectsV2 input of one page: the continuation token, or on the first page where to start. */
function pageInput(
  bucket: string,
  listPrefix: string,
  startAfter: string | undefined,
  token: string | undefined,
): ListObjectsV2CommandInput {
  let from: Pick<ListObjectsV2CommandInput, 'ContinuationToken' | 'StartAfter'> = {};
  if (token !== undefined) from = { ContinuationToken: token };
  else if (startAfter !== undefined) from = { StartAfter: startAfter };
  return {
    Bucket: bucket,
    MaxKeys: 1000,
    ...(listPrefix !== '' ? { Prefix: listPrefix } : {}),
    ...from,
  };
}

/** The token of the page after `out`, undefined after the last page; a truncated page without one is an error. */
function continuationToken(ctx: S3Context, out: Page): string | undefined {
  const token = out.IsTruncated ? out.NextContinuationToken : undefined;
  if (out.IsTruncated && token === undefined) {
    throw new BackendError(
      `the S3 server at ${ctx.endpoint()} sent a truncated listing of bucket ${JSON.stringify(ctx.bucket)} ` +
        'without a continuation token',
    );
  }
  return token;
}

/**
 * The blob of a listed object (its key `full`, with the backend's prefix):
 * undefined for the prefix itself and reserved names; a key outside the
 * listed prefix is an error.
 */
function listedBlob(
  ctx: S3Context,
  listPrefix: string,
  full: string,
  obj: Contents[number],
): BlobInfo | undefined {
  if (!full.startsWith(listPrefix)) {
    throw new BackendError(
      `the S3 server at ${ctx.endpoint()} returned ${describeKey(full)} for prefix ${JSON.stringify(listPrefix)} ` +
        `in bucket ${JSON.stringify(ctx.bucket)}`,
    );
  }
  const key = full.slice(ctx.prefix.length);
  if (key === '' || hasReservedSegment(key)) return undefined;
  const info: BlobInfo = { key, size: obj.Size ?? 0 };
  const etag = stripQuotes(obj.ETag);
  if (etag !== undefined) info.etag = etag;
  if (obj.LastModified) info.lastModified = obj.LastModified;
  return info;
}

/**
 * Pages through ListObjectsV2, 1000 keys a page. The next page is asked for
 * as soon as a page arrives, before its keys are handed out, so the server
 * works on it while the caller handles this one (at most two pages held).
 */
export async function* listObjects(
  ctx: S3Context,
  opts: ListOptions,
  checkOpen: () => void,
): AsyncGenerator<BlobInfo> {
  const sub = validatePrefix(opts.prefix);
  checkOpen();
  const listPrefix = ctx.prefix + sub;
  let last: string | undefined;
  let startAfter: string | undefined;
  if (opts.startAfter !== undefined && opts.startAfter !== '') {
    startAfter = ctx.prefix + opts.startAfter;
    last = startAfter;
  }
  const { sdk, client } = await ctx.io();
  const fetchPage = (page: number, token: string | undefined): Promise<Page> => {
    const request = client
      .send(new sdk.s3.ListObjectsV2Command(pageInput(ctx.bucket, listPrefix, startAfter, token)))
      .catch((err: unknown) => {
        throw ctx.backendError(
          `ListObjectsV2 (prefix ${JSON.stringify(listPrefix)}, page ${page})`,
          undefined,
          err,
        );
      });
    // A caller that stops early leaves the prefetched page unread: not an unhandled rejection.
    request.catch(() => {});
    return request;
  };
  let page = 1;
  let next: Promise<Page> | undefined = fetchPage(page, undefined);
  while (next !== undefined) {
    const out: Page = await next;
    const token = continuationToken(ctx, out);
    next = token !== undefined ? fetchPage(page + 1, token) : undefined;
    for (const obj of ordered(ctx, out, page, last, startAfter)) {
      const full = obj.Key ?? '';
      last = full;
      const info = listedBlob(ctx, listPrefix, full, obj);
      if (info !== undefined) yield info;
    }
    page++;
  }
}
