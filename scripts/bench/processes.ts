/**
 * Issue 17, target 3: `blobshift backfill --processes N` (and `verify --checksum
 * --processes N`, over the first bucket) scales without
 * costing more CPU a blob. BENCH_PROC_COUNT (10,000) files of 4 KiB are
 * copied with `--processes 1`, then 2 … BENCH_PROC_MAX (the host's cores),
 * each into a fresh bucket of the same server (Ceph RGW when
 * BLOBSHIFT_TEST_RGW is set, else s3rver), under GNU time: CPU seconds a
 * blob over the whole process tree (the parent and its children), and
 * blobs/s. Target: CPU a blob with N processes within 1.15 × that of one.
 * On this 2-core machine the server under test shares the cores, so blobs/s
 * cannot double; the CPU a blob is the figure that carries to a larger host.
 */
import { mkdir, rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import {
  type BenchRow,
  cliCommand,
  createBuckets,
  deleteBuckets,
  envNumber,
  fmt,
  isMain,
  lastJson,
  log,
  RGW_CREDENTIALS,
  ratioText,
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
import { timed, timedBackfill } from './cpu.js';

export async function benchProcesses(): Promise<BenchRow[]> {
  const count = envNumber('BENCH_PROC_COUNT', 10_000);
  const max = Math.max(2, envNumber('BENCH_PROC_MAX', availableParallelism()));
  const concurrency = envNumber('BENCH_CONCURRENCY', 32);
  const size = envNumber('BENCH_SMALL_SIZE', 4096);
  const rgw = process.env.BLOBSHIFT_TEST_RGW || undefined;
  const s3 = rgw ? undefined : await startS3rverChild();
  const endpoint = rgw ?? (s3?.endpoint as string);
  const credentials = rgw ? RGW_CREDENTIALS : S3RVER_CREDENTIALS;
  const name = rgw ? 'Ceph RGW' : 's3rver';
  const dir = await scratch('processes');
  const tag = uniqueTag();
  const counts = Array.from({ length: max }, (_, i) => i + 1);
  const buckets = counts.map((n) => `proc${n}${tag}`);
  try {
    log(`processes (${name}): seeding ${count} × ${size} B`);
    const root = join(dir, 'old');
    const keys = await seedFiles(root, 'b', count, size);
    const metaFile = join(dir, 'meta.sqlite');
    await seedMeta(
      metaFile,
      keys.map((key) => ({ key, size })),
    );
    await createBuckets(endpoint, buckets, credentials);
    const results: { n: number; cpuMs: number; rate: number }[] = [];
    for (const n of counts) {
      const sub = join(dir, `p${n}`);
      await mkdir(sub, { recursive: true });
      const config = await writeConfig(sub, {
        meta: sqliteMetaConfig(metaFile),
        old: { type: 'fs', root },
        new: s3BackendConfig(endpoint, buckets[n - 1] as string, credentials),
      });
      log(`processes (${name}): backfill --processes ${n} (--concurrency ${concurrency} each)`);
      const t = await timedBackfill(
        config,
        sub,
        ['--concurrency', String(concurrency), '--run', `p${n}`, '--processes', String(n)],
        count,
      );
      results.push({ n, cpuMs: (t.cpu / count) * 1000, rate: count / t.wall });
    }
    // verify --checksum over the first bucket (every blob read and hashed), 1 … N processes.
    const verifyResults: { n: number; cpuMs: number; rate: number }[] = [];
    const firstConfig = join(dir, 'p1', 'blobshift.config.json');
    for (const n of counts) {
      log(`processes (${name}): verify --checksum --processes ${n}`);
      const t = await timed(
        process.execPath,
        [
          ...cliCommand().args,
          'verify',
          '-c',
          firstConfig,
          '--checksum',
          '--json',
          '--log-dir',
          join(dir, `vlogs${n}`),
          '--processes',
          String(n),
        ],
        dir,
      );
      const report = lastJson<{ ok: number; safe: boolean }>(t.result, 'verify');
      if (!report.safe || report.ok !== count) throw new Error(`verify found ${report.ok} of ${count} ok`);
      verifyResults.push({ n, cpuMs: (t.cpu / count) * 1000, rate: count / t.wall });
    }
    const one = results[0] as { cpuMs: number; rate: number };
    const vOne = verifyResults[0] as { cpuMs: number; rate: number };
    const verifyRows: BenchRow[] = verifyResults.map((r) => ({
      target: `3. verify --checksum --processes ${r.n}, ${name} (${fmt(count)} × ${size / 1024} KiB): CPU a blob`,
      ours: `${r.cpuMs.toFixed(3)} ms/blob, ${fmt(r.rate)} blobs/s`,
      comparison:
        r.n === 1 ? 'the base' : `1 process: ${vOne.cpuMs.toFixed(3)} ms/blob, ${fmt(vOne.rate)} blobs/s`,
      ratio: r.n === 1 ? '1.00×' : ratioText(r.cpuMs / vOne.cpuMs),
      met: r.n === 1 ? undefined : r.cpuMs <= 1.15 * vOne.cpuMs,
      note:
        r.n === 1
          ? 'every blob read and hashed; CPU of the whole process tree'
          : `target ≤ 1.15× the CPU a blob of one process; blobs/s ${ratioText(r.rate / vOne.rate)} of one process`,
    }));
    const backfillRows: BenchRow[] = results.map((r) => ({
      target: `3. backfill --processes ${r.n}, fs→${name} (${fmt(count)} × ${size / 1024} KiB, c=${concurrency} each): CPU a blob`,
      ours: `${r.cpuMs.toFixed(3)} ms/blob, ${fmt(r.rate)} blobs/s`,
      comparison:
        r.n === 1 ? 'the base' : `1 process: ${one.cpuMs.toFixed(3)} ms/blob, ${fmt(one.rate)} blobs/s`,
      ratio: r.n === 1 ? '1.00×' : ratioText(r.cpuMs / one.cpuMs),
      met: r.n === 1 ? undefined : r.cpuMs <= 1.15 * one.cpuMs,
      note:
        r.n === 1
          ? `CPU of the whole process tree under GNU time; the server under test shares the ${availableParallelism()} cores`
          : `target ≤ 1.15× the CPU a blob of one process; blobs/s ${ratioText(r.rate / one.rate)} of one process`,
    }));
    return [...backfillRows, ...verifyRows];
  } finally {
    await deleteBuckets(endpoint, buckets, credentials).catch(() => {});
    await s3?.stop();
    if (!process.env.BENCH_KEEP) await rm(dir, { recursive: true, force: true });
  }
}

if (isMain(import.meta.url)) await standalone(benchProcesses);
