/**
 * Targets 1 and 2: many small blobs, filesystem → S3.
 *
 * 1. BENCH_SMALL_COUNT (20,000) × BENCH_SMALL_SIZE (4 KiB) at concurrency
 *    BENCH_CONCURRENCY (32), each contender into a fresh bucket of one
 *    server, after a warm-up pass (a fresh s3rver is slower for its first few
 *    thousand requests, which would favour whoever runs later): the raw SDK
 *    PutObject loop (the ceiling), the raw SDK HEAD + PutObject loop (what a
 *    copy that must not overwrite costs where the server has no conditional
 *    writes, without blobshift), `blobshift backfill`, and
 *    `rclone copy --transfers N --checkers N`. Blobs/s over the process's
 *    wall time (the raw loops: their own loop time, so the ceiling is never
 *    understated).
 * 2. The no-op rerun over the migrated set (`--reset`) through a counting
 *    proxy: requests to the new backend, and wall time against rclone's rerun
 *    with `--size-only` (BENCH_NOOP_ROUNDS, 3, runs of each, alternating;
 *    medians) and by default (one run).
 *
 * On s3rver, and with BLOBSHIFT_TEST_RGW also on Ceph RGW (BENCH_RGW_SMALL_COUNT,
 * 10,000: RGW takes about 300–400 small PUTs a second here), which honours
 * `If-None-Match: *`, so a no-overwrite copy there is one conditional PUT
 * (and the HEAD + PutObject row is left out). Every bucket is emptied and
 * deleted afterwards (RGW here keeps objects in RAM).
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type BenchRow,
  backfillCli,
  type ChildResult,
  createBuckets,
  deleteBuckets,
  envNumber,
  fmt,
  isMain,
  lastJson,
  log,
  median,
  RGW_CREDENTIALS,
  ratioText,
  rclone,
  rcloneAvailable,
  rcloneConfig,
  runHelper,
  S3RVER_CREDENTIALS,
  s3BackendConfig,
  scratch,
  seedFiles,
  seedMeta,
  sqliteMetaConfig,
  standalone,
  startCountingProxy,
  startS3rverChild,
  uniqueTag,
  writeConfig,
} from './common.js';

interface Server {
  name: string;
  endpoint: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  /** Whether PutObject honours If-None-Match (a no-overwrite copy is then one request). */
  conditional: boolean;
}

export async function benchSmall(): Promise<BenchRow[]> {
  const s3 = await startS3rverChild();
  const rows: BenchRow[] = [];
  try {
    rows.push(
      ...(await smallOn(
        { name: 's3rver', endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS, conditional: false },
        envNumber('BENCH_SMALL_COUNT', 20_000),
      )),
    );
  } finally {
    await s3.stop();
  }
  const rgw = process.env.BLOBSHIFT_TEST_RGW || undefined;
  if (rgw) {
    rows.push(
      ...(await smallOn(
        { name: 'Ceph RGW', endpoint: rgw, credentials: RGW_CREDENTIALS, conditional: true },
        envNumber('BENCH_RGW_SMALL_COUNT', 10_000),
      )),
    );
  }
  return rows;
}

async function smallOn(server: Server, count: number): Promise<BenchRow[]> {
  const size = envNumber('BENCH_SMALL_SIZE', 4096);
  const concurrency = envNumber('BENCH_CONCURRENCY', 32);
  const noopRounds = Math.max(1, envNumber('BENCH_NOOP_ROUNDS', 3));
  const dir = await scratch('small');
  const proxy = await startCountingProxy(server.endpoint);
  const tag = uniqueTag();
  const bucket = (name: string) => `${name}${tag}`;
  const buckets = ['warm', 'raw', 'rawhead', 'ours', 'rclone'].map(bucket);
  const { name, credentials } = server;
  const rows: BenchRow[] = [];
  const label = `${fmt(count)} × ${size / 1024} KiB, c=${concurrency}`;
  try {
    log(`small (${name}): seeding ${count} × ${size} B`);
    const root = join(dir, 'old');
    const keys = await seedFiles(root, 'b', count, size);
    const warmRoot = join(dir, 'warm');
    await seedFiles(warmRoot, 'w', Math.min(count, 3000), size);
    const metaFile = join(dir, 'meta.sqlite');
    await seedMeta(
      metaFile,
      keys.map((key) => ({ key, size })),
    );
    await createBuckets(server.endpoint, buckets, credentials);
    const helperEnv = { BENCH_S3_KEY: credentials.accessKeyId, BENCH_S3_SECRET: credentials.secretAccessKey };
    const raw = async (mode: 'put-dir' | 'head-put-dir', into: string) =>
      lastJson<{ rate: number; seconds: number }>(
        await runHelper('raw.ts', [mode, server.endpoint, into, root, String(concurrency)], {
          env: helperEnv,
        }),
        `raw ${mode}`,
      );

    log(`small (${name}): warm-up`);
    await runHelper('raw.ts', ['put-dir', server.endpoint, bucket('warm'), warmRoot, String(concurrency)], {
      env: helperEnv,
    });

    log(`small (${name}): raw SDK PutObject loop`);
    const rawPut = await raw('put-dir', bucket('raw'));
    // Where PutObject is conditional a no-overwrite copy needs no HEAD: no such row.
    let rawHead: { rate: number } | undefined;
    if (!server.conditional) {
      log(`small (${name}): raw SDK HEAD + PutObject loop`);
      rawHead = await raw('head-put-dir', bucket('rawhead'));
    }

    log(`small (${name}): blobshift backfill`);
    const config = await writeConfig(dir, {
      meta: sqliteMetaConfig(metaFile),
      old: { type: 'fs', root },
      new: s3BackendConfig(server.endpoint, bucket('ours'), credentials),
    });
    const ours = await backfillCli(config, ['--concurrency', String(concurrency)]);
    if (ours.summary.copied !== count) throw new Error(`backfill copied ${ours.summary.copied} of ${count}`);
    const oursRate = count / ours.result.seconds;
    log(`small (${name}): raw ${rawPut.rate.toFixed(0)} blobs/s, backfill ${oursRate.toFixed(0)} blobs/s`);

    // The same command copies and, over the finished bucket, reruns.
    const rcArgs = [
      'copy',
      root,
      `dst:${bucket('rclone')}`,
      '--transfers',
      String(concurrency),
      '--checkers',
      String(concurrency),
    ];
    let rc: ChildResult | undefined;
    if (rcloneAvailable()) {
      log(`small (${name}): rclone copy`);
      const r = await rclone(rcArgs, await rcloneConfig(dir, server.endpoint, credentials));
      if (r.code !== 0) throw new Error(`rclone copy exited ${r.code}: ${r.stderr.slice(0, 2000)}`);
      rc = r;
    }
    const perBlob = server.conditional
      ? 'one conditional PutObject a blob'
      : 'no conditional writes here: each no-overwrite copy is a HEAD, then a PutObject';
    const vsRaw = oursRate / rawPut.rate;
    rows.push({
      target: `1. small fs→${name} vs raw SDK PutObject (${label})`,
      ours: `${fmt(oursRate)} blobs/s`,
      comparison: `raw PutObject ${fmt(rawPut.rate)} blobs/s`,
      ratio: ratioText(vsRaw),
      met: vsRaw >= 0.85,
      note: `target ≥ 0.85×; ${perBlob}; backfill ${ours.result.seconds.toFixed(1)} s wall, peak RSS ${fmt((ours.result.maxRss ?? 0) / 2 ** 20)} MiB`,
    });
    if (rawHead) {
      rows.push({
        target: `1. small fs→${name} vs raw SDK HEAD + PutObject`,
        ours: `${fmt(oursRate)} blobs/s`,
        comparison: `raw HEAD + PutObject ${fmt(rawHead.rate)} blobs/s`,
        ratio: ratioText(oursRate / rawHead.rate),
        met: undefined,
        note: 'context: the same existence check a no-overwrite copy needs without conditional writes, no blobshift in the path',
      });
    }
    if (rc) {
      const rcRate = count / rc.seconds;
      rows.push({
        target: `1. small fs→${name} vs rclone copy`,
        ours: `${fmt(oursRate)} blobs/s`,
        comparison: `rclone ${fmt(rcRate)} blobs/s (${ratioText(rcRate / rawPut.rate)} raw)`,
        ratio: ratioText(oursRate / rcRate),
        met: oursRate / rcRate >= 1.5,
        note: 'target ≥ 1.5×; rclone sends a PutObject and a HEAD a file',
      });
    } else {
      rows.push({
        target: `1. small fs→${name} vs rclone copy`,
        ours: `${fmt(oursRate)} blobs/s`,
        comparison: 'rclone not installed',
        ratio: 'n/a',
        met: undefined,
      });
    }

    log(`small (${name}): no-op reruns through the counting proxy`);
    await mkdir(join(dir, 'proxied'));
    const proxied = await writeConfig(join(dir, 'proxied'), {
      meta: sqliteMetaConfig(metaFile),
      old: { type: 'fs', root },
      new: s3BackendConfig(proxy.endpoint, bucket('ours'), credentials),
    });
    const rcConf = rc ? await rcloneConfig(join(dir, 'proxied'), proxy.endpoint, credentials) : undefined;
    const oursNoop: { seconds: number; requests: number; byKind: Record<string, number> }[] = [];
    const sizeOnly: { seconds: number; requests: number }[] = [];
    for (let round = 0; round < noopRounds; round++) {
      if (rcConf) {
        proxy.reset();
        const r = await rclone([...rcArgs, '--size-only'], rcConf);
        if (r.code !== 0) throw new Error(`rclone --size-only rerun failed: ${r.stderr.slice(0, 2000)}`);
        sizeOnly.push({ seconds: r.seconds, requests: proxy.total() });
      }
      proxy.reset();
      const noop = await backfillCli(proxied, ['--concurrency', String(concurrency), '--reset']);
      if (noop.summary.present !== count)
        throw new Error(`no-op rerun found ${noop.summary.present} of ${count} present`);
      oursNoop.push({ seconds: noop.result.seconds, requests: proxy.total(), byKind: proxy.counts() });
    }
    const noopSeconds = median(oursNoop.map((r) => r.seconds));
    const most = oursNoop.reduce((a, b) => (b.requests > a.requests ? b : a));
    const runs = (xs: { seconds: number }[]) => xs.map((x) => x.seconds.toFixed(2)).join(', ');
    rows.push({
      target: `2. no-op rerun on ${name}: requests to new (≤ blobs/500 = ${Math.floor(count / 500)})`,
      ours: `${most.requests} requests`,
      comparison: `${fmt(count)} blobs`,
      ratio: `1/${fmt(count / Math.max(1, most.requests))}`,
      met: most.requests <= count / 500,
      note: `the most of ${noopRounds} runs; by kind: ${Object.entries(most.byKind)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}`,
    });
    if (rcConf) {
      proxy.reset();
      const dflt = await rclone(rcArgs, rcConf);
      const dfltRequests = proxy.total();
      if (dflt.code !== 0) throw new Error(`rclone rerun failed: ${dflt.stderr.slice(0, 2000)}`);
      const sizeOnlySeconds = median(sizeOnly.map((r) => r.seconds));
      rows.push({
        target: `2. no-op rerun on ${name}: wall time vs rclone --size-only`,
        ours: `${noopSeconds.toFixed(2)} s`,
        comparison: `${sizeOnlySeconds.toFixed(2)} s (${sizeOnly[0]?.requests ?? 0} requests)`,
        ratio: ratioText(noopSeconds / sizeOnlySeconds),
        met: noopSeconds <= sizeOnlySeconds,
        note: `target ≤ 1.0×; medians of ${noopRounds} alternating runs (ours ${runs(oursNoop)}; rclone ${runs(sizeOnly)})`,
      });
      rows.push({
        target: `2. no-op rerun on ${name}: wall time vs rclone default`,
        ours: `${noopSeconds.toFixed(2)} s`,
        comparison: `${dflt.seconds.toFixed(2)} s (${fmt(dfltRequests)} requests)`,
        ratio: ratioText(noopSeconds / dflt.seconds),
        met: noopSeconds <= 0.3 * dflt.seconds,
        note: 'target ≤ 0.3×',
      });
    }
    return rows;
  } finally {
    await proxy.close();
    await deleteBuckets(server.endpoint, buckets, credentials).catch(() => {});
    if (!process.env.BENCH_KEEP) await rm(dir, { recursive: true, force: true });
  }
}

if (isMain(import.meta.url)) await standalone(benchSmall);
