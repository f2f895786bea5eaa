/**
 * Issue 17, target 2: a remote store. A loopback proxy adds BENCH_DELAY_MS
 * (20) to every request, as the network to real S3 would; behind it
 * BENCH_LATENCY_COUNT (20,000) files of 4 KiB are copied by
 * `blobshift backfill --concurrency C` (C = BENCH_LATENCY_CONCURRENCY, 256;
 * the config's `maxSockets` set to C, as a user raising the concurrency
 * would) and by `rclone copy --transfers C --checkers C`, each into a fresh
 * bucket of the same server: Ceph RGW when BLOBSHIFT_TEST_RGW is set (one
 * conditional PUT a blob for us), else s3rver (a HEAD and a PUT). Blobs/s
 * over each process's wall time.
 */

import { rm } from 'node:fs/promises';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import {
  type BenchRow,
  createBuckets,
  deleteBuckets,
  envNumber,
  fmt,
  isMain,
  log,
  RGW_CREDENTIALS,
  ratioText,
  rcloneAvailable,
  rcloneConfig,
  S3RVER_CREDENTIALS,
  s3BackendConfig,
  scratch,
  seedFiles,
  seedMeta,
  sqliteMetaConfig,
  standalone,
  startS3rverChild,
  uniqueTag,
  writeConfig,
} from './common.js';
import { type Timed, timed, timedBackfill } from './cpu.js';

/** Forwards every request to `target` after `delayMs` (keep-alive on both sides). */
export async function startDelayProxy(target: string, delayMs: number) {
  const t = new URL(target);
  const { Agent } = await import('node:http');
  const agent = new Agent({ keepAlive: true, maxSockets: 1024 });
  const server = createServer((req, res) => {
    req.pause();
    setTimeout(() => {
      const up = httpRequest(
        { host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers, agent },
        (upRes) => {
          res.writeHead(upRes.statusCode ?? 502, upRes.headers);
          upRes.pipe(res);
        },
      );
      up.on('error', () => res.destroy());
      req.pipe(up);
      req.resume();
    }, delayMs);
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
        agent.destroy();
      }),
  };
}

export async function benchLatency(): Promise<BenchRow[]> {
  const count = envNumber('BENCH_LATENCY_COUNT', 20_000);
  const concurrency = envNumber('BENCH_LATENCY_CONCURRENCY', 256);
  const delay = envNumber('BENCH_DELAY_MS', 20);
  const size = envNumber('BENCH_SMALL_SIZE', 4096);
  const rgw = process.env.BLOBSHIFT_TEST_RGW || undefined;
  const s3 = rgw ? undefined : await startS3rverChild();
  const endpoint = rgw ?? (s3?.endpoint as string);
  const credentials = rgw ? RGW_CREDENTIALS : S3RVER_CREDENTIALS;
  const name = rgw ? 'Ceph RGW' : 's3rver';
  const dir = await scratch('latency');
  const tag = uniqueTag();
  const buckets = [`lours${tag}`, `lrc${tag}`];
  const proxy = await startDelayProxy(endpoint, delay);
  try {
    log(`latency (${name}): seeding ${count} × ${size} B`);
    const root = join(dir, 'old');
    const keys = await seedFiles(root, 'b', count, size);
    const metaFile = join(dir, 'meta.sqlite');
    await seedMeta(
      metaFile,
      keys.map((key) => ({ key, size })),
    );
    await createBuckets(endpoint, buckets, credentials);
    const config = await writeConfig(dir, {
      meta: sqliteMetaConfig(metaFile),
      old: { type: 'fs', root },
      new: { ...s3BackendConfig(proxy.endpoint, buckets[0] as string, credentials), maxSockets: concurrency },
    });
    log(`latency (${name}): blobshift backfill --concurrency ${concurrency} behind +${delay} ms`);
    const ours = await timedBackfill(config, dir, ['--concurrency', String(concurrency)], count);
    let rc: Timed | undefined;
    if (rcloneAvailable()) {
      log(
        `latency (${name}): rclone copy --transfers ${concurrency} --checkers ${concurrency} behind +${delay} ms`,
      );
      const env: NodeJS.ProcessEnv = { ...process.env };
      delete env.AWS_CA_BUNDLE;
      rc = await timed(
        'rclone',
        [
          '--config',
          await rcloneConfig(dir, proxy.endpoint, credentials),
          'copy',
          root,
          `dst:${buckets[1]}`,
          '--transfers',
          String(concurrency),
          '--checkers',
          String(concurrency),
        ],
        dir,
        { exactEnv: env },
      );
      if (rc.result.code !== 0)
        throw new Error(`rclone exited ${rc.result.code}: ${rc.result.stderr.slice(0, 1000)}`);
    }
    const oursRate = count / ours.wall;
    const label = `${fmt(count)} × ${size / 1024} KiB, c=${concurrency}, +${delay} ms a request, ${name}`;
    const cpuNote = `client CPU ${((ours.cpu / count) * 1000).toFixed(3)} ms/blob`;
    if (!rc) {
      return [
        {
          target: `2. behind a +${delay} ms proxy: blobs/s vs rclone (${label})`,
          ours: `${fmt(oursRate)} blobs/s`,
          comparison: 'rclone not installed',
          ratio: 'n/a',
          met: undefined,
          note: cpuNote,
        },
      ];
    }
    const rcRate = count / rc.wall;
    return [
      {
        target: `2. behind a +${delay} ms proxy: blobs/s vs rclone (${label})`,
        ours: `${fmt(oursRate)} blobs/s`,
        comparison: `rclone ${fmt(rcRate)} blobs/s`,
        ratio: ratioText(oursRate / rcRate),
        met: oursRate >= 1.5 * rcRate,
        note: `target ≥ 1.5×; ours ${ours.wall.toFixed(1)} s wall (${cpuNote}), rclone ${rc.wall.toFixed(1)} s (${((rc.cpu / count) * 1000).toFixed(3)} ms/blob); the proxy and the server share the 2 cores`,
      },
    ];
  } finally {
    await proxy.close();
    await deleteBuckets(endpoint, buckets, credentials).catch(() => {});
    await s3?.stop();
    if (!process.env.BENCH_KEEP) await rm(dir, { recursive: true, force: true });
  }
}

if (isMain(import.meta.url)) await standalone(benchLatency);
