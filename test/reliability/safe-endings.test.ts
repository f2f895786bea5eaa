/**
 * The irreversible end of a migration, through the real CLI as an operator
 * runs it: verify, cleanup-old, rollback and check-blob-logs never destroy
 * the only good copy of a blob nor bless a bad one. Files → files on SQLite,
 * and files → Ceph RGW on MariaDB when both are configured.
 */
import { mkdtemp, readdir, readFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { BlobStore } from '../../lib/app/store.js';
import { FilesystemBlobDB } from '../../lib/backends/fs/index.js';
import { createS3Client, S3BlobDB } from '../../lib/backends/s3/index.js';
import { readAll } from '../../lib/contract/body.js';
import type { BlobDB } from '../../lib/contract/types.js';
import { MetaDB } from '../../lib/meta/index.js';
import { backfillArgs, type CliResult, runCli, writeConfig } from '../support/cli.js';
import { POSTGRES } from '../support/databases.js';
import { announce, MYSQL_URL, RGW_CREDENTIALS, RGW_ENDPOINT, uniqueName } from '../support/env.js';
import { createBucket, deleteBucket, emptyBucket } from '../support/s3rver.js';

/** Fresh credentials each time: the SDK annotates the object it is given. */
const rgwKeys = () => ({
  accessKeyId: RGW_CREDENTIALS.accessKeyId,
  secretAccessKey: RGW_CREDENTIALS.secretAccessKey,
});

interface Setup {
  dir: string;
  config: string;
  logs: string;
  meta: MetaDB;
  oldDb: BlobDB;
  newDb: BlobDB;
  /** The `new` section of the config. */
  newConfig: Record<string, unknown>;
  dispose(): Promise<void>;
}

interface Variant {
  name: string;
  make(): Promise<Setup>;
}

async function base(): Promise<{ dir: string; logs: string; oldRoot: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'blobshift-safe-'));
  return { dir, logs: join(dir, 'logs'), oldRoot: join(dir, 'old') };
}

const variants: Variant[] = [
  {
    name: 'files → files, SQLite',
    async make() {
      const { dir, logs, oldRoot } = await base();
      const filename = join(dir, 'meta.sqlite');
      const meta = await MetaDB.open({ client: 'better-sqlite3', connection: { filename } });
      const newConfig = { type: 'fs', root: join(dir, 'new') };
      const config = await writeConfig(join(dir, 'blobshift.config.json'), {
        meta: { client: 'better-sqlite3', connection: { filename } },
        old: { type: 'fs', root: oldRoot },
        new: newConfig,
      });
      const oldDb = new FilesystemBlobDB({ root: oldRoot });
      const newDb = new FilesystemBlobDB({ root: join(dir, 'new') });
      return {
        dir,
        config,
        logs,
        meta,
        oldDb,
        newDb,
        newConfig,
        async dispose() {
          await meta.close();
          await rm(dir, { recursive: true, force: true });
        },
      };
    },
  },
];
if (POSTGRES) {
  const pg = POSTGRES;
  variants.push({
    name: 'files → files, PostgreSQL',
    async make() {
      const { dir, logs, oldRoot } = await base();
      const opened = await pg.open(dir);
      const newConfig = { type: 'fs', root: join(dir, 'new') };
      const config = await writeConfig(join(dir, 'blobshift.config.json'), {
        meta: pg.configSection(opened.meta.table),
        old: { type: 'fs', root: oldRoot },
        new: newConfig,
      });
      return {
        dir,
        config,
        logs,
        meta: opened.meta,
        oldDb: new FilesystemBlobDB({ root: oldRoot }),
        newDb: new FilesystemBlobDB({ root: join(dir, 'new') }),
        newConfig,
        async dispose() {
          await opened.drop();
          await rm(dir, { recursive: true, force: true });
        },
      };
    },
  });
}
if (RGW_ENDPOINT && MYSQL_URL) {
  const endpoint = RGW_ENDPOINT;
  const mysql = MYSQL_URL;
  variants.push({
    name: 'files → Ceph RGW, MariaDB',
    async make() {
      const { dir, logs, oldRoot } = await base();
      const table = uniqueName('safe_');
      const meta = await MetaDB.open({ client: 'mysql2', connection: mysql }, { table });
      const admin = createS3Client({
        endpoint,
        region: 'us-east-1',
        forcePathStyle: true,
        credentials: rgwKeys(),
      });
      const bucket = await createBucket(admin, uniqueName('safe'));
      const newConfig = {
        type: 's3',
        bucket,
        endpoint,
        region: 'us-east-1',
        forcePathStyle: true,
        credentials: rgwKeys(),
      };
      const config = await writeConfig(join(dir, 'blobshift.config.json'), {
        meta: { client: 'mysql2', connection: mysql, table },
        old: { type: 'fs', root: oldRoot },
        new: newConfig,
      });
      const oldDb = new FilesystemBlobDB({ root: oldRoot });
      const newDb = new S3BlobDB({
        bucket,
        clientConfig: { endpoint, region: 'us-east-1', forcePathStyle: true, credentials: rgwKeys() },
      });
      return {
        dir,
        config,
        logs,
        meta,
        oldDb,
        newDb,
        newConfig,
        async dispose() {
          await newDb.close();
          await emptyBucket(admin, bucket).catch(() => {});
          await deleteBucket(admin, bucket).catch(() => {});
          admin.destroy();
          const knex = meta.knex;
          for (const t of [table, `${table}_runs`, `${table}_migrations`, `${table}_migrations_lock`]) {
            await knex.schema.dropTableIfExists(t);
          }
          await meta.close();
          await rm(dir, { recursive: true, force: true });
        },
      };
    },
  });
} else {
  announce('BLOBSHIFT_TEST_RGW', 'Ceph RGW with MariaDB (safe endings through the CLI)');
}

async function cli(s: Setup, ...args: string[]): Promise<CliResult> {
  const [command, ...rest] = args;
  return runCli([command as string, '-c', s.config, ...rest]);
}

function withLogDir(s: Setup, ...args: string[]): string[] {
  return [...args, '--log-dir', s.logs];
}

async function body(db: BlobDB, key: string): Promise<string> {
  return (await readAll(await db.get(key))).toString('utf8');
}

for (const variant of variants) {
  describe(`safe endings through the CLI (${variant.name})`, function () {
    this.timeout(120_000);
    let s: Setup;
    beforeEach(async () => {
      s = await variant.make();
    });
    afterEach(async () => {
      await s.dispose();
    });

    it('content, not size: a same-length change in new is NOT SAFE with --checksum, and cleanup-old never deletes the only correct copy', async () => {
      const store = new BlobStore({ db: s.oldDb, meta: s.meta });
      await store.put('hello world', { key: 'a/1', parentId: 'p', type: 'attachment' });
      await store.put('second blob', { key: 'a/2', parentId: 'p', type: 'attachment' });
      const bf = await cli(s, ...withLogDir(s, 'backfill', '--no-progress'));
      expect(bf.code, bf.stderr).to.equal(0);
      // The new copy's bytes change, its length does not (bit rot, a partial restore).
      await s.newDb.put('a/1', 'HELLO WORLD');

      const checked = await cli(s, ...withLogDir(s, 'verify', '--checksum'));
      expect(checked.code, checked.stderr).to.equal(1);
      expect(checked.stdout.trimEnd().split('\n').pop()).to.match(/^NOT SAFE: .*1 checksum mismatches/);
      // The latest verify was not clean: cleanup-old refuses and deletes nothing.
      const refused = await cli(s, ...withLogDir(s, 'cleanup-old', '--yes'));
      expect(refused.code, refused.stdout + refused.stderr).to.equal(2);
      expect(refused.stderr).to.match(/latest verify of these backends .*said NOT SAFE/);
      expect(await body(s.oldDb, 'a/1')).to.equal('hello world');

      // A size-only verify passes (the sizes are right) ...
      const sizes = await cli(s, ...withLogDir(s, 'verify'));
      expect(sizes.code, sizes.stderr).to.equal(0);
      expect(sizes.stdout.trimEnd().split('\n').pop()).to.equal('SAFE TO FLIP');
      // ... but cleanup-old hashes the new copy against the row before deleting the old one.
      const cleaned = await cli(s, ...withLogDir(s, 'cleanup-old', '--yes'));
      expect(cleaned.code, cleaned.stderr).to.equal(1);
      expect(cleaned.stdout).to.contain('Deleted from old: 1');
      expect(cleaned.stdout).to.contain('content differs in new: 1');
      expect(await body(s.oldDb, 'a/1')).to.equal('hello world');
      expect(await s.oldDb.exists('a/2')).to.equal(false);
    });

    it('a dry run of cleanup-old needs no --yes and deletes nothing; without any verify it is refused', async () => {
      const store = new BlobStore({ db: s.oldDb, meta: s.meta });
      await store.put('one', { key: 'b/1', parentId: 'p', type: 'attachment' });
      expect((await cli(s, ...withLogDir(s, 'backfill', '--no-progress'))).code).to.equal(0);
      const noVerify = await cli(s, ...withLogDir(s, 'cleanup-old', '--dry-run'));
      expect(noVerify.code).to.equal(2);
      expect(noVerify.stderr).to.match(/no verify of these backends is recorded/);
      expect((await cli(s, ...withLogDir(s, 'verify'))).code).to.equal(0);
      const dry = await cli(s, ...withLogDir(s, 'cleanup-old', '--dry-run'));
      expect(dry.code, dry.stderr).to.equal(0);
      expect(dry.stdout).to.contain('Would delete from old: 1');
      expect(await s.oldDb.exists('b/1')).to.equal(true);
      // A backfill after the verify: the verify no longer vouches.
      await store.put('two', { key: 'b/2', parentId: 'p', type: 'attachment' });
      expect((await cli(s, ...withLogDir(s, 'backfill', '--no-progress', '--run', 'second'))).code).to.equal(
        0,
      );
      const stale = await cli(s, ...withLogDir(s, 'cleanup-old', '--yes'));
      expect(stale.code).to.equal(2);
      expect(stale.stderr).to.match(/backfill run "second" was saved at .* after the latest verify started/);
      expect(await s.oldDb.exists('b/1')).to.equal(true);
    });

    it("rollback after a flip brings the app's same-length and resized writes back to old; verify --reverse then says SAFE", async () => {
      const old = new BlobStore({ db: s.oldDb, meta: s.meta });
      await old.put('first version', { key: 'c/1', parentId: 'p', type: 'attachment' });
      await old.put('short', { key: 'c/2', parentId: 'p', type: 'attachment' });
      await old.put('untouched', { key: 'c/3', parentId: 'p', type: 'attachment' });
      expect((await cli(s, ...withLogDir(s, 'backfill', '--no-progress'))).code).to.equal(0);
      expect((await cli(s, ...withLogDir(s, 'verify', '--checksum'))).code).to.equal(0);
      // The flip: the app writes to new alone. It overwrites c/1 with the same length, c/2 with
      // another, and adds c/4.
      const app = new BlobStore({ db: s.newDb, meta: s.meta });
      await app.put('FIRST VERSION', { key: 'c/1', parentId: 'p', type: 'attachment' });
      await app.put('a much longer body', { key: 'c/2', parentId: 'p', type: 'attachment' });
      await app.put('added after the flip', { key: 'c/4', parentId: 'p', type: 'attachment' });

      // Old is behind: verify --reverse says so.
      const before = await cli(s, ...withLogDir(s, 'verify', '--reverse', '--checksum'));
      expect(before.code, before.stderr).to.equal(1);
      const rb = await cli(s, ...withLogDir(s, 'rollback', '--no-progress', '--json'));
      expect(rb.code, rb.stderr).to.equal(0);
      const summary = JSON.parse(rb.stdout) as Record<string, unknown>;
      expect(summary).to.include({ mode: 'rollback', run: 'rollback', copied: 3, replaced: 2, present: 1 });
      expect(await body(s.oldDb, 'c/1')).to.equal('FIRST VERSION');
      expect(await body(s.oldDb, 'c/2')).to.equal('a much longer body');
      expect(await body(s.oldDb, 'c/4')).to.equal('added after the flip');
      const after = await cli(s, ...withLogDir(s, 'verify', '--reverse', '--checksum'));
      expect(after.code, after.stdout + after.stderr).to.equal(0);
      expect(after.stdout).to.contain('verify --reverse: judging the old backend');
      expect(after.stdout.trimEnd().split('\n').pop()).to.equal('SAFE TO FLIP');
      // A forward cleanup-old is refused now: the rollback came after the last forward verify.
      const cleanup = await cli(s, ...withLogDir(s, 'cleanup-old', '--yes'));
      expect(cleanup.code).to.equal(2);
      expect(await body(s.oldDb, 'c/1')).to.equal('FIRST VERSION');
    });

    it('check-blob-logs never counts a copy of the wrong size as found, and exits 1', async () => {
      const store = new BlobStore({ db: s.oldDb, meta: s.meta });
      await store.put('the right bytes', { key: 'd/1', parentId: 'p', type: 'image' });
      // Something already put another size under the key in new: backfill logs it, never overwrites.
      await s.newDb.put('d/1', 'wrong');
      const bf = await cli(s, ...withLogDir(s, 'backfill', '--no-progress'));
      expect(bf.code).to.equal(1);
      const logs = (await readdir(s.logs)).filter((n) => n.startsWith('backfill-'));
      const log = join(s.logs, logs[0] as string);
      expect(await readFile(log, 'utf8')).to.contain('size mismatch');
      for (const migrate of [[], ['--migrate']]) {
        const text = await cli(s, ...withLogDir(s, 'check-blob-logs', ...migrate, log));
        expect(text.code, text.stderr).to.equal(1);
        expect(text.stdout).to.contain('image: checked 1 records\n  Found in new db: 0\n');
        expect(text.stdout).to.contain('  Wrong size in new db: 1');
        expect(text.stdout).to.contain('d/1: in new 5 bytes, the metadata says 15');
      }
      const json = await cli(s, ...withLogDir(s, 'check-blob-logs', '--json', log));
      const report = JSON.parse(json.stdout) as { totals: Record<string, number> };
      expect(report.totals).to.include({ foundInNew: 0, wrongSizeInNew: 1 });
      expect(await body(s.newDb, 'd/1')).to.equal('wrong');
    });
  });
}

describe('safe endings: old and new the same place under two names', function () {
  this.timeout(120_000);
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'blobshift-same-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function seedSqlite(root: string): Promise<string> {
    const filename = join(dir, 'meta.sqlite');
    const meta = await MetaDB.open({ client: 'better-sqlite3', connection: { filename } });
    const store = new BlobStore({ db: new FilesystemBlobDB({ root }), meta });
    for (let i = 0; i < 3; i++) await store.put(`blob ${i}`, { key: `k/${i}`, parentId: 'p', type: 't' });
    await meta.close();
    return filename;
  }

  async function expectRefusedEverywhere(config: string, logs: string, exists: () => Promise<boolean[]>) {
    const v = await runCli(['verify', '-c', config, '--log-dir', logs]);
    expect(v.code, v.stdout + v.stderr).to.equal(1);
    expect(v.stdout.trimEnd().split('\n').pop()).to.match(/^NOT SAFE: old and new are the same place/);
    const c = await runCli(['cleanup-old', '-c', config, '--yes', '--log-dir', logs]);
    expect(c.code, c.stdout + c.stderr).to.equal(2);
    expect(c.stderr).to.match(/same place/);
    expect(await exists()).to.deep.equal([true, true, true]);
  }

  it('a filesystem root and a symlink to it', async () => {
    const root = join(dir, 'blobs');
    const filename = await seedSqlite(root);
    await symlink(root, join(dir, 'alias'));
    const config = await writeConfig(join(dir, 'c.json'), {
      meta: { client: 'better-sqlite3', connection: { filename } },
      old: { type: 'fs', root },
      new: { type: 'fs', root: join(dir, 'alias') },
    });
    const db = new FilesystemBlobDB({ root });
    await expectRefusedEverywhere(config, join(dir, 'logs'), () =>
      Promise.all([0, 1, 2].map((i) => db.exists(`k/${i}`))),
    );
  });

  const rgw = RGW_ENDPOINT;
  if (rgw) {
    it('one RGW bucket through two spellings of its endpoint (127.0.0.1 and localhost)', async () => {
      const endpoint = rgw;
      const alias = endpoint.replace('127.0.0.1', 'localhost');
      expect(alias).to.not.equal(endpoint, 'the test needs an endpoint written with 127.0.0.1');
      const clientConfig = () => ({
        endpoint,
        region: 'us-east-1',
        forcePathStyle: true,
        credentials: rgwKeys(),
      });
      const admin = createS3Client(clientConfig());
      const bucket = await createBucket(admin, uniqueName('same'));
      try {
        const db = new S3BlobDB({ bucket, clientConfig: clientConfig() });
        const filename = join(dir, 'meta.sqlite');
        const meta = await MetaDB.open({ client: 'better-sqlite3', connection: { filename } });
        const store = new BlobStore({ db, meta });
        for (let i = 0; i < 3; i++) await store.put(`blob ${i}`, { key: `k/${i}`, parentId: 'p', type: 't' });
        await meta.close();
        const side = (e: string) => ({
          type: 's3',
          bucket,
          endpoint: e,
          region: 'us-east-1',
          forcePathStyle: true,
          credentials: rgwKeys(),
        });
        const config = await writeConfig(join(dir, 'c.json'), {
          meta: { client: 'better-sqlite3', connection: { filename } },
          old: side(endpoint),
          new: side(alias),
        });
        // backfill already refused (its write probe); verify and cleanup-old now do too.
        const bf = await runCli(backfillArgs(config, join(dir, 'logs'), '--no-progress'));
        expect(bf.code).to.equal(2);
        expect(bf.stderr).to.match(/same place/);
        await expectRefusedEverywhere(config, join(dir, 'logs'), () =>
          Promise.all([0, 1, 2].map((i) => db.exists(`k/${i}`))),
        );
        await db.close();
      } finally {
        await emptyBucket(admin, bucket).catch(() => {});
        await deleteBucket(admin, bucket).catch(() => {});
        admin.destroy();
      }
    });
  }
});
