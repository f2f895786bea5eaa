/**
 * The backfill benchmark of the backfill issue: BENCH_MIXED_SMALL (20,000)
 * × 4 KiB plus BENCH_MIXED_LARGE (20) × 8 MiB, filesystem → s3rver at
 * concurrency BENCH_CONCURRENCY (32), through the real CLI: blobs/s, MB/s and
 * peak RSS, then the no-op rerun (`--reset`) through a counting proxy.
 * Figures only (no comparison): targets 1 and 2 carry the side-by-side ones.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type BenchRow,
  backfillCli,
  createBuckets,
  envNumber,
  fmt,
  isMain,
  log,
  MiB,
  s3BackendConfig,
  scratch,
  seedFiles,
  seedMeta,
  sqliteMetaConfig,
  standalone,
  startCountingProxy,
  startS3rverChild,
  writeConfig,
} from './common.js';

export async function benchBackfill(): Promise<BenchRow[]> {
  const small = envNumber('BENCH_MIXED_SMALL', 20_000);
  const large = envNumber('BENCH_MIXED_LARGE', 20);
  const concurrency = envNumber('BENCH_CONCURRENCY', 32);
  const dir = await scratch('mixed');
  const s3 = await startS3rverChild();
  const proxy = await startCountingProxy(s3.endpoint);
  try {
    const root = join(dir, 'old');
    log(`mixed: seeding ${small} × 4 KiB + ${large} × 8 MiB`);
    const smallKeys = await seedFiles(root, 's', small, 4096);
    const largeKeys = await seedFiles(root, 'l', large, 8 * MiB);
    const metaFile = join(dir, 'meta.sqlite');
    await seedMeta(metaFile, [
      ...smallKeys.map((key) => ({ key, size: 4096 })),
      ...largeKeys.map((key) => ({ key, size: 8 * MiB })),
    ]);
    await createBuckets(s3.endpoint, ['mixed']);
    const total = small + large;
    const bytes = small * 4096 + large * 8 * MiB;
    const config = await writeConfig(dir, {
      meta: sqliteMetaConfig(metaFile),
      old: { type: 'fs', root },
      new: s3BackendConfig(proxy.endpoint, 'mixed'),
    });
    log('mixed: backfill');
    const first = await backfillCli(config, ['--concurrency', String(concurrency)]);
    const copyRequests = proxy.total();
    proxy.reset();
    log('mixed: no-op rerun');
    const rerun = await backfillCli(config, ['--concurrency', String(concurrency), '--reset']);
    const s = first.result.seconds;
    return [
      {
        target: `backfill issue benchmark (${fmt(small)} × 4 KiB + ${large} × 8 MiB, c=${concurrency})`,
        ours: `${fmt(total / s)} blobs/s, ${fmt(bytes / MiB / s, 1)} MiB/s`,
        comparison: `${s.toFixed(1)} s wall, ${fmt(copyRequests)} requests`,
        ratio: 'n/a',
        met: undefined,
        note: `peak RSS ${fmt((first.result.maxRss ?? 0) / MiB)} MiB; copied ${first.summary.copied}`,
      },
      {
        target: 'backfill issue benchmark: no-op rerun (--reset)',
        ours: `${rerun.result.seconds.toFixed(2)} s, ${proxy.total()} requests`,
        comparison: `${fmt(total)} blobs present: ${rerun.summary.present}`,
        ratio: 'n/a',
        met: undefined,
      },
    ];
  } finally {
    await proxy.close();
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

if (isMain(import.meta.url)) await standalone(benchBackfill);
