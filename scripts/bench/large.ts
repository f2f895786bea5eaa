/**
 * Target 3: one large blob (BENCH_LARGE_MB, default 2048 MiB), filesystem →
 * s3rver and s3rver → filesystem, with `blobshift backfill` run as a child:
 * its peak RSS (≤ 200 MiB) and MB/s against a raw lib-storage `Upload` of
 * the same file (same part size and queue) and a raw GetObject piped to a
 * file. MB/s over each process's wall time (the raw helpers: their own
 * transfer time, so the ceiling is never understated).
 */
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type BenchRow,
  backfillCli,
  createBuckets,
  envNumber,
  fmt,
  isMain,
  lastJson,
  log,
  MiB,
  ratioText,
  runHelper,
  s3BackendConfig,
  scratch,
  seedMeta,
  sqliteMetaConfig,
  standalone,
  startS3rverChild,
  writeConfig,
} from './common.js';

async function writeLargeFile(file: string, bytes: number): Promise<void> {
  const chunk = Buffer.alloc(8 * MiB);
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
  const fh = await open(file, 'w');
  try {
    for (let written = 0; written < bytes; ) {
      const n = Math.min(chunk.length, bytes - written);
      chunk.writeUInt32LE(written / chunk.length, 0);
      await fh.write(chunk, 0, n);
      written += n;
    }
  } finally {
    await fh.close();
  }
}

export async function benchLarge(): Promise<BenchRow[]> {
  const mb = envNumber('BENCH_LARGE_MB', 2048);
  const bytes = Math.round(mb * MiB);
  const dir = await scratch('large');
  const s3 = await startS3rverChild();
  try {
    const root = join(dir, 'old');
    await (await import('node:fs/promises')).mkdir(root, { recursive: true });
    log(`large: writing a ${fmt(mb)} MiB file`);
    await writeLargeFile(join(root, 'big'), bytes);
    const metaFile = join(dir, 'meta.sqlite');
    await seedMeta(metaFile, [{ key: 'big', size: bytes }]);
    await createBuckets(s3.endpoint, ['raw', 'ours']);

    log('large: raw lib-storage Upload');
    const rawUp = lastJson<{ seconds: number }>(
      await runHelper('raw.ts', ['upload', s3.endpoint, 'raw', join(root, 'big'), 'big']),
      'raw upload',
    );
    await (await import('node:fs/promises')).rm(join(s3.directory, 'raw'), { recursive: true, force: true });

    log('large: backfill fs → s3');
    const toS3 = await backfillCli(
      await writeConfig(join(dir), {
        meta: sqliteMetaConfig(metaFile),
        old: { type: 'fs', root },
        new: s3BackendConfig(s3.endpoint, 'ours'),
      }),
      [],
    );
    if (toS3.summary.copied !== 1) throw new Error('the large blob was not copied to S3');
    await rm(join(root, 'big'));

    log('large: raw GetObject to a file');
    const rawGet = lastJson<{ seconds: number }>(
      await runHelper('raw.ts', ['get', s3.endpoint, 'ours', 'big', join(dir, 'raw-get')]),
      'raw get',
    );
    await rm(join(dir, 'raw-get'));

    log('large: backfill s3 → fs');
    const backDir = join(dir, 'back');
    await (await import('node:fs/promises')).mkdir(backDir);
    const toFs = await backfillCli(
      await writeConfig(backDir, {
        meta: sqliteMetaConfig(metaFile),
        old: s3BackendConfig(s3.endpoint, 'ours'),
        new: { type: 'fs', root: join(dir, 'new') },
      }),
      ['--run', 'back'],
    );
    if (toFs.summary.copied !== 1) throw new Error('the large blob was not copied back to the filesystem');

    const mbps = (s: number) => bytes / MiB / s;
    const up = mbps(toS3.result.seconds);
    const upRaw = mbps(rawUp.seconds);
    const down = mbps(toFs.result.seconds);
    const downRaw = mbps(rawGet.seconds);
    const rss = (r: { maxRss: number | undefined }) => (r.maxRss ?? Number.NaN) / MiB;
    const size = `${fmt(mb)} MiB`;
    return [
      {
        target: `3. large fs→s3rver (${size}): MB/s`,
        ours: `${fmt(up, 1)} MiB/s`,
        comparison: `raw Upload ${fmt(upRaw, 1)} MiB/s`,
        ratio: ratioText(up / upRaw),
        met: up >= 0.8 * upRaw,
        note: 'target ≥ 0.8×; same part size (8 MiB) and queue (4)',
      },
      {
        target: `3. large fs→s3rver (${size}): peak RSS`,
        ours: `${fmt(rss(toS3.result))} MiB`,
        comparison: 'limit 200 MiB',
        ratio: ratioText(rss(toS3.result) / 200),
        met: rss(toS3.result) <= 200,
      },
      {
        target: `3. large s3rver→fs (${size}): MB/s`,
        ours: `${fmt(down, 1)} MiB/s`,
        comparison: `raw GetObject→file ${fmt(downRaw, 1)} MiB/s`,
        ratio: ratioText(down / downRaw),
        met: down >= 0.8 * downRaw,
        note: 'target ≥ 0.8×',
      },
      {
        target: `3. large s3rver→fs (${size}): peak RSS`,
        ours: `${fmt(rss(toFs.result))} MiB`,
        comparison: 'limit 200 MiB',
        ratio: ratioText(rss(toFs.result) / 200),
        met: rss(toFs.result) <= 200,
      },
    ];
  } finally {
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

if (isMain(import.meta.url)) await standalone(benchLarge);
