/**
 * Target 6: the metadata walk (keyset by id, 1000 rows a page) over
 * BENCH_WALK_ROWS (1,000,000) rows on SQLite, on MariaDB (BENCH_MYSQL,
 * default mysql://root@127.0.0.1:3306/test) and on PostgreSQL (BENCH_PG,
 * default postgres://postgres@127.0.0.1:5432/test); `off` skips a server:
 * the last pages cost no more than 1.5 × the first (median of 5 pages at
 * each end), and the walk's rows/s is at least 20 × the copy rate (target
 * 1's backfill blobs/s from the same run, or BENCH_COPY_RATE).
 */
import { join } from 'node:path';
import type { Knex } from 'knex';
import { createKnex, MetaDB } from '../../lib/meta/index.js';
import {
  type BenchRow,
  envNumber,
  fmt,
  isMain,
  keyFor,
  log,
  median,
  ratioText,
  scratch,
  standalone,
} from './common.js';

const SEED_BATCH = 50_000;

async function seed(meta: MetaDB, rows: number): Promise<void> {
  const created = new Date('2026-01-01T00:00:00Z');
  for (let i = 0; i < rows; i += SEED_BATCH) {
    const n = Math.min(SEED_BATCH, rows - i);
    await meta.addMany(
      Array.from({ length: n }, (_, j) => ({
        key: keyFor('w/', i + j),
        parentId: `p${(i + j) % 997}`,
        type: (i + j) % 3 === 0 ? 'image' : 'attachment',
        name: `file-${i + j}.bin`,
        contentLength: 1000 + ((i + j) % 4096),
        contentType: 'application/octet-stream',
        createdOn: created,
      })),
    );
  }
}

interface WalkFigures {
  rows: number;
  seconds: number;
  first: number;
  last: number;
}

async function timeWalk(meta: MetaDB): Promise<WalkFigures> {
  const pages: number[] = [];
  let rows = 0;
  const started = performance.now();
  let t = started;
  for await (const chunk of meta.walk({ chunkSize: 1000 })) {
    const now = performance.now();
    pages.push(now - t);
    rows += chunk.length;
    t = performance.now();
  }
  const seconds = (performance.now() - started) / 1000;
  return { rows, seconds, first: median(pages.slice(0, 5)), last: median(pages.slice(-5)) };
}

function rowsFor(name: string, f: WalkFigures, copyRate: number | undefined): BenchRow[] {
  const rate = f.rows / f.seconds;
  return [
    {
      target: `6. walk ${name}: last page vs first (${fmt(f.rows)} rows)`,
      ours: `last ${f.last.toFixed(2)} ms`,
      comparison: `first ${f.first.toFixed(2)} ms`,
      ratio: ratioText(f.last / f.first),
      met: f.last <= 1.5 * f.first,
      note: 'target ≤ 1.5×; medians of the 5 first and 5 last pages of 1000 rows',
    },
    {
      target: `6. walk ${name}: rows/s vs copy rate`,
      ours: `${fmt(rate)} rows/s`,
      comparison: copyRate ? `copy ${fmt(copyRate)} blobs/s` : 'copy rate not measured',
      ratio: copyRate ? ratioText(rate / copyRate) : 'n/a',
      met: copyRate ? rate >= 20 * copyRate : undefined,
      note: 'target ≥ 20×',
    },
  ];
}

/** Seeds and walks `rows` rows in a fresh table of a database server; its tables are dropped after. */
async function serverWalk(
  name: string,
  client: 'mysql2' | 'pg',
  url: string,
  rows: number,
  copyRate: number | undefined,
): Promise<BenchRow[]> {
  if (url === 'off') return [];
  // The connection settings the CLI uses (numbers for BIGINT ids, UTC dates).
  const knex: Knex = await createKnex({ client, connection: url, pool: { min: 0, max: 4 } });
  const table = `bench_walk_${Date.now().toString(36)}`;
  try {
    log(`walk: seeding ${fmt(rows)} rows into ${name}`);
    const meta = await MetaDB.open(knex, { table, create: true });
    await seed(meta, rows);
    // Fresh statistics, as a table of this size has in production (autovacuum).
    if (client === 'pg') await knex.raw('ANALYZE ??', [table]);
    return rowsFor(name, await timeWalk(meta), copyRate);
  } catch (err) {
    return [
      {
        target: `6. walk ${name}`,
        ours: 'n/a',
        comparison: 'n/a',
        ratio: 'n/a',
        met: undefined,
        note: `${name} at ${url.replace(/\/\/[^@]*@/, '//…@')} not usable: ${err instanceof Error ? err.message : String(err)}`,
      },
    ];
  } finally {
    for (const t of [table, `${table}_runs`, `${table}_migrations`, `${table}_migrations_lock`]) {
      await knex.schema.dropTableIfExists(t).catch(() => {});
    }
    await knex.destroy();
  }
}

export async function benchWalk(
  copyRate = envNumber('BENCH_COPY_RATE', 0) || undefined,
): Promise<BenchRow[]> {
  const rows = envNumber('BENCH_WALK_ROWS', 1_000_000);
  const out: BenchRow[] = [];
  const dir = await scratch('walk');
  const { rm } = await import('node:fs/promises');
  try {
    log(`walk: seeding ${fmt(rows)} rows into SQLite`);
    const sqlite = await MetaDB.open(
      {
        client: 'better-sqlite3',
        connection: { filename: join(dir, 'meta.sqlite') },
        useNullAsDefault: true,
      },
      { create: true },
    );
    try {
      await seed(sqlite, rows);
      out.push(...rowsFor('SQLite', await timeWalk(sqlite), copyRate));
    } finally {
      await sqlite.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }

  out.push(
    ...(await serverWalk(
      'MariaDB',
      'mysql2',
      process.env.BENCH_MYSQL ?? 'mysql://root@127.0.0.1:3306/test',
      rows,
      copyRate,
    )),
  );
  out.push(
    ...(await serverWalk(
      'PostgreSQL',
      'pg',
      process.env.BENCH_PG ?? 'postgres://postgres@127.0.0.1:5432/test',
      rows,
      copyRate,
    )),
  );
  return out;
}

if (isMain(import.meta.url)) await standalone(() => benchWalk());
