/**
 * Copying one blob from the old backend to the new one, with every safety
 * rule the migration relies on:
 * - never overwrite: the put uses `overwrite: false`, so a blob the app wrote
 *   to the new backend meanwhile wins (`BlobExistsError` → "present");
 * - the metadata's size is enforced while streaming, so a short or long
 *   source never lands;
 * - content type and HTTP metadata are carried;
 * - no resurrection: after the copy the key must still be referenced by the
 *   metadata, otherwise the app deleted it meanwhile and the copy is removed;
 * - a blob in neither backend is checked against the metadata once more, so
 *   a row deleted meanwhile is "deleted during migration", not "not found";
 * - retries reopen the source from the start, with backoff and jitter.
 */
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { ByteCounter, getWithInfo } from '../contract/body.js';
import { AbortedError, BlobExistsError, BlobNotFoundError, BlobShiftError } from '../contract/errors.js';
import type { MetaStore } from '../contract/meta.js';
import type { BlobDB, BlobInfo, BlobMeta } from '../contract/types.js';
import { isInfrastructureError, isTransientError, shortError } from './errors.js';
import { type BlobDigest, hashBlob } from './hash.js';
import { TOO_MANY_RETRIES } from './missing-log.js';

export interface CopyRow {
  key: string;
  contentLength: number;
  contentType?: string | null;
  /** The row's hash, where it has one: what proves a destination copy stale (see `refreshStale`). */
  sha256?: string | null;
}

export type CopyOutcome =
  | { kind: 'copied'; bytes: number; retries: number; replaced?: boolean }
  | { kind: 'present'; retries: number }
  | { kind: 'notFound'; retries: number }
  | { kind: 'deleted'; retries: number }
  | { kind: 'failed'; error: string; cause: unknown; infrastructure: boolean; retries: number };

export interface RetryPolicy {
  /** Whole-blob attempts in all (after the SDK's own retries). Default 4. */
  attempts: number;
  /** First backoff in ms; doubles each time, with full jitter. Default 250. */
  baseDelayMs: number;
  /** Largest backoff in ms. Default 8000. */
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 250, maxDelayMs: 8000 };

/**
 * Answers "is this key still referenced?" for many concurrent copies with one
 * metadata query per batch instead of one per blob.
 */
export class ReferenceChecker {
  readonly #meta: Pick<MetaStore, 'referenced'>;
  readonly #maxBatch: number;
  #waiting = new Map<string, { resolve: (v: boolean) => void; reject: (e: unknown) => void }[]>();
  #scheduled = false;

  constructor(meta: Pick<MetaStore, 'referenced'>, opts?: { maxBatch?: number }) {
    this.#meta = meta;
    this.#maxBatch = opts?.maxBatch ?? 500;
  }

  isReferenced(key: string): Promise<boolean> {
    return new Promise((resolve, reject) => {
      const list = this.#waiting.get(key);
      if (list) list.push({ resolve, reject });
      else this.#waiting.set(key, [{ resolve, reject }]);
      if (this.#waiting.size >= this.#maxBatch) this.#flush();
      else if (!this.#scheduled) {
        this.#scheduled = true;
        setImmediate(() => this.#flush());
      }
    });
  }

  #flush(): void {
    this.#scheduled = false;
    if (this.#waiting.size === 0) return;
    const batch = this.#waiting;
    this.#waiting = new Map();
    this.#meta.referenced([...batch.keys()]).then(
      (found) => {
        for (const [key, waiters] of batch) for (const w of waiters) w.resolve(found.has(key));
      },
      (err: unknown) => {
        for (const waiters of batch.values()) for (const w of waiters) w.reject(err);
      },
    );
  }
}

export interface CopyContext {
  oldDb: BlobDB;
  newDb: BlobDB;
  references: ReferenceChecker;
  /**
   * The metadata, to read a row again when a backend disagrees with its size:
   * the app may have rewritten the blob since the row was read.
   */
  meta?: Pick<MetaStore, 'get'>;
  retry?: RetryPolicy;
  signal?: AbortSignal;
  /** Called before each retry (counting, logging). */
  onRetry?: (key: string, attempt: number, err: unknown) => void;
}

/** Copies one blob; never throws for a per-blob problem (the outcome says what happened). */
export async function copyBlob(ctx: CopyContext, row: CopyRow): Promise<CopyOutcome> {
  const policy = ctx.retry ?? DEFAULT_RETRY;
  let retries = 0;
  let refreshes = 0;
  const done: Attempts = { written: false, mayHaveWritten: false };
  for (let attempt = 1; ; attempt++) {
    ctx.signal?.throwIfAborted();
    try {
      return withRetries(await attemptCopy(ctx, row, done), retries);
    } catch (caught) {
      let err = caught;
      throwIfInterrupted(ctx.signal, err);
      if (ctx.meta && mayRereadRow(err, refreshes)) {
        // The app may have rewritten the blob (and its row) since the row was read.
        refreshes++;
        const reread = await rereadRow(ctx.meta, row, err);
        if (reread.kind === 'deleted') return { kind: 'deleted', retries };
        if (reread.kind === 'changed') {
          row = reread.row;
          attempt--;
          continue;
        }
        err = reread.err;
      }
      const failed = giveUp(err, attempt, policy, retries);
      if (failed) return failed;
      retries++;
      ctx.onRetry?.(row.key, attempt, err);
      await backoff(policy, attempt, ctx.signal);
    }
  }
}

function throwIfInterrupted(signal: AbortSignal | undefined, err: unknown): void {
  if (signal?.aborted) throw new AbortedError('copy interrupted', { cause: err });
}

/** A size disagreement sends the copy to read its row again, a few times at most. */
function mayRereadRow(err: unknown, refreshes: number): boolean {
  return err instanceof SizeDisagreement && refreshes < MAX_ROW_REFRESHES;
}

/**
 * One attempt of `copyBlob`. A put of ours that landed leaves only its
 * recheck to do: a second put would meet our own copy and take it for one
 * that was already there.
 */
function attemptCopy(ctx: CopyContext, row: CopyRow, done: Attempts): Promise<OnceOutcome> {
  return done.written
    ? afterCopy(ctx, row.key, { kind: 'copied', bytes: row.contentLength })
    : copyOnce(ctx, row, done);
}

function withRetries(once: OnceOutcome, retries: number): CopyOutcome {
  if (once.kind === 'copied') return { ...once, retries };
  return { kind: once.kind, retries };
}

/**
 * The row read again after a size disagreement, as what it means for the
 * copy; `retry` carries the error to judge as usual (the disagreement when
 * the row is unchanged, the metadata's own error when the read failed).
 */
type Reread = { kind: 'deleted' } | { kind: 'changed'; row: CopyRow } | { kind: 'retry'; err: unknown };

async function rereadRow(meta: Pick<MetaStore, 'get'>, row: CopyRow, err: unknown): Promise<Reread> {
  try {
    const fresh = await meta.get(row.key);
    if (!fresh) return { kind: 'deleted' };
    if (fresh.contentLength !== row.contentLength) {
      return {
        kind: 'changed',
        row: { key: row.key, contentLength: fresh.contentLength, contentType: fresh.contentType },
      };
    }
    return { kind: 'retry', err };
  } catch (metaErr) {
    return { kind: 'retry', err: metaErr };
  }
}

/** A lasting error, or a transient one on the last attempt, ends the copy as `failed`. */
function giveUp(
  err: unknown,
  attempt: number,
  policy: RetryPolicy,
  retries: number,
): CopyOutcome | undefined {
  const transient = isTransientError(err);
  if (transient && attempt < policy.attempts) return undefined;
  return failedCopy(err, transient, retries);
}

/** The outcome of a copy that gives up: a lasting error, or a transient one that outlived its retries. */
function failedCopy(err: unknown, transient: boolean, retries: number): CopyOutcome {
  return {
    kind: 'failed',
    error: transient ? TOO_MANY_RETRIES : shortError(err),
    cause: err,
    infrastructure: transient && isInfrastructureError(err),
    retries,
  };
}

/** Waits before a retry: exponential backoff with full jitter, cut short (silently) by an abort. */
async function backoff(policy: RetryPolicy, attempt: number, signal: AbortSignal | undefined): Promise<void> {
  const cap = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  await sleep(Math.random() * cap, undefined, signal ? { signal } : undefined).catch(() => {});
}

/** How often one copy reads its row again after a size disagreement. */
const MAX_ROW_REFRESHES = 3;

type OnceOutcome = { kind: 'copied'; bytes: number } | { kind: 'present' | 'notFound' | 'deleted' };

/** What the earlier attempts of one copy did to the new backend. */
interface Attempts {
  /** A put (or server-side copy) of ours completed. */
  written: boolean;
  /** A put of ours failed partway: it may have landed all the same (a lost response). */
  mayHaveWritten: boolean;
}

async function copyOnce(ctx: CopyContext, row: CopyRow, done: Attempts): Promise<OnceOutcome> {
  const source = await readOld(ctx, row.key);
  if (source === undefined) return notInOld(ctx, row, done);
  const { info, body } = source;
  try {
    if (info.size !== row.contentLength) return await oldDisagrees(ctx, row, info, body);
    try {
      await writeNew(ctx, row, info, body);
    } catch (err) {
      return writeRefused(ctx, row, done, err, body === undefined);
    }
  } finally {
    if (body !== undefined && !body.destroyed) body.destroy();
  }
  done.written = true;
  return afterCopy(ctx, row.key, { kind: 'copied', bytes: row.contentLength });
}

/**
 * The old blob's info, and its bytes unless the copy is server-side; `undefined`
 * when the old backend does not hold it. Same endpoint, and a copy that keeps
 * no-overwrite as a put would: the server copies and no byte passes through
 * here, so only the old blob's info is read. Otherwise its info and bytes, in
 * one request.
 */
async function readOld(
  ctx: CopyContext,
  key: string,
): Promise<{ info: BlobInfo; body?: Readable } | undefined> {
  const { oldDb, newDb } = ctx;
  const serverSide =
    newDb.copyFrom !== undefined &&
    newDb.capabilities.serverSideCopyFrom?.(oldDb, { overwrite: false }) === true;
  try {
    if (serverSide) return { info: await oldDb.stat(key) };
    return await getWithInfo(oldDb, key);
  } catch (err) {
    if (err instanceof BlobNotFoundError) return undefined;
    throw err;
  }
}

/**
 * The old copy disagrees with the metadata. The app may have rewritten the
 * blob through the new backend; if so, that copy is the truth.
 */
async function oldDisagrees(
  ctx: CopyContext,
  row: CopyRow,
  info: BlobInfo,
  body: Readable | undefined,
): Promise<OnceOutcome> {
  body?.destroy();
  const inNew = await statOrUndefined(ctx.newDb, row.key);
  if (inNew && inNew.size === row.contentLength) return { kind: 'present' };
  throw new SizeDisagreement(row.key, row.contentLength, info.size);
}

/** Puts the old blob's bytes (or has the server copy them) without overwrite, carrying its type and HTTP metadata. */
async function writeNew(
  ctx: CopyContext,
  row: CopyRow,
  info: BlobInfo,
  body: Readable | undefined,
): Promise<void> {
  const { oldDb, newDb } = ctx;
  const contentType = info.contentType ?? row.contentType ?? undefined;
  const putOptions = {
    overwrite: false,
    size: row.contentLength,
    ...(contentType !== undefined ? { contentType } : {}),
    ...(info.httpMeta !== undefined ? { httpMeta: info.httpMeta } : {}),
  };
  if (body === undefined)
    await newDb.copyFrom?.(oldDb, row.key, {
      ...putOptions,
      ...(info.etag !== undefined ? { sourceEtag: info.etag } : {}),
    });
  else await newDb.put(row.key, body, putOptions);
}

/** A put (or server-side copy) of ours that failed. The blob in new may be our own earlier put: it gets the same recheck. */
function writeRefused(
  ctx: CopyContext,
  row: CopyRow,
  done: Attempts,
  err: unknown,
  serverSide: boolean,
): Promise<OnceOutcome> {
  if (err instanceof BlobExistsError) return afterExisting(ctx, row, done);
  if (err instanceof BlobNotFoundError && serverSide) return notInOld(ctx, row, done);
  done.mayHaveWritten = true;
  throw err;
}

/** No resurrection: a copy whose row vanished meanwhile is taken back. */
async function afterCopy(ctx: CopyContext, key: string, success: OnceOutcome): Promise<OnceOutcome> {
  if (!(await ctx.references.isReferenced(key))) {
    // The app deleted the blob while it was being copied.
    await ctx.newDb.delete(key);
    return { kind: 'deleted' };
  }
  return success;
}

/**
 * The new backend holds the blob already. Ordinarily the app (or an earlier
 * run) put it there, and it stays; but only a copy of the row's size counts
 * as present: anything else (a write that a killed client left truncated on a
 * server that stores partial uploads, a damaged object) is a failure, logged
 * and never overwritten, unless the row, read again, says the app rewrote the
 * blob with that size. After a put of ours that failed partway the copy may be
 * that put's, so the row is checked as after a copy.
 */
async function afterExisting(ctx: CopyContext, row: CopyRow, done: Attempts): Promise<OnceOutcome> {
  const inNew = await statOrUndefined(ctx.newDb, row.key);
  if (inNew === undefined) {
    // Gone between the refusal and the look: try the copy again.
    throw new BlobShiftError(`${row.key}: the blob in the new backend vanished while it was being checked`);
  }
  if (inNew.size !== row.contentLength) {
    if (!ctx.meta) throw new NewCopyDisagreement(row.key, row.contentLength, inNew.size);
    const settled = await settleSizes(ctx.newDb, ctx.meta, row.key, inNew.size, ctx);
    if (settled.kind === 'deleted') return { kind: 'deleted' };
    if (settled.kind === 'absent') {
      throw new BlobShiftError(`${row.key}: the blob in the new backend vanished while it was being checked`);
    }
    if (settled.kind === 'disagree') throw new NewCopyDisagreement(row.key, settled.rowSize, settled.newSize);
  }
  return done.mayHaveWritten ? afterCopy(ctx, row.key, { kind: 'present' }) : { kind: 'present' };
}

/** What the row and the copy in new say of a blob once an app's write in flight had time to land. */
export type Settled =
  | { kind: 'present' }
  | { kind: 'deleted' }
  | { kind: 'absent' }
  | { kind: 'disagree'; rowSize: number; newSize: number };

/** Waits between the looks of `settleSizes`, as multiples of the retry policy's base delay. */
const SETTLE_STEPS = [0, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4];

/**
 * The new backend holds `key` with a size (`newSize`) the row read earlier
 * does not give. The app may be overwriting the blob: `BlobStore.put` writes
 * the blob first and its row after, so for a moment new holds the new
 * version while the row still gives the old size. Reads the row (and stats
 * the copy) again, at growing intervals over about 12 × the retry policy's
 * base delay (3 s by default), until they agree (`present`), the row is gone
 * (`deleted`) or the copy is (`absent`); a copy whose size no row gives by
 * then is a `disagree`ment: a truncated leftover or a damaged object, never
 * counted present and never overwritten.
 */
export async function settleSizes(
  newDb: BlobDB,
  meta: Pick<MetaStore, 'get'>,
  key: string,
  newSize: number,
  opts: { retry?: RetryPolicy; signal?: AbortSignal | undefined },
): Promise<Settled> {
  const base = (opts.retry ?? DEFAULT_RETRY).baseDelayMs;
  let size = newSize;
  let rowSize = newSize;
  for (const [i, step] of SETTLE_STEPS.entries()) {
    if (i > 0) {
      await sleep(step * base, undefined, opts.signal ? { signal: opts.signal } : undefined);
      const inNew = await statOrUndefined(newDb, key);
      if (inNew === undefined) return { kind: 'absent' };
      size = inNew.size;
    }
    const fresh = await meta.get(key);
    if (!fresh) return { kind: 'deleted' };
    if (fresh.contentLength === size) return { kind: 'present' };
    rowSize = fresh.contentLength;
  }
  return { kind: 'disagree', rowSize, newSize: size };
}

async function notInOld(ctx: CopyContext, row: CopyRow, done: Attempts): Promise<OnceOutcome> {
  if (await ctx.newDb.exists(row.key)) return afterExisting(ctx, row, done);
  if (!(await ctx.references.isReferenced(row.key))) return { kind: 'deleted' };
  return { kind: 'notFound' };
}

async function statOrUndefined(db: BlobDB, key: string): Promise<BlobInfo | undefined> {
  try {
    return await db.stat(key);
  } catch (err) {
    if (err instanceof BlobNotFoundError) return undefined;
    throw err;
  }
}

/**
 * A rollback's look at a copy the destination (`ctx.newDb`) already holds:
 * it is replaced only when the metadata proves it stale (its size, or the
 * SHA-256 of its bytes, differs from the row) while the source
 * (`ctx.oldDb`) matches the row (size, and sha256 where the row has one).
 * A copy that matches the row is `present`; one the row cannot judge (same
 * size, no sha256 in the row) is `present` too: nothing proves the source
 * newer. A stale copy whose source does not match the row either is a
 * failure, never replaced: either may be the newer one.
 *
 * The replacement streams the source with the row's size enforced and its
 * hash taken on the way; right before it, the row is read again and the
 * destination stat'ed again (the copy judged stale must still be there, the
 * row unchanged), so a write landing in that check-then-write window is the
 * only one that could be overwritten: keep the app writing to the source
 * while a rollback runs (README, Rollback).
 *
 * Resolves `undefined` when the destination holds no copy (the caller copies
 * as usual, with `overwrite: false`).
 */
export async function refreshStale(
  ctx: CopyContext,
  row: CopyRow,
  rereads = 0,
): Promise<CopyOutcome | undefined> {
  const { oldDb: source, newDb: dest } = ctx;
  const key = row.key;
  const judged = await statOrUndefined(dest, key);
  if (!judged) return undefined;
  const expected = row.sha256?.toLowerCase() ?? null;
  const verdict = await judgeCopy(ctx, row, judged, expected);
  if (verdict.kind === 'gone') return undefined;
  if (verdict.kind === 'current') return { kind: 'present', retries: 0 };
  const stale = verdict.why;

  // The row as it is now: the app may have moved on since the walk read it.
  const fresh = ctx.meta ? await ctx.meta.get(key) : undefined;
  if (ctx.meta && !fresh) return { kind: 'deleted', retries: 0 };
  if (fresh && rowMoved(fresh, row)) {
    if (rereads >= MAX_ROW_REFRESHES)
      return staleFailure('its metadata row kept changing; not replaced (run again)');
    return refreshStale(
      ctx,
      {
        ...row,
        contentLength: fresh.contentLength,
        sha256: fresh.sha256,
        contentType: fresh.contentType,
      },
      rereads + 1,
    );
  }
  const src = await hashBlob(source, key, ctx.signal);
  if (!src) return { kind: 'notFound', retries: 0 };
  const mismatch = sourceMismatch(src, row.contentLength, expected);
  if (mismatch !== undefined) {
    return staleFailure(
      `the copy in the destination is stale (${stale}), but the source does not match the metadata either (${mismatch}); not replaced: either may be the newer one`,
    );
  }

  // Check, then write: the copy judged stale must still be the one there.
  const now = await statOrUndefined(dest, key);
  if (changedSince(judged, now)) {
    return staleFailure(
      'the copy in the destination changed while it was being checked; not replaced (run again)',
    );
  }
  const wrote = await replaceCopy(ctx, row);
  if (expected !== null && wrote !== expected) {
    // The source changed between its check and the copy: the app rewrote it.
    return staleFailure(
      'the source changed during the replacement; run the rollback again to bring over its latest version',
    );
  }
  const after = await afterCopy(ctx, key, { kind: 'copied', bytes: row.contentLength });
  return after.kind === 'copied'
    ? { kind: 'copied', bytes: row.contentLength, retries: 0, replaced: true }
    : { kind: after.kind, retries: 0 };
}

/** What the row says of the destination's copy: `gone` when it vanished while being hashed. */
type Judgement = { kind: 'gone' } | { kind: 'current' } | { kind: 'stale'; why: string };

/**
 * Judges the destination's copy against the row: stale when its size, or the
 * SHA-256 of its bytes (where the row has one), differs from the row.
 */
async function judgeCopy(
  ctx: CopyContext,
  row: CopyRow,
  judged: BlobInfo,
  expected: string | null,
): Promise<Judgement> {
  if (judged.size !== row.contentLength) {
    return { kind: 'stale', why: `it holds ${judged.size} bytes, the metadata says ${row.contentLength}` };
  }
  if (expected === null) return { kind: 'current' };
  const digest = await hashBlob(ctx.newDb, row.key, ctx.signal);
  if (!digest) return { kind: 'gone' };
  if (digest.bytes !== row.contentLength) {
    return { kind: 'stale', why: `it holds ${digest.bytes} bytes, the metadata says ${row.contentLength}` };
  }
  if (digest.sha256 !== expected)
    return { kind: 'stale', why: 'its bytes do not hash to the metadata sha256' };
  return { kind: 'current' };
}

/** The row read again differs from the one the copy was judged by (size or sha256). */
function rowMoved(fresh: Pick<BlobMeta, 'contentLength' | 'sha256'>, row: CopyRow): boolean {
  return fresh.contentLength !== row.contentLength || (fresh.sha256 ?? null) !== (row.sha256 ?? null);
}

/** How the source differs from the row (size, sha256 where the row has one), or `undefined` when it matches. */
function sourceMismatch(src: BlobDigest, size: number, expected: string | null): string | undefined {
  const otherHash = expected !== null && src.sha256 !== expected;
  if (src.bytes === size && !otherHash) return undefined;
  return `${src.bytes} bytes${otherHash ? ', another sha256' : ''}`;
}

/** The destination's copy is no longer the one judged stale (gone, or another size, etag or date). */
function changedSince(judged: BlobInfo, now: BlobInfo | undefined): boolean {
  return (
    !now ||
    now.size !== judged.size ||
    now.etag !== judged.etag ||
    now.lastModified?.getTime() !== judged.lastModified?.getTime()
  );
}

/**
 * Overwrites the destination's copy with the source's bytes, the row's size
 * enforced; resolves the SHA-256 of what was written.
 */
async function replaceCopy(ctx: CopyContext, row: CopyRow): Promise<string | undefined> {
  const key = row.key;
  const { info, body } = await getWithInfo(ctx.oldDb, key);
  const counter = new ByteCounter(key, row.contentLength, { hash: 'sha256' });
  body.on('error', (err) => counter.destroy(err));
  body.pipe(counter);
  const contentType = info.contentType ?? row.contentType ?? undefined;
  try {
    await ctx.newDb.put(key, counter, {
      overwrite: true,
      size: row.contentLength,
      ...(contentType !== undefined ? { contentType } : {}),
      ...(info.httpMeta !== undefined ? { httpMeta: info.httpMeta } : {}),
    });
  } finally {
    if (!body.destroyed) body.destroy();
  }
  return counter.digest();
}

/**
 * The new backend already holds another size than the metadata says under
 * the key: never overwritten (it may be the app's), not retried, logged.
 */
export class NewCopyDisagreement extends BlobShiftError {
  readonly key: string;
  /** The metadata's size. */
  readonly expected: number;
  /** What the new backend holds. */
  readonly actual: number;
  constructor(key: string, expected: number, actual: number) {
    super(
      `size mismatch in the new backend: it holds ${actual} bytes, the metadata says ${expected}; not overwritten`,
      { code: 'E_SIZE_MISMATCH' },
    );
    this.key = key;
    this.expected = expected;
    this.actual = actual;
  }
}

function staleFailure(error: string): CopyOutcome {
  return { kind: 'failed', error, cause: undefined, infrastructure: false, retries: 0 };
}

/** The old backend's blob has another size than the metadata says: not retried, logged. */
export class SizeDisagreement extends BlobShiftError {
  readonly key: string;
  /** The metadata's size. */
  readonly expected: number;
  /** What the old backend holds. */
  readonly actual: number;
  constructor(key: string, expected: number, actual: number) {
    super(`size mismatch: the metadata says ${expected} bytes, the old backend holds ${actual}`, {
      code: 'E_SIZE_MISMATCH',
    });
    this.key = key;
    this.expected = expected;
    this.actual = actual;
  }
}
