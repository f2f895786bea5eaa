/**
 * Target 4: S3 → S3 on one endpoint (two buckets, same credentials). The
 * backfill chooses server-side copy (`copyFrom`) wherever it keeps
 * no-overwrite as well as a put does, and the client receives ≈ no blob
 * bytes; against the streaming path (the same two buckets reached through two
 * different endpoints, so no server-side copy). Both runs go through counting
 * proxies on 127.0.0.1 that count response bytes.
 *
 * On s3rver (no conditional writes at all: a put checks then writes, and so
 * does the copy) the copy is server-side. With BLOBSHIFT_TEST_RGW the same
 * runs on Ceph RGW, whose PutObject honours `If-None-Match: *` and whose
 * CopyObject does not: there copyFrom streams by design, and the rows say so.
 * BENCH_COPY_COUNT (1000) × BENCH_COPY_SIZE (256 KiB).
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { S3BlobDB } from '../../lib/backends/s3/index.js';
import {
  type BenchRow,
  backfillCli,
  createBuckets,
  deleteBuckets,
  envNumber,
  fmt,
  isMain,
  keyFor,
  log,
  MiB,
  RGW_CREDENTIALS,
  ratioText,
  S3RVER_CREDENTIALS,
  s3BackendConfig,
  s3rverClientConfig,
  scratch,
  seedMeta,
  sqliteMetaConfig,
  standalone,
  startCountingProxy,
  startS3rverChild,
  uniqueTag,
  writeConfig,
} from './common.js';

export async function benchS3ToS3(): Promise<BenchRow[]> {
  const rows = await benchS3ToS3On(undefined);
  const rgw = process.env.BLOBSHIFT_TEST_RGW || undefined;
  if (rgw) rows.push(...(await benchS3ToS3On(rgw)));
  return rows;
}

async function benchS3ToS3On(rgw: string | undefined): Promise<BenchRow[]> {
  const count = envNumber('BENCH_COPY_COUNT', 1000);
  const size = envNumber('BENCH_COPY_SIZE', 256 * 1024);
  const concurrency = envNumber('BENCH_CONCURRENCY', 32);
  const s3 = rgw ? undefined : await startS3rverChild();
  const endpoint = rgw ?? (s3?.endpoint as string);
  const server = rgw ? 'Ceph RGW' : 's3rver';
  const credentials = rgw ? RGW_CREDENTIALS : S3RVER_CREDENTIALS;
  const tag = uniqueTag();
  const [src, viaCopy, viaStream] = [`bsrc${tag}`, `bcopy${tag}`, `bstream${tag}`];
  const a = await startCountingProxy(endpoint);
  const b = await startCountingProxy(endpoint);
  const dir = await scratch('s3s3');
  const cleanup: S3BlobDB[] = [];
  try {
    await createBuckets(endpoint, [src, viaCopy, viaStream], credentials);
    const clientConfig = { ...s3rverClientConfig(endpoint), credentials: { ...credentials } };
    const source = new S3BlobDB({ bucket: src, clientConfig });
    cleanup.push(source, ...[viaCopy, viaStream].map((bucket) => new S3BlobDB({ bucket, clientConfig })));
    log(`s3-to-s3 (${server}): seeding ${count} × ${size} B`);
    const body = randomBytes(size);
    const keys = Array.from({ length: count }, (_, i) => keyFor('c', i));
    for (let i = 0; i < keys.length; i += 32) {
      await Promise.all(keys.slice(i, i + 32).map((k) => source.put(k, body)));
    }
    const metaFile = join(dir, 'meta.sqlite');
    await seedMeta(
      metaFile,
      keys.map((key) => ({ key, size })),
    );
    const run = async (name: string, oldEndpoint: string, newEndpoint: string, bucket: string) => {
      const runDir = join(dir, name);
      await (await import('node:fs/promises')).mkdir(runDir);
      const config = await writeConfig(runDir, {
        meta: sqliteMetaConfig(metaFile),
        old: s3BackendConfig(oldEndpoint, src, credentials),
        new: s3BackendConfig(newEndpoint, bucket, credentials),
      });
      a.reset();
      b.reset();
      const out = await backfillCli(config, ['--concurrency', String(concurrency), '--run', name]);
      if (out.summary.copied !== count) throw new Error(`${name}: copied ${out.summary.copied} of ${count}`);
      return { seconds: out.result.seconds, received: a.bytesOut() + b.bytesOut(), requests: a.counts() };
    };
    log('s3-to-s3: server-side copy (one endpoint)');
    const copy = await run('copy', a.endpoint, a.endpoint, viaCopy);
    log('s3-to-s3: streaming (two endpoints)');
    const stream = await run('stream', a.endpoint, b.endpoint, viaStream);
    const copyRate = count / copy.seconds;
    const streamRate = count / stream.seconds;
    const chosen = copy.received < (count * size) / 10;
    if (!chosen) {
      // The probe found PutObject conditional and CopyObject not: a server-side
      // copy would weaken no-overwrite, so copyFrom streamed (the target's own rule).
      return [
        {
          target: `4. S3→S3 one endpoint (${server}): streams, by design`,
          ours: `${fmt(copyRate)} blobs/s, ${fmt(copy.received / MiB, 1)} MiB received`,
          comparison: `streaming ${fmt(streamRate)} blobs/s`,
          ratio: ratioText(copyRate / streamRate),
          met: undefined,
          note: `${server} honours If-None-Match on PutObject but not on CopyObject: only the stream keeps no-overwrite atomic`,
        },
      ];
    }
    return [
      {
        target: `4. S3→S3 one endpoint (${server}, ${fmt(count)} × ${size / 1024} KiB): blobs/s`,
        ours: `${fmt(copyRate)} blobs/s`,
        comparison: `streaming ${fmt(streamRate)} blobs/s`,
        ratio: ratioText(copyRate / streamRate),
        met: copyRate >= 1.5 * streamRate,
        note: `target ≥ 1.5×; server-side copy chosen; requests ${JSON.stringify(copy.requests)}`,
      },
      {
        target: `4. S3→S3 one endpoint (${server}): bytes received by the client`,
        ours: `${fmt(copy.received / MiB, 2)} MiB`,
        comparison: `streaming ${fmt(stream.received / MiB, 1)} MiB`,
        ratio: ratioText(copy.received / Math.max(1, stream.received)),
        met: copy.received < (count * size) / 100,
        note: 'target ≈ 0 (response bodies: listings and XML only)',
      },
    ];
  } finally {
    for (const db of cleanup) await db.close();
    // Emptied and deleted: RGW here keeps objects in RAM.
    await deleteBuckets(endpoint, [src, viaCopy, viaStream], credentials).catch(() => {});
    await a.close();
    await b.close();
    await s3?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

if (isMain(import.meta.url)) await standalone(benchS3ToS3);
