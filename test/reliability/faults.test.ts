/**
 * A flaky S3: the fault proxy in front of s3rver (and RGW when configured)
 * answers a share of requests with 503 SlowDown, 500, a dropped connection,
 * a stalled answer past the client's request timeout, or a truncated body.
 * Through the real CLI: nothing is lost, retries show in the summary, a key
 * that always fails is logged "too many retries" (exit 1), and a truncated GET
 * never lands as a short blob.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { expect } from 'chai';
import { createS3Client, type S3ClientConfigLike } from '../../lib/backends/s3/index.js';
import { MetaDB } from '../../lib/meta/index.js';
import {
  backfillArgs,
  blobKey,
  bucketShas,
  type CliResult,
  fileSha,
  listBucket,
  readJsonLines,
  runCli,
  type SeededBlob,
  SQLITE_META,
  sha256,
  writeConfig,
} from '../support/cli.js';
import { announce, RGW_CREDENTIALS, RGW_ENDPOINT } from '../support/env.js';
import { type FaultProxy, startFaultProxy } from '../support/fault-proxy.js';
import {
  createBucket,
  deleteBucket,
  S3RVER_CREDENTIALS,
  type S3rverHandle,
  startS3rver,
} from '../support/s3rver.js';
import { seedSqliteOldFs } from '../support/seed.js';

interface Summary {
  status: string;
  exitCode: number;
  total: number;
  copied: number;
  present: number;
  failed: number;
  notFound: number;
  retries: number;
  logs: string[];
}

const N = 200;

interface Server {
  name: string;
  endpoint(): string;
  admin(): S3Client;
  /** The `new`/`old` section's client settings (endpoint replaced by the proxy's). */
  settings: Record<string, unknown>;
  before(): Promise<void>;
  after(): Promise<void>;
}

function servers(): Server[] {
  let s3: S3rverHandle | undefined;
  let admin: S3Client | undefined;
  const list: Server[] = [
    {
      name: 's3rver',
      endpoint: () => s3?.endpoint ?? '',
      admin: () => admin as S3Client,
      settings: {
        credentials: { ...S3RVER_CREDENTIALS },
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      },
      async before() {
        s3 = await startS3rver();
        admin = s3.client();
      },
      async after() {
        admin?.destroy();
        await s3?.stop();
      },
    },
  ];
  if (RGW_ENDPOINT) {
    const endpoint = RGW_ENDPOINT;
    let rgw: S3Client | undefined;
    const config: S3ClientConfigLike = {
      endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { ...RGW_CREDENTIALS },
    };
    list.push({
      name: 'RGW',
      endpoint: () => endpoint,
      admin: () => rgw as S3Client,
      settings: { credentials: { ...RGW_CREDENTIALS } },
      async before() {
        rgw = createS3Client(config);
      },
      async after() {
        rgw?.destroy();
      },
    });
  } else {
    announce('BLOBSHIFT_TEST_RGW', 'RGW (reliability)');
  }
  return list;
}

function s3Section(server: Server, proxy: FaultProxy, bucket: string): Record<string, unknown> {
  return {
    type: 's3',
    bucket,
    endpoint: proxy.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    requestTimeoutMs: 1000,
    connectionTimeoutMs: 1000,
    ...server.settings,
  };
}

async function backfill(dir: string, config: unknown): Promise<{ r: CliResult; summary: Summary }> {
  const file = await writeConfig(join(dir, 'blobshift.config.json'), config);
  const r = await runCli(
    backfillArgs(file, join(dir, 'logs'), '--concurrency', '8', '--no-progress', '--json'),
    { cwd: dir, timeoutMs: 120_000 },
  );
  let summary: Summary;
  try {
    summary = JSON.parse(r.stdout) as Summary;
  } catch {
    throw new Error(`no JSON summary (exit ${r.code}): ${r.stderr}`);
  }
  return { r, summary };
}

for (const server of servers()) {
  describe(`reliability: a flaky S3 (${server.name} behind the fault proxy)`, function () {
    this.timeout(120_000);
    let dir: string;
    let proxy: FaultProxy;
    let bucket: string;
    before(() => server.before());
    after(() => server.after());
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'blobshift-faults-'));
      proxy = await startFaultProxy({ target: server.endpoint(), stallMs: 2500, seed: 7 });
      bucket = await createBucket(server.admin());
    });
    afterEach(async () => {
      await proxy.stop();
      await deleteBucket(server.admin(), bucket).catch(() => {});
      await rm(dir, { recursive: true, force: true });
    });

    it(`10% faults of every kind (503 SlowDown, 500, dropped, stalled, truncated): ${N} blobs, nothing lost, retries counted`, async () => {
      // Every fourth blob is over 256 KiB: S3BlobDB streams those, so a put
      // whose body was spent cannot be retried by the SDK and is retried whole
      // by the engine (small bodies are buffered and the SDK retries them).
      const blobs = await seedSqliteOldFs(dir, N, {
        sizeOf: (i) => (i % 4 === 0 ? 300 * 1024 + i : 200 + ((i * 7919) % 3900)),
      });
      proxy.setRules([{ rate: 0.1 }]);
      const { r, summary } = await backfill(dir, {
        meta: SQLITE_META,
        old: { type: 'fs', root: './old' },
        new: s3Section(server, proxy, bucket),
      });
      proxy.setRules([]);
      expect(r.code, r.stderr).to.equal(0);
      // A put that landed but whose answer was lost is "present" on its retry.
      expect(summary.copied + summary.present).to.equal(N);
      expect(proxy.faults(), 'faults injected').to.be.greaterThan(N / 20);
      for (const kind of ['slowdown', 'error500', 'drop', 'stall', 'truncate'] as const) {
        expect(proxy.faults(kind), kind).to.be.greaterThan(0);
      }
      // The SDK retries single requests; a put whose streamed body was spent is retried whole.
      expect(summary.retries, 'whole-blob retries in the summary').to.be.greaterThan(0);
      const listed = await listBucket(server.admin(), bucket);
      const shas = await bucketShas(server.admin(), bucket, [...listed.keys()]);
      const lost = blobs.filter((b) => shas.get(b.key) !== b.sha256).map((b) => b.key);
      expect(lost, 'blobs lost or altered').to.deep.equal([]);
      expect([...listed.keys()].filter((k) => !blobs.some((b) => b.key === k))).to.deep.equal([]);
    });

    it('100% faults on one key: that key is logged "too many retries", the rest are copied, exit 1', async () => {
      const blobs = await seedSqliteOldFs(dir, 40);
      const victim = blobs[17]?.key as string;
      proxy.setRules([
        {
          rate: 1,
          kinds: ['slowdown', 'error500', 'drop'],
          match: ({ path }) => decodeURIComponent(path.split('?')[0] ?? '') === `/${bucket}/${victim}`,
        },
      ]);
      const { r, summary } = await backfill(dir, {
        meta: SQLITE_META,
        old: { type: 'fs', root: './old' },
        new: s3Section(server, proxy, bucket),
      });
      expect(r.code, r.stderr).to.equal(1);
      expect(summary.status).to.equal('completed');
      expect(summary.failed).to.equal(1);
      expect(summary.copied).to.equal(39);
      const records = await readJsonLines(summary.logs);
      expect(records.map((x) => [x.key, x.error])).to.deep.equal([[victim, 'too many retries']]);
      const listed = await listBucket(server.admin(), bucket);
      expect(listed.has(victim)).to.equal(false);
      expect(listed.size).to.equal(39);
    });

    it('truncated GETs (S3 → files): the first GET of every blob is cut short, none lands short', async () => {
      const admin = server.admin();
      const meta = await MetaDB.open({
        client: 'better-sqlite3',
        connection: { filename: join(dir, 'meta.sqlite') },
      });
      const blobs: SeededBlob[] = [];
      try {
        const rows = [];
        for (let i = 0; i < 60; i++) {
          const key = blobKey(i);
          const data = Buffer.alloc(1000 + i * 997, i);
          await admin.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: data }));
          blobs.push({ key, size: data.length, sha256: sha256(data) });
          rows.push({ key, parentId: 'p', type: 'attachment', contentLength: data.length });
        }
        await meta.addMany(rows);
      } finally {
        await meta.close();
      }
      const cut = new Set<string>();
      const keys = new Set(blobs.map((b) => b.key));
      proxy.setRules([
        {
          rate: 1,
          kinds: ['truncate'],
          match: ({ method, path }) => {
            const base = path.split('?')[0] ?? '';
            const key = decodeURIComponent(base.slice(bucket.length + 2));
            if (method !== 'GET' || !base.startsWith(`/${bucket}/`) || !keys.has(key) || cut.has(base)) {
              return false;
            }
            cut.add(base);
            return true;
          },
        },
      ]);
      const { r, summary } = await backfill(dir, {
        meta: SQLITE_META,
        old: s3Section(server, proxy, bucket),
        new: { type: 'fs', root: './new' },
      });
      expect(proxy.faults('truncate')).to.equal(60);
      expect(r.code, r.stderr).to.equal(0);
      expect(summary.copied).to.equal(60);
      expect(summary.retries).to.be.at.least(60);
      for (const b of blobs) {
        expect(await fileSha(join(dir, 'new', b.key)), b.key).to.equal(b.sha256);
      }
    });
  });
}
