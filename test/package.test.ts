/**
 * The published package as a user gets it: built, packed with `npm pack`,
 * and unpacked into fresh projects as `node_modules/blobshift` (what `npm
 * install <tgz>` does for the package itself; its dependencies are the
 * checkout's own, linked in, so no registry is asked). Then: an ES module
 * imports it, a CommonJS module requires it (Node ≥ 20.19 loads ES modules
 * with require), and CommonJS TypeScript projects compile against its types
 * and run; the same for its subpaths (`blobshift/fs`, `/memory`, `/s3`,
 * `/queue`), of which `/fs` and `/memory` load no AWS SDK. Also: the tarball holds the LICENSE package.json names, importing
 * the package loads no optional heavy module, and the CLI starts.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { REPO } from './support/cli.js';

const run = promisify(execFile);
const TSC = join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');

interface Packed {
  filename: string;
  files: { path: string }[];
}

/** Runs a node script in `cwd`; resolves its stdout, rejects with its stderr. */
async function node(cwd: string, args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, args, { cwd, env: { PATH: process.env.PATH ?? '' } });
  return stdout;
}

describe('the published package (npm pack, unpacked into fresh projects)', function () {
  this.timeout(120_000);
  let dir: string;
  let packed: Packed;
  let modules: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'blobshift-pack-'));
    // `npm pack` runs this build itself (prepack); running it here first keeps
    // the build's output out of npm's --json answer.
    await run(process.execPath, [TSC, '-p', 'tsconfig.build.json'], { cwd: REPO });
    const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], {
      cwd: REPO,
    });
    packed = (JSON.parse(stdout) as Packed[])[0] as Packed;
    // One node_modules for every project below: the package unpacked, its dependencies linked.
    modules = join(dir, 'node_modules');
    await mkdir(modules);
    await run('tar', ['-xzf', join(dir, packed.filename), '-C', modules]);
    await rename(join(modules, 'package'), join(modules, 'blobshift'));
    for (const entry of await readdir(join(REPO, 'node_modules'))) {
      if (entry.startsWith('.') || entry === 'blobshift') continue;
      await symlink(join(REPO, 'node_modules', entry), join(modules, entry), 'dir');
    }
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A fresh project directory beside the shared node_modules. */
  async function project(
    name: string,
    pkg: Record<string, unknown>,
    files: Record<string, string>,
  ): Promise<string> {
    const root = join(dir, name);
    await mkdir(root, { recursive: true });
    await writeFile(join(root, 'package.json'), JSON.stringify({ name, private: true, ...pkg }));
    for (const [file, text] of Object.entries(files)) {
      await mkdir(join(root, file, '..'), { recursive: true });
      await writeFile(join(root, file), text);
    }
    return root;
  }

  const USE = `
    const db = new MemoryBlobDB();
    await db.put('a/b', 'hello');
    const text = (await readAll(await db.get('a/b'))).toString();
    const err = await db.get('missing').catch((e) => e);
    const result = { text, notFound: err instanceof BlobNotFoundError, code: err.code, store: typeof BlobStore };
  `;

  it('ships the built library, the CLI, README, CHANGELOG and the MIT LICENSE package.json names', async () => {
    const paths = packed.files.map((f) => f.path);
    expect(paths).to.include.members([
      'LICENSE',
      'README.md',
      'CHANGELOG.md',
      'package.json',
      'dist/lib/index.js',
    ]);
    expect(paths).to.include('dist/lib/index.d.ts');
    expect(paths).to.include('dist/scripts/cli.js');
    expect(paths.filter((p) => p.startsWith('test/') || p.startsWith('dist/test/'))).to.deep.equal([]);
    expect(paths.filter((p) => p.endsWith('.ts') && !p.endsWith('.d.ts'))).to.deep.equal([]);
    const installed = join(modules, 'blobshift');
    const pkg = JSON.parse(await readFile(join(installed, 'package.json'), 'utf8')) as { license?: string };
    expect(pkg.license).to.equal('MIT');
    const license = await readFile(join(installed, 'LICENSE'), 'utf8');
    expect(license.split('\n')[0]).to.equal('MIT License');
    expect(license).to.include('Permission is hereby granted, free of charge');
    const version = await node(installed, ['dist/scripts/cli.js', '--version']);
    expect(version.trim()).to.match(/^(blobshift )?0\.1\.0$/);
  });

  it('an ES module imports it', async () => {
    const root = await project(
      'esm',
      { type: 'module' },
      {
        'index.js': `import { BlobNotFoundError, BlobStore, MemoryBlobDB, readAll } from 'blobshift';
          ${USE}
          console.log(JSON.stringify(result));`,
      },
    );
    expect(JSON.parse(await node(root, ['index.js']))).to.deep.equal({
      text: 'hello',
      notFound: true,
      code: 'E_BLOB_NOT_FOUND',
      store: 'function',
    });
  });

  it('a CommonJS module requires it, and gets the same classes as import()', async () => {
    const root = await project(
      'cjs',
      { type: 'commonjs' },
      {
        'index.js': `const { BlobNotFoundError, BlobStore, MemoryBlobDB, readAll } = require('blobshift');
          (async () => {
            ${USE}
            const esm = await import('blobshift');
            result.sameClasses = esm.BlobStore === BlobStore && esm.BlobNotFoundError === BlobNotFoundError;
            console.log(JSON.stringify(result));
          })();`,
      },
    );
    expect(JSON.parse(await node(root, ['index.js']))).to.deep.equal({
      text: 'hello',
      notFound: true,
      code: 'E_BLOB_NOT_FOUND',
      store: 'function',
      sameClasses: true,
    });
  });

  /** Uses the subpaths' names (imported by the caller) and compares them with the root's (`root`). */
  const SUBPATHS = `
    const dir = await mkdtemp(join(tmpdir(), 'blobshift-subpath-'));
    const files = new FilesystemBlobDB({ root: dir });
    await files.put('a/b', 'on disk');
    const onDisk = (await root.readAll(await files.get('a/b'))).toString();
    await rm(dir, { recursive: true, force: true });
    const result = {
      onDisk,
      fs: FilesystemBlobDB === root.FilesystemBlobDB,
      memory: MemoryBlobDB === root.MemoryBlobDB,
      s3: S3BlobDB === root.S3BlobDB && isS3NotFoundError === root.isS3NotFoundError,
      createS3Client: typeof createS3Client,
      queue: [typeof queuedBackfill, typeof runWorker],
    };
  `;
  const SUBPATHS_EXPECTED = {
    onDisk: 'on disk',
    fs: true,
    memory: true,
    s3: true,
    createS3Client: 'function',
    queue: ['function', 'function'],
  };

  it('an ES module imports the subpaths blobshift/fs, /memory, /s3 and /queue', async () => {
    const root = await project(
      'esm-subpaths',
      { type: 'module' },
      {
        'index.js': `import { mkdtemp, rm } from 'node:fs/promises';
          import { tmpdir } from 'node:os';
          import { join } from 'node:path';
          import * as root from 'blobshift';
          import { FilesystemBlobDB } from 'blobshift/fs';
          import { MemoryBlobDB } from 'blobshift/memory';
          import { createS3Client, isS3NotFoundError, S3BlobDB } from 'blobshift/s3';
          import { queuedBackfill, runWorker } from 'blobshift/queue';
          ${SUBPATHS}
          console.log(JSON.stringify(result));`,
      },
    );
    expect(JSON.parse(await node(root, ['index.js']))).to.deep.equal(SUBPATHS_EXPECTED);
  });

  it('a CommonJS module requires the subpaths, and gets the same classes as import()', async () => {
    const root = await project(
      'cjs-subpaths',
      { type: 'commonjs' },
      {
        'index.js': `const { mkdtemp, rm } = require('node:fs/promises');
          const { tmpdir } = require('node:os');
          const { join } = require('node:path');
          const root = require('blobshift');
          const { FilesystemBlobDB } = require('blobshift/fs');
          const { MemoryBlobDB } = require('blobshift/memory');
          const { createS3Client, isS3NotFoundError, S3BlobDB } = require('blobshift/s3');
          const { queuedBackfill, runWorker } = require('blobshift/queue');
          (async () => {
            ${SUBPATHS}
            result.sameAsImport = (await import('blobshift/fs')).FilesystemBlobDB === FilesystemBlobDB
              && (await import('blobshift/s3')).S3BlobDB === S3BlobDB;
            console.log(JSON.stringify(result));
          })();`,
      },
    );
    expect(JSON.parse(await node(root, ['index.js']))).to.deep.equal({
      ...SUBPATHS_EXPECTED,
      sameAsImport: true,
    });
  });

  it("a TypeScript project (module nodenext) compiles against the subpaths' types", async () => {
    const root = await project(
      'ts-subpaths',
      { type: 'commonjs' },
      {
        'tsconfig.json': JSON.stringify({
          compilerOptions: {
            module: 'nodenext',
            moduleResolution: 'nodenext',
            skipLibCheck: true,
            strict: true,
            target: 'es2022',
            outDir: 'out',
            rootDir: 'src',
            types: [],
          },
        }),
        'src/index.ts': `import type { BlobDB } from 'blobshift';
          import { FilesystemBlobDB, type FilesystemBlobDBOptions } from 'blobshift/fs';
          import { MemoryBlobDB } from 'blobshift/memory';
          import { S3BlobDB, type S3BlobDBOptions } from 'blobshift/s3';
          import { type QueuedBackfillOptions, queuedBackfill } from 'blobshift/queue';
          const options: FilesystemBlobDBOptions = { root: 'blobs' };
          const s3: S3BlobDBOptions = { bucket: 'b' };
          const dbs: BlobDB[] = [new FilesystemBlobDB(options), new MemoryBlobDB()];
          // @ts-expect-error the options are the package's own types, not any
          const bad: QueuedBackfillOptions = { queueUrl: 1 };
          console.log(JSON.stringify({ dbs: dbs.length, s3: typeof S3BlobDB, bucket: s3.bucket,
            queued: typeof queuedBackfill, bad: typeof bad }));`,
      },
    );
    await run(process.execPath, [TSC, '-p', '.'], { cwd: root }).catch((err: { stdout?: string }) => {
      throw new Error(`tsc failed:\n${err.stdout ?? ''}`);
    });
    expect(JSON.parse(await node(root, ['out/index.js']))).to.deep.equal({
      dbs: 2,
      s3: 'function',
      bucket: 'b',
      queued: 'function',
      bad: 'object',
    });
  });

  it('importing blobshift/fs or blobshift/memory loads no AWS SDK, database driver or queue', async () => {
    const root = await project(
      'lazy-subpaths',
      { type: 'module' },
      {
        'index.js': `import { createRequire } from 'node:module';
          const require = createRequire(import.meta.url);
          const { FilesystemBlobDB } = await import('blobshift/fs');
          const { MemoryBlobDB } = await import('blobshift/memory');
          const paths = Object.keys(require.cache);
          const has = (name) => paths.some((p) => p.includes('/node_modules/' + name + '/'));
          console.log(JSON.stringify({ classes: typeof FilesystemBlobDB + ' ' + typeof MemoryBlobDB,
            sdk: has('@aws-sdk/client-s3'), smithy: has('@smithy/node-http-handler'), knex: has('knex'),
            bullmq: has('bullmq'), winston: has('winston') }));`,
      },
    );
    expect(JSON.parse(await node(root, ['index.js']))).to.deep.equal({
      classes: 'function function',
      sdk: false,
      smithy: false,
      knex: false,
      bullmq: false,
      winston: false,
    });
  });

  for (const [name, options] of [
    // The classic CommonJS setup: TypeScript reads "types", Node the "require" export.
    [
      'module commonjs, moduleResolution node10',
      { module: 'commonjs', moduleResolution: 'node10', skipLibCheck: true },
    ],
    // TypeScript's model of Node with require(esm) (TypeScript 5.8 and later).
    ['module nodenext', { module: 'nodenext', moduleResolution: 'nodenext', skipLibCheck: true }],
  ] as const) {
    it(`a CommonJS TypeScript project (${name}) compiles against its types and runs`, async () => {
      const root = await project(
        `ts-${options.module}`,
        { type: 'commonjs' },
        {
          'tsconfig.json': JSON.stringify({
            compilerOptions: {
              ...options,
              strict: true,
              target: 'es2022',
              outDir: 'out',
              rootDir: 'src',
              types: [],
            },
          }),
          'src/index.ts': `import { BlobNotFoundError, BlobStore, MemoryBlobDB, readAll } from 'blobshift';
            async function main(): Promise<void> {
              ${USE.replace('.catch((e) => e)', '.then(() => undefined, (e: unknown) => e) as BlobNotFoundError')}
              // The types are the package's own, not any: this line must not compile.
              // @ts-expect-error conditionalWrites is a boolean
              const n: number = db.capabilities.conditionalWrites;
              console.log(JSON.stringify({ ...result, n: typeof n }));
            }
            void main();`,
        },
      );
      await run(process.execPath, [TSC, '-p', '.'], { cwd: root }).catch((err: { stdout?: string }) => {
        throw new Error(`tsc failed:\n${err.stdout ?? ''}`);
      });
      const out = await readFile(join(root, 'out', 'index.js'), 'utf8');
      expect(out).to.include('require("blobshift")');
      expect(JSON.parse(await node(root, ['out/index.js']))).to.deep.equal({
        text: 'hello',
        notFound: true,
        code: 'E_BLOB_NOT_FOUND',
        store: 'function',
        n: 'boolean',
      });
    });
  }

  it('importing it loads no AWS SDK, database driver, queue or presigner; the SDK and the presigner load with the first URL', async () => {
    const root = await project(
      'lazy',
      { type: 'module' },
      {
        'index.js': `import { createRequire } from 'node:module';
          const require = createRequire(import.meta.url);
          const loaded = () => {
            const paths = Object.keys(require.cache);
            const has = (name) => paths.some((p) => p.includes('/node_modules/' + name + '/'));
            return { sdk: has('@aws-sdk/client-s3'), presigner: has('@aws-sdk/s3-request-presigner'),
                     knex: has('knex'), mysql2: has('mysql2'), pg: has('pg'), bullmq: has('bullmq') };
          };
          const { S3BlobDB } = await import('blobshift');
          const atImport = loaded();
          const db = new S3BlobDB({ bucket: 'b', clientConfig: { endpoint: 'http://127.0.0.1:9', region: 'us-east-1',
            forcePathStyle: true, credentials: { accessKeyId: 'AK', secretAccessKey: 'SK' } } });
          const url = await db.getSignedUrl('k');
          const after = loaded();
          console.log(JSON.stringify({ atImport, afterUrl: { sdk: after.sdk, presigner: after.presigner }, url: url.startsWith('http://127.0.0.1:9/b/k?') }));
          await db.close();`,
      },
    );
    expect(JSON.parse(await node(root, ['index.js']))).to.deep.equal({
      atImport: { sdk: false, presigner: false, knex: false, mysql2: false, pg: false, bullmq: false },
      afterUrl: { sdk: true, presigner: true },
      url: true,
    });
  });
});
