/**
 * Target 5: `MigratingBlobDB.get` of a blob already in the new backend costs
 * no extra request and about the latency of the new backend's own `get`; a
 * blob only in the old backend costs exactly one extra request (the new
 * backend's not-found). Both backends are S3 buckets of one s3rver reached
 * through a counting proxy; gets are sequential, each body read to its end,
 * the two kinds interleaved so drift hits both alike.
 */

import { MigratingBlobDB } from '../../lib/app/migrating.js';
import { S3BlobDB } from '../../lib/backends/s3/index.js';
import type { BlobDB } from '../../lib/contract/types.js';
import {
  type BenchRow,
  createBuckets,
  envNumber,
  fmt,
  isMain,
  log,
  median,
  ratioText,
  s3rverClientConfig,
  standalone,
  startCountingProxy,
  startS3rverChild,
} from './common.js';

async function timedGet(db: BlobDB, key: string): Promise<number> {
  const t = performance.now();
  const body = await db.get(key);
  for await (const _ of body) {
    // read to the end
  }
  return performance.now() - t;
}

export async function benchMigratingGet(): Promise<BenchRow[]> {
  const rounds = envNumber('BENCH_GET_ROUNDS', 1000);
  const size = envNumber('BENCH_GET_SIZE', 4096);
  const s3 = await startS3rverChild();
  const proxy = await startCountingProxy(s3.endpoint);
  try {
    await createBuckets(s3.endpoint, ['newb', 'oldb']);
    const newDb = new S3BlobDB({ bucket: 'newb', clientConfig: s3rverClientConfig(proxy.endpoint) });
    const oldDb = new S3BlobDB({ bucket: 'oldb', clientConfig: s3rverClientConfig(proxy.endpoint) });
    const migrating = new MigratingBlobDB(newDb, oldDb);
    const body = Buffer.alloc(size, 7);
    const keys = Array.from({ length: 64 }, (_, i) => `k${String(i).padStart(4, '0')}`);
    for (const key of keys) {
      await newDb.put(key, body);
      await oldDb.put(`old-${key}`, body);
    }
    // Warm both paths (sockets, SDK middleware).
    for (const key of keys.slice(0, 16)) {
      await timedGet(newDb, key);
      await timedGet(migrating, key);
    }
    log(`migrating-get: ${rounds} rounds of interleaved gets`);
    const direct: number[] = [];
    const through: number[] = [];
    proxy.reset();
    for (let i = 0; i < rounds; i++) {
      const key = keys[i % keys.length] as string;
      if (i % 2 === 0) {
        direct.push(await timedGet(newDb, key));
        through.push(await timedGet(migrating, key));
      } else {
        through.push(await timedGet(migrating, key));
        direct.push(await timedGet(newDb, key));
      }
    }
    const hitRequests = proxy.total();
    const dMed = median(direct);
    const tMed = median(through);

    // Fallback: in old only.
    const fallbackRounds = Math.min(200, rounds);
    proxy.reset();
    for (let i = 0; i < fallbackRounds; i++) await timedGet(oldDb, `old-${keys[i % keys.length]}`);
    const oldOnly = proxy.total();
    proxy.reset();
    for (let i = 0; i < fallbackRounds; i++) await timedGet(migrating, `old-${keys[i % keys.length]}`);
    const viaMigrating = proxy.total();
    await migrating.close();

    const extraPerHit = (hitRequests - 2 * rounds) / rounds;
    const extraPerFallback = (viaMigrating - oldOnly) / fallbackRounds;
    return [
      {
        target: '5. MigratingBlobDB.get, blob in new: latency',
        ours: `median ${dMed > 0 ? tMed.toFixed(3) : '?'} ms`,
        comparison: `newDb.get median ${dMed.toFixed(3)} ms`,
        ratio: ratioText(tMed / dMed),
        met: tMed <= 1.05 * dMed,
        note: `target ≤ 1.05×; ${rounds} gets each of ${size} B, interleaved`,
      },
      {
        target: '5. MigratingBlobDB.get, blob in new: extra requests',
        ours: `${fmt(hitRequests - rounds)} requests / ${rounds} gets`,
        comparison: `newDb.get ${fmt(rounds)} requests / ${rounds} gets`,
        ratio: `+${extraPerHit.toFixed(2)} per get`,
        met: extraPerHit === 0,
      },
      {
        target: '5. MigratingBlobDB.get, fallback to old: extra requests',
        ours: `${viaMigrating} requests / ${fallbackRounds} gets`,
        comparison: `oldDb.get ${oldOnly} requests / ${fallbackRounds} gets`,
        ratio: `+${extraPerFallback.toFixed(2)} per get`,
        met: extraPerFallback === 1,
        note: 'target: exactly +1 (the new backend’s not-found)',
      },
    ];
  } finally {
    await proxy.close();
    await s3.stop();
  }
}

if (isMain(import.meta.url)) await standalone(benchMigratingGet);
