/**
 * A second app instance for the cross-process race test: opens the same
 * SQLite file and the same two roots as the test process, prints `ready`,
 * waits for a start time on stdin (milliseconds since the epoch), then
 * deletes each key `rounds` times through its own BlobStore: round r at
 * start + r × period, as the test process puts, after a random pause
 * (0–5 ms), and another (0–60 ms) before each blob delete.
 * Arguments: one JSON object `{ sqlite, newRoot, oldRoot, keys, rounds }`.
 * Exits 0 when every delete resolved, 1 with the error on stderr otherwise.
 */

import { MigratingBlobDB } from '../../lib/app/migrating.js';
import { BlobStore } from '../../lib/app/store.js';
import { FilesystemBlobDB } from '../../lib/backends/fs/index.js';
import { MetaDB } from '../../lib/meta/index.js';
import { WrappedBlobDB } from './wrap.js';

interface Args {
  sqlite: string;
  newRoot: string;
  oldRoot: string;
  keys: string[];
  rounds: number;
  period: number;
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const pause = (max: number) => new Promise<void>((r) => setTimeout(r, Math.floor(Math.random() * (max + 1))));

const meta = await MetaDB.open({ client: 'better-sqlite3', connection: { filename: args.sqlite } });
const db = new MigratingBlobDB(
  new FilesystemBlobDB({ root: args.newRoot }),
  new FilesystemBlobDB({ root: args.oldRoot }),
);
const store = new BlobStore({
  db: new WrappedBlobDB(db, { before: (method) => (method === 'delete' ? pause(60) : undefined) }),
  meta,
});
process.stdout.write('ready\n');
const start = await new Promise<number>((resolve) =>
  process.stdin.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))),
);
process.stdin.pause();
try {
  await Promise.all(
    args.keys.map(async (key) => {
      for (let round = 0; round < args.rounds; round++) {
        await new Promise((r) => setTimeout(r, start + round * args.period - Date.now()));
        await pause(5);
        await store.delete(key);
      }
    }),
  );
} catch (err) {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
} finally {
  await meta.close();
}
