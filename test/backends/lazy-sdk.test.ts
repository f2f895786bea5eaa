/**
 * Importing blobshift does not load the AWS SDK: an application that uses the
 * filesystem backend never pays for it. A fresh `node` process imports the
 * package root with a module resolve hook that records every module the ESM
 * loader resolves, and lists the CommonJS module cache (where the SDK's
 * packages, CommonJS builds, land however they are loaded). Nothing under
 * `@aws-sdk/` may show before an S3BlobDB makes a request; after one, the SDK
 * is there, and the client the backend built is the `import`ed SDK's own
 * `S3Client`.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { expect } from 'chai';

const run = promisify(execFile);
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The resolve hook: appends every URL the ESM loader resolves to the file named in its data. */
const HOOK = `
import { appendFileSync } from 'node:fs';
let log;
export function initialize(data) { log = data.log; }
export async function resolve(specifier, context, next) {
  const result = await next(specifier, context);
  appendFileSync(log, result.url + '\\n');
  return result;
}
`;

/** The child: imports the package root, then builds an S3BlobDB and makes one (failing) request. */
const SCRIPT = `
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire, register } from 'node:module';
const [log, libUrl, sdkUrl] = process.argv.slice(2);
writeFileSync(log, '');
register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(HOOK)}), { data: { log } });
const require = createRequire(import.meta.url);
const sdkModules = () => ({
  resolved: readFileSync(log, 'utf8').split('\\n').filter((u) => u.includes('/@aws-sdk/')),
  cached: Object.keys(require.cache).filter((p) => p.includes('/@aws-sdk/')),
});
const lib = await import(libUrl);
const afterImport = sdkModules();
const db = new lib.S3BlobDB({
  bucket: 'lazy',
  clientConfig: {
    endpoint: 'http://127.0.0.1:1',
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: 'AKIDLAZY', secretAccessKey: 'lazy-secret' },
    maxAttempts: 1,
  },
  connectionTimeoutMs: 2000,
});
const afterConstructor = sdkModules();
const failure = await db.exists('k').then(() => 'none', (err) => err.name);
const afterRequest = sdkModules();
const { S3Client } = await import(sdkUrl);
const sameClientClass = db.client instanceof S3Client;
await db.close();
process.stdout.write(JSON.stringify({ afterImport, afterConstructor, failure, afterRequest, sameClientClass }));
`;

describe('the AWS SDK loads lazily', function () {
  this.timeout(60_000);
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'blobshift-lazy-sdk-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('importing the package root loads no module under @aws-sdk/; the first S3 request loads it', async () => {
    const script = join(dir, 'child.mjs');
    await writeFile(script, SCRIPT);
    const libUrl = pathToFileURL(join(ROOT, 'lib/index.ts')).href;
    // What `import '@aws-sdk/client-s3'` resolves to from the library (the child script lives elsewhere).
    const sdkUrl = pathToFileURL(createRequire(libUrl).resolve('@aws-sdk/client-s3')).href;
    const { stdout } = await run(
      process.execPath,
      ['--import', 'tsx', script, join(dir, 'resolved.log'), libUrl, sdkUrl],
      { cwd: ROOT, timeout: 50_000 },
    );
    const out = JSON.parse(stdout) as {
      afterImport: { resolved: string[]; cached: string[] };
      afterConstructor: { resolved: string[]; cached: string[] };
      failure: string;
      afterRequest: { resolved: string[]; cached: string[] };
      sameClientClass: boolean;
    };
    expect(out.afterImport, 'after importing lib/index.ts').to.deep.equal({ resolved: [], cached: [] });
    expect(out.afterConstructor, 'after new S3BlobDB(…)').to.deep.equal({ resolved: [], cached: [] });
    expect(out.failure, 'the request to a closed port fails').to.equal('BackendError');
    expect(out.afterRequest.resolved.some((u) => u.includes('/@aws-sdk/client-s3/'))).to.equal(true);
    expect(out.afterRequest.cached.some((p) => p.includes('/@aws-sdk/client-s3/'))).to.equal(true);
    expect(out.sameClientClass, "the client is the imported SDK's S3Client").to.equal(true);
  });
});
