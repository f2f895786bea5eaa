/**
 * A fake S3 on 127.0.0.1 for the request-path tests: answers and refusals no
 * real server gives on demand (a clock two hours ahead, a 301 to another
 * region, a refused signature), with what each request carried.
 */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { S3ClientConfigLike } from '../../lib/backends/s3/index.js';

/** The title both request-path test files register their tests under. */
export const LEAN_PATH =
  'the lean request path (PutObject, HeadObject, GetObject, DeleteObject without the SDK middleware)';

/** One request as a fake S3 saw it: method, path, status answered, and its signing scope. */
export interface FakeSeen {
  method: string;
  path: string;
  status: number;
  accessKeyId: string;
  region: string;
  amzDate: string;
  token: string | undefined;
}

/**
 * A fake S3 on 127.0.0.1 for what no real server does on demand: it answers
 * every PUT (ETag) and HEAD (8 bytes) unless `refuse` says otherwise.
 */
export async function startFakeS3(
  clockAheadMs: number,
  refuse: (
    seen: Omit<FakeSeen, 'status'>,
  ) => { status: number; headers?: Record<string, string>; body?: string } | undefined,
): Promise<{ endpoint: string; seen: FakeSeen[]; stop(): Promise<void> }> {
  const seen: FakeSeen[] = [];
  const fake = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const auth = /Credential=([^/]+)\/\d{8}\/([^/]+)\//.exec(req.headers.authorization ?? '');
      const request = {
        method: req.method ?? '',
        path: req.url ?? '',
        accessKeyId: auth?.[1] ?? '',
        region: auth?.[2] ?? '',
        amzDate: String(req.headers['x-amz-date'] ?? ''),
        token: req.headers['x-amz-security-token'] as string | undefined,
      };
      const refusal = refuse(request);
      const status = refusal?.status ?? 200;
      seen.push({ ...request, status });
      const body = refusal?.body ?? '';
      res.writeHead(status, {
        date: new Date(Date.now() + clockAheadMs).toUTCString(),
        'content-length': String(req.method === 'HEAD' && !refusal ? 8 : Buffer.byteLength(body)),
        etag: '"fake"',
        ...(refusal ? { 'content-type': 'application/xml' } : {}),
        ...refusal?.headers,
      });
      res.end(req.method === 'HEAD' ? undefined : body);
    });
  });
  fake.listen(0, '127.0.0.1');
  await once(fake, 'listening');
  return {
    endpoint: `http://127.0.0.1:${(fake.address() as AddressInfo).port}`,
    seen,
    async stop() {
      fake.closeAllConnections();
      await new Promise((r) => fake.close(r));
    },
  };
}

/** Client settings for a fake S3 at `endpoint` (its credentials are never shown in an error). */
export const fakeConfig = (endpoint: string): S3ClientConfigLike => ({
  endpoint,
  region: 'us-east-1',
  forcePathStyle: true,
  credentials: { accessKeyId: 'AKIDLEAN', secretAccessKey: 'lean-secret-never-shown' },
  requestChecksumCalculation: 'WHEN_REQUIRED',
  responseChecksumValidation: 'WHEN_REQUIRED',
});
