/**
 * Targets 1 and 2: many small blobs, filesystem → s3rver.
 *
 * 1. BENCH_SMALL_COUNT (20,000) × BENCH_SMALL_SIZE (4 KiB) at concurrency
 *    BENCH_CONCURRENCY (32), each contender into a fresh bucket of one
 *    s3rver: the raw SDK PutObject loop (the ceiling), `blobshift backfill`,
 *    and `rclone copy --transfers N --checkers N`. Blobs/s over the
 *    process's wall time (the raw loop: its own loop time, so the ceiling is
 *    never understated).
 * 2. The no-op rerun over the migrated set (`--reset`), through a counting
 *    proxy: requests to the new backend, wall time; against rclone's rerun
 *    with `--size-only` and by default, through the same proxy.
 */
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
  ratioText,
  rclone,
  rcloneAvailable,
  rcloneConfig,
  runHelper,
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

export async function benchSmall(): Promise<BenchRow[]> {
  const count = envNumber('BENCH_SMALL_COUNT', 20_000);
  const size = envNumber('BENCH_SMALL_SIZE', 4096);
  const concurrency = envNumber('BENCH_CONCURRENCY', 32);
  const dir = await scratch('small');
  const s3 = await startS3rverChild();
  const proxy = await startCountingProxy(s3.endpoint);
  const rows: BenchRow[] = [];
  try {
    log(`small: seeding ${count} × ${size} B`);
    const root = join(dir, 'old');
    const keys = await seedFiles(root, 'b', count, size);
    const metaFile = join(dir, 'meta.sqlite');
    await seedMeta(
      metaFile,
      keys.map((key) => ({ key, size })),
    );
    await createBuckets(s3.endpoint, ['raw', 'ours', 'rclone']);

    log('small: raw SDK PutObject loop');
    const raw = lastJson<{ rate: number; seconds: number }>(
      await runHelper('raw.ts', ['put-dir', s3.endpoint, 'raw', root, String(concurrency)]),
      'raw put-dir',
    );

    log('small: blobshift backfill');
    const config = await writeConfig(dir, {
      meta: sqliteMetaConfig(metaFile),
      old: { type: 'fs', root },
      new: s3BackendConfig(s3.endpoint, 'ours'),
    });
    const ours = await backfillCli(config, ['--concurrency', String(concurrency)]);
    if (ours.summary.copied !== count) throw new Error(`backfill copied ${ours.summary.copied} of ${count}`);
    const oursRate = count / ours.result.seconds;
    log(`small: raw ${raw.rate.toFixed(0)} blobs/s, backfill ${oursRate.toFixed(0)} blobs/s`);

    let rc: { seconds: number } | undefined;
    let rcConf: string | undefined;
    if (rcloneAvailable()) {
      log('small: rclone copy');
      rcConf = await rcloneConfig(dir, s3.endpoint);
      const r = await rclone(
        ['copy', root, 'dst:rclone', '--transfers', String(concurrency), '--checkers', String(concurrency)],
        rcConf,
      );
      if (r.code !== 0) throw new Error(`rclone copy exited ${r.code}: ${r.stderr.slice(0, 2000)}`);
      rc = r;
    }
    const vsRaw = oursRate / raw.rate;
    rows.push({
      target: `1. small fs→s3rver vs raw SDK (${fmt(count)} × ${size / 1024} KiB, c=${concurrency})`,
      ours: `${fmt(oursRate)} blobs/s`,
      comparison: `raw PutObject ${fmt(raw.rate)} blobs/s`,
      ratio: ratioText(vsRaw),
      met: vsRaw >= 0.85,
      note: `target ≥ 0.85×; backfill ${ours.result.seconds.toFixed(1)} s wall, peak RSS ${fmt((ours.result.maxRss ?? 0) / 2 ** 20)} MiB`,
    });
    if (rc) {
      const rcRate = count / rc.seconds;
      rows.push({
        target: '1. small fs→s3rver vs rclone copy',
        ours: `${fmt(oursRate)} blobs/s`,
        comparison: `rclone ${fmt(rcRate)} blobs/s`,
        ratio: ratioText(oursRate / rcRate),
        met: oursRate / rcRate >= 1.5,
        note: 'target ≥ 1.5×',
      });
    } else {
      rows.push({
        target: '1. small fs→s3rver vs rclone copy',
        ours: `${fmt(oursRate)} blobs/s`,
        comparison: 'rclone not installed',
        ratio: 'n/a',
        met: undefined,
      });
    }

    log('small: no-op rerun (--reset) through the counting proxy');
    const proxied = await writeConfig(dir, {
      meta: sqliteMetaConfig(metaFile),
      old: { type: 'fs', root },
      new: s3BackendConfig(proxy.endpoint, 'ours'),
    });
    proxy.reset();
    const noop = await backfillCli(proxied, ['--concurrency', String(concurrency), '--reset']);
    const requests = proxy.total();
    const byKind = proxy.counts();
    if (noop.summary.present !== count)
      throw new Error(`no-op rerun found ${noop.summary.present} of ${count} present`);
    rows.push({
      target: `2. no-op rerun: requests to new (≤ blobs/500 = ${Math.floor(count / 500)})`,
      ours: `${requests} requests`,
      comparison: `${fmt(count)} blobs`,
      ratio: `1/${fmt(count / Math.max(1, requests))}`,
      met: requests <= count / 500,
      note: `by kind: ${Object.entries(byKind)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}`,
    });
    if (rcConf) {
      const proxiedRc = await rcloneConfig(join(dir), proxy.endpoint);
      const args = [
        'copy',
        root,
        'dst:rclone',
        '--transfers',
        String(concurrency),
        '--checkers',
        String(concurrency),
      ];
      proxy.reset();
      const sizeOnly = await rclone([...args, '--size-only'], proxiedRc);
      const sizeOnlyRequests = proxy.total();
      proxy.reset();
      const dflt = await rclone(args, proxiedRc);
      const dfltRequests = proxy.total();
      if (sizeOnly.code !== 0 || dflt.code !== 0)
        throw new Error(`rclone rerun failed: ${dflt.stderr.slice(0, 2000)}`);
      rows.push({
        target: '2. no-op rerun wall time vs rclone --size-only',
        ours: `${noop.result.seconds.toFixed(2)} s`,
        comparison: `${sizeOnly.seconds.toFixed(2)} s (${sizeOnlyRequests} requests)`,
        ratio: ratioText(noop.result.seconds / sizeOnly.seconds),
        met: noop.result.seconds <= sizeOnly.seconds,
        note: 'target ≤ 1.0×',
      });
      rows.push({
        target: '2. no-op rerun wall time vs rclone default',
        ours: `${noop.result.seconds.toFixed(2)} s`,
        comparison: `${dflt.seconds.toFixed(2)} s (${dfltRequests} requests)`,
        ratio: ratioText(noop.result.seconds / dflt.seconds),
        met: noop.result.seconds <= 0.3 * dflt.seconds,
        note: 'target ≤ 0.3×',
      });
    }
    return rows;
  } finally {
    await proxy.close();
    await s3.stop();
    if (!process.env.BENCH_KEEP)
      await import('node:fs/promises').then((fs) => fs.rm(dir, { recursive: true, force: true }));
  }
}

if (isMain(import.meta.url)) await standalone(benchSmall);
