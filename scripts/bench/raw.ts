/**
 * The ceilings the benchmarks compare with: the plain SDK, no blobshift in
 * the path, with the same client settings (createS3Client: keep-alive agent,
 * socket pool, timeouts, retries). Run as a child process; prints one JSON
 * line.
 *
 *   raw.ts put-dir ENDPOINT BUCKET DIR CONCURRENCY   readFile + PutObject per file
 *   raw.ts head-put-dir ENDPOINT BUCKET DIR CONCURRENCY   HEAD, then readFile + PutObject per file
 *       (a no-overwrite copy where the server has no conditional writes, without blobshift)
 *   raw.ts upload ENDPOINT BUCKET FILE KEY           lib-storage Upload of a file stream
 *   raw.ts get ENDPOINT BUCKET KEY FILE              GetObject piped to a file
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { createS3Client, DEFAULT_PART_SIZE, DEFAULT_QUEUE_SIZE } from '../../lib/backends/s3/index.js';
import { s3rverClientConfig } from './common.js';

const [mode, endpoint = '', bucket = '', a = '', b = ''] = process.argv.slice(2);
const credentials =
  process.env.BENCH_S3_KEY && process.env.BENCH_S3_SECRET
    ? { accessKeyId: process.env.BENCH_S3_KEY, secretAccessKey: process.env.BENCH_S3_SECRET }
    : undefined;
const config = { ...s3rverClientConfig(endpoint), ...(credentials ? { credentials } : {}) };

async function putDir(dir: string, concurrency: number, headFirst: boolean): Promise<void> {
  const client = createS3Client({ ...config, maxSockets: Math.max(concurrency, 64) });
  const names = (await readdir(dir)).sort();
  const started = performance.now();
  const cpuBefore = process.cpuUsage();
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      const name = names[i];
      if (name === undefined) return;
      if (headFirst) {
        const there = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: name })).then(
          () => true,
          (err: { $metadata?: { httpStatusCode?: number } }) => {
            if (err.$metadata?.httpStatusCode === 404) return false;
            throw err;
          },
        );
        if (there) continue;
      }
      const body = await readFile(join(dir, name));
      await client.send(
        new PutObjectCommand({ Bucket: bucket, Key: name, Body: body, ContentLength: body.length }),
      );
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpuBefore);
  // The CPU of the copy loop alone (user + sys seconds), without the start-up.
  const cpu = (used.user + used.system) / 1e6;
  client.destroy();
  process.stdout.write(
    `${JSON.stringify({ count: names.length, seconds, rate: names.length / seconds, cpu })}\n`,
  );
}

async function upload(file: string, key: string): Promise<void> {
  const client = createS3Client(config);
  const { size } = await stat(file);
  const started = performance.now();
  await new Upload({
    client,
    params: { Bucket: bucket, Key: key, Body: createReadStream(file) },
    partSize: DEFAULT_PART_SIZE,
    queueSize: DEFAULT_QUEUE_SIZE,
  }).done();
  const seconds = (performance.now() - started) / 1000;
  client.destroy();
  process.stdout.write(`${JSON.stringify({ bytes: size, seconds })}\n`);
}

async function get(key: string, file: string): Promise<void> {
  const client = createS3Client(config);
  const started = performance.now();
  const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  await pipeline(out.Body as Readable, createWriteStream(file));
  const seconds = (performance.now() - started) / 1000;
  const { size } = await stat(file);
  client.destroy();
  process.stdout.write(`${JSON.stringify({ bytes: size, seconds })}\n`);
}

if (mode === 'put-dir') await putDir(a, Number(b), false);
else if (mode === 'head-put-dir') await putDir(a, Number(b), true);
else if (mode === 'upload') await upload(a, b);
else if (mode === 'get') await get(a, b);
else throw new Error(`unknown mode ${String(mode)}`);
