/** Helpers of the MetaDB suite: rows, walks, an app-like case-insensitive column, a sample run. */
import type { Knex } from 'knex';
import type { NewBlobMeta, RunState } from '../../../lib/contract/meta.js';
import type { BlobMeta } from '../../../lib/contract/types.js';
import { emptyCounts, type MetaDB } from '../../../lib/meta/index.js';
import type { Target } from './context.js';

/** A case-insensitive collation the PostgreSQL suite creates (ICU, non-deterministic). */
export const PG_CI_COLLATION = 'blobshift_test_ci';

/** The blob types the suite's rows use. */
export const TYPES = ['attachment', 'image', 'avatar', 'export'];

/** A row to add, with defaults for what the test does not care about. */
export function row(key: string, over: Partial<NewBlobMeta> = {}): NewBlobMeta {
  return { key, parentId: 'case-1', type: 'attachment', contentLength: 10, ...over };
}

/** Every chunk a walk yields. */
export async function collect(it: AsyncIterable<BlobMeta[]>): Promise<BlobMeta[][]> {
  const chunks: BlobMeta[][] = [];
  for await (const c of it) chunks.push(c);
  return chunks;
}

/** The ids a walk yields, in order. */
export async function walkIds(meta: MetaDB, opts: Parameters<MetaDB['walk']>[0]): Promise<number[]> {
  return (await collect(meta.walk(opts))).flat().map((m) => m.id);
}

/** A text key column that compares case-insensitively, as apps' columns often do. */
export function caseInsensitiveColumn(
  t: Knex.CreateTableBuilder,
  dialect: Target['dialect'],
  column: string,
): Knex.ColumnBuilder {
  if (dialect === 'sqlite') return t.specificType(column, 'TEXT COLLATE NOCASE');
  if (dialect === 'pg') return t.specificType(column, `varchar(255) COLLATE "${PG_CI_COLLATION}"`);
  return t.string(column, 255).collate('utf8mb4_general_ci');
}

/** A run state with every field set. */
export function sampleRun(name: string, shard: string): RunState {
  return {
    name,
    shard,
    status: 'running',
    lowWaterMark: 42,
    counts: { ...emptyCounts(), total: 100, copied: 40, present: 2 },
    logs: [`backfill-${name}-20260101T000000Z.jsonl`],
    options: { types: ['attachment'], concurrency: 16, shard },
    attempts: 1,
    exitCode: null,
    startedAt: new Date('2026-01-01T00:00:00.123Z'),
    updatedAt: new Date('2026-01-01T00:05:00.456Z'),
    finishedAt: null,
    extra: {},
  };
}
