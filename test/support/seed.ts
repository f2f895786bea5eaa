/** Seeding for the end-to-end tests: an old filesystem backend and its rows in a SQLite database. */
import { join } from 'node:path';
import { MetaDB } from '../../lib/meta/index.js';
import { type SeededBlob, seedOldFs } from './cli.js';

/**
 * Seeds `count` blobs into the filesystem backend `<dir>/old` and their rows
 * into the SQLite database `<dir>/meta.sqlite` (what `SQLITE_META` names from `dir`).
 */
export async function seedSqliteOldFs(
  dir: string,
  count: number,
  opts: Parameters<typeof seedOldFs>[3] = {},
): Promise<SeededBlob[]> {
  const meta = await MetaDB.open({
    client: 'better-sqlite3',
    connection: { filename: join(dir, 'meta.sqlite') },
  });
  try {
    return await seedOldFs(meta, join(dir, 'old'), count, opts);
  } finally {
    await meta.close();
  }
}
