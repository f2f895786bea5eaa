/**
 * One row's task, the same in a local run and on a queue worker: check what
 * the destination holds where the plan says so (`checkNew`, or a rollback's
 * `refreshStale`), copy (`copyBlob`), and tally the outcome.
 */
import { BlobNotFoundError } from '../contract/errors.js';
import type { MetaStore, RunCounts } from '../contract/meta.js';
import type { BlobDB, BlobInfo, BlobMeta } from '../contract/types.js';
import {
  type CopyContext,
  type CopyOutcome,
  copyBlob,
  type RetryPolicy,
  refreshStale,
  settleSizes,
} from './copy.js';
import { isInfrastructureError, shortError } from './errors.js';
import { type MissingRecord, NOT_FOUND } from './missing-log.js';
import { withRetry } from './retry.js';
import type { EngineLogger } from './session.js';

export type Outcome =
  | CopyOutcome
  | { kind: 'expired'; retries: number }
  | { kind: 'failed'; error: string; cause: unknown; infrastructure: boolean; retries: number };

/** What one row's task needs. */
export interface TaskContext extends Omit<CopyContext, 'onRetry' | 'retry'> {
  retry: RetryPolicy;
  logger: EngineLogger;
  /** A rollback: a present copy is judged against the row (`refreshStale`). */
  replaceStale?: boolean;
}

/** The row as a task sees it. */
export type TaskRow = Pick<BlobMeta, 'key' | 'contentLength'> &
  Partial<Pick<BlobMeta, 'contentType' | 'sha256'>>;

/** The copy path's context: retries are logged. */
function copyContext(t: TaskContext): CopyContext {
  const { logger, replaceStale: _, ...ctx } = t;
  return {
    ...ctx,
    onRetry: (key: string, attempt: number, err: unknown) =>
      logger.warn(`retrying blob (attempt ${attempt + 1} of ${t.retry.attempts})`, {
        key,
        error: shortError(err),
      }),
  };
}

/**
 * Checks (when `check`: the destination may hold the blob) and copies one
 * row. Never throws for a per-blob problem: an error becomes a `failed`
 * outcome, marked `infrastructure` when it is one. Rejects only when the
 * context's signal aborted (the work is abandoned).
 */
export async function runTask(t: TaskContext, row: TaskRow, check: boolean): Promise<Outcome> {
  try {
    const ctx = copyContext(t);
    let outcome: Outcome | undefined;
    if (check && t.replaceStale) outcome = await checkStale(t, ctx, row);
    else if (check) outcome = await checkNew(t.newDb, row, t.meta, { retry: t.retry, signal: t.signal });
    outcome ??= await copyBlob(ctx, row);
    if (outcome.kind === 'failed' && isInfrastructureError(outcome.cause)) outcome.infrastructure = true;
    return outcome;
  } catch (err) {
    if (t.signal?.aborted) throw err;
    return {
      kind: 'failed',
      error: shortError(err),
      cause: err,
      infrastructure: isInfrastructureError(err),
      retries: 0,
    };
  }
}

/** A rollback's check: a destination copy the metadata proves stale is replaced. */
async function checkStale(t: TaskContext, ctx: CopyContext, row: TaskRow): Promise<Outcome | undefined> {
  const outcome = await withRetry(() => refreshStale(ctx, row), t.retry, {
    what: 'the check of the copy in the destination',
    ...(t.signal ? { signal: t.signal } : {}),
    onRetry: (err, attempt) => ctx.onRetry?.(row.key, attempt, err),
  });
  if (outcome?.kind === 'copied' && outcome.replaced) {
    t.logger.info('replaced a copy the metadata proves stale', { key: row.key });
  }
  return outcome;
}

/**
 * For a blob the snapshot says is in new with another size, or with
 * `--existence head`: `present` when new holds the metadata's size now, a
 * failure (never an overwrite) when it holds another, undefined when absent.
 */
export async function checkNew(
  newDb: BlobDB,
  row: Pick<BlobMeta, 'key' | 'contentLength'>,
  meta?: Pick<MetaStore, 'get'>,
  opts: { retry?: RetryPolicy | undefined; signal?: AbortSignal | undefined } = {},
): Promise<Outcome | undefined> {
  let info: BlobInfo;
  try {
    info = await newDb.stat(row.key);
  } catch (err) {
    if (err instanceof BlobNotFoundError) return undefined;
    throw err;
  }
  if (info.size === row.contentLength) return { kind: 'present', retries: 0 };
  let rowSize = row.contentLength;
  let newSize = info.size;
  if (meta) {
    // The app may be rewriting the blob: its row may say the new size in a moment.
    const settled = await settleSizes(newDb, meta, row.key, info.size, {
      ...(opts.retry ? { retry: opts.retry } : {}),
      signal: opts.signal,
    });
    if (settled.kind === 'present') return { kind: 'present', retries: 0 };
    if (settled.kind === 'deleted') return { kind: 'deleted', retries: 0 };
    if (settled.kind === 'absent') return undefined;
    rowSize = settled.rowSize;
    newSize = settled.newSize;
  }
  return {
    kind: 'failed',
    error: `size mismatch in the new backend: it holds ${newSize} bytes, the metadata says ${rowSize}; not overwritten`,
    cause: undefined,
    infrastructure: false,
    retries: 0,
  };
}

/** Adds one blob's outcome to `counts`. */
export function tallyOutcome(counts: RunCounts, o: Outcome): void {
  counts.total++;
  counts.retries += o.retries;
  switch (o.kind) {
    case 'copied':
      counts.copied++;
      if (o.replaced) counts.replaced++;
      counts.bytes += o.bytes;
      break;
    case 'present':
      counts.present++;
      break;
    case 'notFound':
      counts.notFound++;
      break;
    case 'deleted':
      counts.deletedDuringMigration++;
      break;
    case 'expired':
      counts.expired++;
      break;
    case 'failed':
      counts.failed++;
      break;
  }
}

/** The missing-blob log record of a blob not found or failed; undefined for any other outcome. */
export function missingRecord(
  row: Pick<BlobMeta, 'id' | 'key' | 'type' | 'parentId'>,
  o: Outcome,
): MissingRecord | undefined {
  if (o.kind !== 'notFound' && o.kind !== 'failed') return undefined;
  return {
    id: row.id,
    key: row.key,
    type: row.type,
    parentId: row.parentId,
    error: o.kind === 'notFound' ? NOT_FOUND : o.error,
    at: new Date().toISOString(),
  };
}
