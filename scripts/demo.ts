/**
 * `npm run demo`: a whole migration on the embedded default, with nothing
 * else installed. It seeds blobs of mixed sizes and types into a filesystem
 * "old" backend with SQLite metadata, removes the bytes of a few (so some are
 * really missing), starts an S3-compatible server (s3rver) on 127.0.0.1 as
 * the "new" backend, and runs the real CLI through a whole migration:
 * backfill, check-blob-logs, verify (NOT SAFE, then SAFE once the lost blobs
 * are written off), the flip with the app writing to new, a rollback
 * rehearsal that brings those writes back to old, and cleanup-old (refused
 * until a fresh verify, then deleting every old copy it proves identical).
 * Everything lives in ./.demo (recreated on each run).
 *
 * Needs Node's legacy OpenSSL provider for s3rver's listing tokens: the npm
 * script passes --openssl-legacy-provider.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { BlobStore } from '../lib/app/store.js';
import { FilesystemBlobDB } from '../lib/backends/fs/index.js';
import { S3BlobDB } from '../lib/backends/s3/index.js';
import { MetaDB } from '../lib/meta/index.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..');
const demoDir = resolve(process.cwd(), '.demo');
const BLOBS = Number(process.env.DEMO_BLOBS ?? 3000);
const LOST = 7;
const TYPES = ['attachment', 'image', 'form_xml'] as const;

function say(text: string): void {
  process.stdout.write(`\n== ${text}\n`);
}

/** Sizes: mostly small, some medium, a few multi-megabyte blobs. */
function sizeFor(i: number): number {
  if (i % 500 === 0) return 3 * 1024 * 1024 + (i % 7) * 1024;
  if (i % 50 === 0) return 200 * 1024 + i;
  return 512 + ((i * 7919) % (32 * 1024));
}

async function startS3rver(directory: string): Promise<{ endpoint: string; stop(): Promise<void> }> {
  const require = createRequire(import.meta.url);
  const S3rver = require('s3rver') as new (
    o: Record<string, unknown>,
  ) => {
    run(): Promise<AddressInfo>;
    close(): Promise<void>;
  };
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory });
  const address = await server.run();
  return { endpoint: `http://127.0.0.1:${address.port}`, stop: () => server.close() };
}

/** Runs the real CLI as a child process, its output shown as it comes; resolves with the exit code. */
function blobshift(args: string[]): Promise<number> {
  process.stdout.write(`\n$ blobshift ${args.join(' ')}\n`);
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(repo, 'scripts', 'cli.ts'), ...args], {
      cwd: process.cwd(),
      stdio: ['ignore', 'inherit', 'inherit'],
      env: { ...process.env, AWS_EC2_METADATA_DISABLED: 'true' },
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => resolvePromise(code ?? (signal ? 128 : 1)));
  });
}

async function main(): Promise<void> {
  const started = Date.now();
  await rm(demoDir, { recursive: true, force: true });
  await mkdir(demoDir, { recursive: true });
  const rel = (p: string) => relative(process.cwd(), p) || '.';

  say(`seeding ${BLOBS} blobs (3 types, 0.5 KiB to 3 MiB) into a filesystem backend with SQLite metadata`);
  const meta = await MetaDB.open({
    client: 'better-sqlite3',
    connection: { filename: join(demoDir, 'blobs.sqlite') },
  });
  const oldDb = new FilesystemBlobDB({ root: join(demoDir, 'old-blobs') });
  const store = new BlobStore({ db: oldDb, meta });
  const keys: string[] = [];
  let bytes = 0;
  for (let i = 0; i < BLOBS; i++) {
    const size = sizeFor(i);
    const type = TYPES[i % TYPES.length] ?? 'attachment';
    const row = await store.put(randomBytes(size), {
      parentId: `case-${i % 97}`,
      type,
      name: `${type}-${i}.bin`,
      contentType:
        type === 'image' ? 'image/png' : type === 'form_xml' ? 'application/xml' : 'application/pdf',
    });
    keys.push(row.key);
    bytes += size;
  }
  // Lose the bytes of a few blobs (their rows stay): the data loss the tools must report.
  let step = Math.max(1, Math.floor(BLOBS / LOST));
  if (step % TYPES.length === 0) step++; // spread the losses over the types
  const lost = keys.filter((_, i) => i % step === 1).slice(0, LOST);
  for (const key of lost) await oldDb.delete(key);
  await meta.close();
  await oldDb.close();
  process.stdout.write(
    `seeded ${BLOBS} blobs, ${(bytes / 1048576).toFixed(1)} MiB; removed the bytes of ${lost.length}\n`,
  );

  say('starting an S3-compatible server (s3rver) on 127.0.0.1 as the new backend');
  const s3 = await startS3rver(join(demoDir, 's3rver'));
  const client = new S3Client({
    endpoint: s3.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  });
  await client.send(new CreateBucketCommand({ Bucket: 'blobs' }));
  client.destroy();
  const configFile = join(demoDir, 'blobshift.config.json');
  await writeFile(
    configFile,
    `${JSON.stringify(
      {
        meta: { client: 'better-sqlite3', connection: { filename: './blobs.sqlite' }, table: 'blob_meta' },
        old: { type: 'fs', root: './old-blobs' },
        new: {
          type: 's3',
          bucket: 'blobs',
          endpoint: s3.endpoint,
          region: 'us-east-1',
          forcePathStyle: true,
          credentials: { accessKeyId: '$DEMO_S3_KEY', secretAccessKey: '$DEMO_S3_SECRET' },
          requestChecksumCalculation: 'WHEN_REQUIRED',
          responseChecksumValidation: 'WHEN_REQUIRED',
        },
      },
      null,
      2,
    )}\n`,
  );
  process.env.DEMO_S3_KEY = 'S3RVER';
  process.env.DEMO_S3_SECRET = 'S3RVER';
  process.stdout.write(`${s3.endpoint}, bucket "blobs"; config in ${rel(configFile)}\n`);

  const logDir = join(demoDir, 'logs');
  const common = ['-c', rel(configFile), '--log-dir', rel(logDir)];
  try {
    say('step 2: backfill (exit 1 expected: some blobs are missing)');
    const backfillCode = await blobshift(['backfill', ...common, '--no-progress', '--concurrency', '32']);
    const logs = (await readdir(logDir))
      .filter((f) => f.startsWith('backfill-'))
      .map((f) => rel(join(logDir, f)));

    // Meanwhile the app deleted two of the lost blobs (their rows are gone):
    // check-blob-logs reports those as "Not referenced", not as data loss.
    const appMeta = await MetaDB.open({
      client: 'better-sqlite3',
      connection: { filename: join(demoDir, 'blobs.sqlite') },
    });
    for (const key of lost.slice(0, 2)) await appMeta.delete(key);
    await appMeta.close();

    say('step 3: check-blob-logs on what backfill could not find (2 of them deleted by the app meanwhile)');
    const checkCode = await blobshift(['check-blob-logs', ...common, ...logs]);

    say('step 4: verify (NOT SAFE expected: the lost blobs are gone for good)');
    const verifyCode = await blobshift(['verify', ...common]);

    // The operator writes the really lost blobs off (no backup has them): the app deletes their rows.
    const appMeta2 = await MetaDB.open({
      client: 'better-sqlite3',
      connection: { filename: join(demoDir, 'blobs.sqlite') },
    });
    for (const key of lost.slice(2)) await appMeta2.delete(key);
    say(`step 5: the ${lost.length - 2} lost blobs written off (rows deleted); verify --checksum again`);
    const verify2Code = await blobshift(['verify', ...common, '--checksum']);

    // The flip: the app now uses the new backend alone. It overwrites one blob in
    // place with the same length and adds one.
    const newDb = new S3BlobDB({
      bucket: 'blobs',
      clientConfig: {
        endpoint: s3.endpoint,
        region: 'us-east-1',
        forcePathStyle: true,
        credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      },
    });
    const app = new BlobStore({ db: newDb, meta: appMeta2 });
    const rewritten = keys.find((k) => !lost.includes(k)) as string;
    const old = await appMeta2.get(rewritten);
    await app.put(randomBytes(old?.contentLength ?? 1000), {
      key: rewritten,
      parentId: 'case-1',
      type: old?.type ?? 'attachment',
    });
    await app.put(randomBytes(4096), { parentId: 'case-1', type: 'attachment', name: 'after-the-flip.bin' });
    await newDb.close();
    await appMeta2.close();
    say('step 6: flipped; the app rewrote one blob in new (same length) and added one. Rollback rehearsal:');
    const rollbackCode = await blobshift(['rollback', ...common, '--no-progress']);
    say('step 7: verify --reverse --checksum: is old complete again?');
    const reverseCode = await blobshift(['verify', ...common, '--reverse', '--checksum']);

    say('step 8: we stay on new after all. cleanup-old (refused: the rollback ran after the last verify)');
    const refusedCode = await blobshift(['cleanup-old', ...common, '--yes']);
    say('step 9: verify, then cleanup-old --yes (every old copy proven identical before it goes)');
    const verify3Code = await blobshift(['verify', ...common]);
    const cleanupCode = await blobshift(['cleanup-old', ...common, '--yes']);

    say('what happened');
    const codes = {
      backfill: backfillCode,
      'check-blob-logs': checkCode,
      verify: verifyCode,
      'verify --checksum': verify2Code,
      rollback: rollbackCode,
      'verify --reverse': reverseCode,
      'cleanup-old (refused)': refusedCode,
      'verify (again)': verify3Code,
      'cleanup-old': cleanupCode,
    };
    const expected = [1, 1, 1, 0, 0, 0, 2, 0, 0];
    process.stdout.write(
      [
        `exit codes: ${Object.entries(codes)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}`,
        `${BLOBS - lost.length} blobs were copied to S3; the ${lost.length} whose bytes were removed were logged`,
        `"not found" by backfill; check-blob-logs told the 2 the app deleted ("Not referenced") from the`,
        `${lost.length - 2} really lost ("Not found"), which verify reported too: data loss, never exit 0.`,
        "Once written off, verify said SAFE TO FLIP; the rollback brought the app's two writes after the flip",
        'back to old (one of them replacing a stale copy of the same length); cleanup-old refused to run on a',
        'verify older than that rollback, then deleted only old copies whose new copy hashed to the row.',
        `everything is in ${rel(demoDir)} (the config, logs, metadata and both backends).`,
        `demo took ${((Date.now() - started) / 1000).toFixed(1)} s`,
      ].join('\n') + '\n',
    );
    const got = Object.values(codes);
    if (got.some((c, i) => c !== expected[i])) {
      process.stderr.write(`demo: unexpected exit codes (expected ${expected.join(', ')})\n`);
      process.exitCode = 1;
    }
  } finally {
    await s3.stop();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
