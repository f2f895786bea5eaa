import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  lstat,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { expect } from 'chai';
import { FilesystemBlobDB, META_PREFIX, TEMP_PREFIX } from '../../lib/backends/fs/index.js';
import { getWithInfo, readAll } from '../../lib/contract/body.js';
import {
  BackendError,
  BlobExistsError,
  BlobNotFoundError,
  KeyConflictError,
  SizeMismatchError,
} from '../../lib/contract/errors.js';
import type { HttpMeta } from '../../lib/contract/types.js';
import { describeBlobDB, getBytes, listKeys, rejectionOf } from '../conformance/blobdb.suite.js';

const roots: string[] = [];
async function freshDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'blobshift-fs-'));
  roots.push(dir);
  return dir;
}

after(async () => {
  await Promise.all(roots.map((r) => rm(r, { recursive: true, force: true })));
});

// keyConflicts: a file cannot also be a directory, so `a` and `a/b` cannot coexist.
// conditionalWrites comes from the instance (true: link() refuses an existing name).
describeBlobDB('FilesystemBlobDB', async () => new FilesystemBlobDB({ root: await freshDir() }), {
  keyConflicts: true,
});

/** Every file and directory under `dir`, relative, sorted ('/' appended to directories). */
async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, rel: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) {
        out.push(`${rel}${e.name}/`);
        await walk(path.join(d, e.name), `${rel}${e.name}/`);
      } else {
        out.push(rel + e.name);
      }
    }
  };
  await walk(dir, '');
  return out.sort();
}

/** `rsync -a from/ to/`; says how to get rsync where it is missing. */
function rsync(from: string, to: string): void {
  try {
    execFileSync('rsync', ['-a', `${from}/`, `${to}/`]);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error('these tests copy a root with rsync, which is not installed: apt-get install -y rsync');
    }
    throw err;
  }
}

const reserved = (entries: string[]): string[] =>
  entries.filter((e) => path.basename(e).startsWith('.blobshift-'));
const twoHoursAgo = (): Date => new Date(Date.now() - 2 * 3600 * 1000);

function failingBody(bytes: number): Readable {
  let sent = false;
  return new Readable({
    read() {
      if (!sent) {
        sent = true;
        this.push(Buffer.alloc(bytes, 1));
      } else {
        setImmediate(() => this.destroy(new Error('disk of the sender caught fire')));
      }
    },
  });
}

describe('FilesystemBlobDB', () => {
  let root: string;
  let db: FilesystemBlobDB;

  beforeEach(async () => {
    root = await freshDir();
    db = new FilesystemBlobDB({ root });
  });

  afterEach(async () => {
    await db.close();
  });

  describe('getWithInfo', () => {
    it('reads a small blob whole even when each read returns less than asked (a network mount)', async () => {
      const bytes = Buffer.alloc(10_000, 9);
      bytes.write('the end', 9_990);
      await db.put('short/reads', bytes);
      // A read on a local disk returns everything asked; a mount need not. The
      // fault is injected into FileHandle.read, the rest is the real filesystem.
      const probe = await open(path.join(root, 'short', 'reads'));
      const proto = Object.getPrototypeOf(probe) as {
        read: (buf: unknown, offset: number, length: number, position: number) => Promise<unknown>;
      };
      await probe.close();
      const real = proto.read;
      proto.read = function (this: unknown, buf: unknown, offset: number, length: number, position: number) {
        return real.call(this, buf, offset, Math.min(length, 1000), position);
      };
      try {
        const { info, body } = await getWithInfo(db, 'short/reads');
        expect(info.size).to.equal(10_000);
        expect((await readAll(body)).equals(bytes)).to.equal(true);
      } finally {
        proto.read = real;
      }
    });
  });

  describe('layout', () => {
    it('stores a blob as a plain file at root/key, leaving no temp file', async () => {
      await db.put('a/b/c.txt', 'plain bytes');
      expect(await readFile(path.join(root, 'a', 'b', 'c.txt'), 'utf8')).to.equal('plain bytes');
      expect(await tree(root)).to.deep.equal(['a/', 'a/b/', 'a/b/c.txt']);
    });

    it('serves an existing tree of files written by something else, without metadata', async () => {
      await mkdir(path.join(root, 'legacy', '2019'), { recursive: true });
      await writeFile(path.join(root, 'legacy', '2019', 'photo.jpg'), 'jpeg bytes');
      await writeFile(path.join(root, 'top'), '');
      expect(await listKeys(db)).to.deep.equal(['legacy/2019/photo.jpg', 'top']);
      const st = await db.stat('legacy/2019/photo.jpg');
      expect(st.size).to.equal(10);
      expect(st.contentType).to.equal(undefined);
      expect(st.httpMeta).to.equal(undefined);
      expect((await getBytes(db, 'legacy/2019/photo.jpg')).toString()).to.equal('jpeg bytes');
    });

    it('reads from a missing root as an empty store, without creating it', async () => {
      const missing = path.join(root, 'not', 'yet');
      const lazy = new FilesystemBlobDB({ root: missing });
      expect(await lazy.exists('k')).to.equal(false);
      expect(await rejectionOf(lazy.get('k'))).to.be.instanceOf(BlobNotFoundError);
      expect(await lazy.delete('k')).to.equal(false);
      expect(await listKeys(lazy)).to.deep.equal([]);
      expect(await lazy.cleanupTemp()).to.deep.equal({ removed: 0, migrated: 0 });
      expect(await tree(root)).to.deep.equal([]);
      await lazy.put('k', 'v');
      expect(await readFile(path.join(missing, 'k'), 'utf8')).to.equal('v');
    });

    it('does not list file names that are not valid keys', async () => {
      await writeFile(path.join(root, 'bad\nname'), 'x');
      await writeFile(path.join(root, 'good'), 'x');
      expect(await listKeys(db)).to.deep.equal(['good']);
    });

    it('delete removes now-empty parent directories, but never the root or non-empty ones', async () => {
      await db.put('x/y/z/deep', '1');
      await db.put('x/keep', '2');
      expect(await db.delete('x/y/z/deep')).to.equal(true);
      expect(await tree(root)).to.deep.equal(['x/', 'x/keep']);
      expect(await db.delete('x/keep')).to.equal(true);
      expect(await tree(root)).to.deep.equal([]);
      expect((await stat(root)).isDirectory()).to.equal(true);
    });

    it('get hands back an open file: the bytes stay readable after a delete', async () => {
      await db.put('held', Buffer.alloc(300_000, 9));
      const stream = await db.get('held');
      expect(await db.delete('held')).to.equal(true);
      const bytes = await readAll(stream);
      expect(bytes.length).to.equal(300_000);
      expect(bytes.every((b) => b === 9)).to.equal(true);
    });

    it('refuses bad options', () => {
      expect(() => new FilesystemBlobDB({ root: '' })).to.throw(/root/);
      expect(() => new FilesystemBlobDB({ root, fileMode: 0o10000 })).to.throw(/fileMode/);
      expect(() => new FilesystemBlobDB({ root, dirMode: -1 })).to.throw(/dirMode/);
    });
  });

  describe('modes', () => {
    let umask: number;
    beforeEach(() => {
      umask = process.umask(0o077);
    });
    afterEach(() => {
      process.umask(umask);
    });

    it('applies fileMode and dirMode whatever the umask', async () => {
      const custom = new FilesystemBlobDB({ root: path.join(root, 'r'), fileMode: 0o640, dirMode: 0o751 });
      await custom.put('d1/d2/f', 'x', { contentType: 'text/plain' });
      expect((await stat(path.join(root, 'r'))).mode & 0o7777, 'created root').to.equal(0o751);
      expect((await stat(path.join(root, 'r', 'd1'))).mode & 0o7777).to.equal(0o751);
      expect((await stat(path.join(root, 'r', 'd1', 'd2'))).mode & 0o7777).to.equal(0o751);
      expect((await stat(path.join(root, 'r', 'd1', 'd2', 'f'))).mode & 0o7777).to.equal(0o640);
      const sidecars = reserved(await tree(path.join(root, 'r')));
      expect(sidecars).to.have.length(1);
      expect((await stat(path.join(root, 'r', sidecars[0] as string))).mode & 0o7777).to.equal(0o640);
    });

    it('defaults to 0644 files and 0755 directories', async () => {
      await db.put('d/f', 'x');
      await db.put('d/g', 'y', { overwrite: false });
      expect((await stat(path.join(root, 'd'))).mode & 0o7777).to.equal(0o755);
      expect((await stat(path.join(root, 'd', 'f'))).mode & 0o7777).to.equal(0o644);
      expect((await stat(path.join(root, 'd', 'g'))).mode & 0o7777).to.equal(0o644);
    });
  });

  describe('paths never leave the root', () => {
    let outside: string;
    beforeEach(async () => {
      outside = await freshDir();
      await writeFile(path.join(outside, 'secret'), 'top secret');
      await symlink(outside, path.join(root, 'out'));
      await symlink(path.join(outside, 'secret'), path.join(root, 'leak'));
    });

    it('refuses a put through a directory symlink pointing outside', async () => {
      for (const key of ['out/x', 'out/new/deeper']) {
        const err = await rejectionOf(db.put(key, 'escape'));
        expect(err, key).to.be.instanceOf(BackendError);
        expect((err as BackendError).code).to.equal('E_BACKEND');
        expect((err as BackendError).key).to.equal(key);
        expect((err as Error).message).to.match(/outside the root/);
      }
      expect((await readdir(outside)).sort()).to.deep.equal(['secret']);
    });

    it('refuses get, stat, size and exists through symlinks pointing outside', async () => {
      for (const key of ['out/secret', 'leak']) {
        for (const call of [
          () => db.get(key),
          () => db.stat(key),
          () => db.size(key),
          () => db.exists(key),
        ]) {
          const err = await rejectionOf(call());
          expect(err, key).to.be.instanceOf(BackendError);
          expect((err as Error).message).to.match(/outside the root/);
        }
      }
    });

    it('refuses to overwrite through a symlinked directory, and a file symlink is replaced, not followed', async () => {
      expect(await rejectionOf(db.put('out/secret', 'pwned'))).to.be.instanceOf(BackendError);
      await db.put('leak', 'replaced the link itself');
      expect(await readFile(path.join(outside, 'secret'), 'utf8')).to.equal('top secret');
      expect((await lstat(path.join(root, 'leak'))).isFile()).to.equal(true);
    });

    it('delete of a symlinked blob removes the link only', async () => {
      expect(await db.delete('leak')).to.equal(true);
      expect(await readFile(path.join(outside, 'secret'), 'utf8')).to.equal('top secret');
      expect(await rejectionOf(db.delete('out/secret'))).to.be.instanceOf(BackendError);
      expect(await readFile(path.join(outside, 'secret'), 'utf8')).to.equal('top secret');
    });

    it('follows symlinks that stay inside the root for reads; list follows none', async () => {
      await db.put('real/f', 'inside');
      await symlink(path.join(root, 'real'), path.join(root, 'alias'));
      await symlink(path.join(root, 'real', 'f'), path.join(root, 'direct'));
      expect((await getBytes(db, 'alias/f')).toString()).to.equal('inside');
      expect((await getBytes(db, 'direct')).toString()).to.equal('inside');
      expect(await listKeys(db)).to.deep.equal(['real/f']);
      expect(await listKeys(db, { prefix: 'alias/' })).to.deep.equal([]);
      expect(await listKeys(db, { prefix: 'out/' })).to.deep.equal([]);
    });

    it('works with a root reached through a symlink, and still refuses links out of it', async () => {
      const viaLink = path.join(await freshDir(), 'root-link');
      await symlink(root, viaLink);
      const linked = new FilesystemBlobDB({ root: viaLink });
      await linked.put('fine', 'ok');
      expect(await readFile(path.join(root, 'fine'), 'utf8')).to.equal('ok');
      expect(await rejectionOf(linked.put('out/x', 'no'))).to.be.instanceOf(BackendError);
    });
  });

  describe('temp files', () => {
    it('never lists temp files, removes stale ones when listing, keeps fresh ones', async () => {
      await db.put('dir/blob', 'b');
      const stale = path.join(root, 'dir', `${TEMP_PREFIX}0123456789abcdef`);
      const staleTop = path.join(root, `${TEMP_PREFIX}aaaaaaaaaaaaaaaa`);
      const fresh = path.join(root, 'dir', `${TEMP_PREFIX}fedcba9876543210`);
      for (const f of [stale, staleTop, fresh]) await writeFile(f, 'left by a crash');
      await utimes(stale, twoHoursAgo(), twoHoursAgo());
      await utimes(staleTop, twoHoursAgo(), twoHoursAgo());
      expect(await listKeys(db)).to.deep.equal(['dir/blob']);
      expect(await tree(root)).to.deep.equal(['dir/', `dir/${path.basename(fresh)}`, 'dir/blob']);
      expect(await db.cleanupTemp({ olderThanMs: 0 })).to.deep.equal({ removed: 1, migrated: 0 });
      expect(await tree(root)).to.deep.equal(['dir/', 'dir/blob']);
    });

    it('a crash-leftover temp file is not listed and is no blob', async () => {
      await mkdir(path.join(root, 'x'));
      await writeFile(path.join(root, 'x', `${TEMP_PREFIX}1111222233334444`), 'half a blob');
      expect(await listKeys(db)).to.deep.equal([]);
      expect(await listKeys(db, { prefix: 'x/' })).to.deep.equal([]);
      expect(await db.exists('x')).to.equal(false);
      // Still there: it is fresh.
      expect(await tree(root)).to.deep.equal(['x/', `x/${TEMP_PREFIX}1111222233334444`]);
    });

    it('cleanupTemp removes stale temp files and orphaned sidecars, and keeps live sidecars', async () => {
      await db.put('m/kept', 'v', { contentType: 'text/plain' });
      await writeFile(path.join(root, 'm', `${META_PREFIX}${'0'.repeat(32)}-12345.json`), '{}');
      await writeFile(path.join(root, 'm', `${TEMP_PREFIX}9999999999999999`), 'x');
      for (const f of reserved(await tree(root)))
        await utimes(path.join(root, f), twoHoursAgo(), twoHoursAgo());
      expect(await db.cleanupTemp()).to.deep.equal({ removed: 2, migrated: 0 });
      expect(reserved(await tree(root))).to.have.length(1);
      expect((await db.stat('m/kept')).contentType).to.equal('text/plain');
    });

    it('a put in progress keeps its temp file in the target directory and it is not listed', async () => {
      await db.put('t/other', 'o');
      const pass = new PassThrough();
      const put = db.put('t/pending', pass);
      pass.write(Buffer.alloc(1000));
      const temps = async (): Promise<string[]> =>
        reserved(await tree(root)).filter((f) => f.startsWith(`t/${TEMP_PREFIX}`));
      for (let i = 0; i < 200 && (await temps()).length === 0; i++)
        await new Promise((r) => setTimeout(r, 10));
      expect(await temps()).to.have.length(1);
      expect(await listKeys(db)).to.deep.equal(['t/other']);
      pass.end();
      await put;
      expect(await tree(root)).to.deep.equal(['t/', 't/other', 't/pending']);
    });
  });

  describe('a vs a/b', () => {
    it('put a/b when a is a blob: KeyConflictError naming a', async () => {
      await db.put('a', 'file');
      for (const key of ['a/b', 'a/b/c/d']) {
        const err = await rejectionOf(db.put(key, 'below'));
        expect(err, key).to.be.instanceOf(KeyConflictError);
        expect((err as KeyConflictError).conflictsWith).to.equal('a');
        expect((err as Error).message).to.contain('"a" is a blob');
      }
      expect(await tree(root)).to.deep.equal(['a']);
    });

    it('put a when a/… holds keys: KeyConflictError, with rename and with link', async () => {
      await db.put('a/b', 'below');
      for (const overwrite of [true, false]) {
        const err = await rejectionOf(db.put('a', 'file', { overwrite, contentType: 'text/plain' }));
        expect(err).to.be.instanceOf(KeyConflictError);
        expect((err as KeyConflictError).conflictsWith).to.equal('a/b');
        expect((err as Error).message).to.contain('other keys are stored under "a/"');
      }
      expect(await tree(root)).to.deep.equal(['a/', 'a/b']);
    });

    it('an empty directory left behind does not block a blob of the same name', async () => {
      await mkdir(path.join(root, 'empty', 'nested'), { recursive: true });
      await db.put('empty/nested', 'now a blob');
      await mkdir(path.join(root, 'e2'));
      await db.put('e2', 'also', { overwrite: false });
      expect(await listKeys(db)).to.deep.equal(['e2', 'empty/nested']);
    });

    it('after deleting a/b, a can be stored', async () => {
      await db.put('a/b', 'below');
      await db.delete('a/b');
      await db.put('a', 'now a file');
      expect((await getBytes(db, 'a')).toString()).to.equal('now a file');
    });
  });

  describe('failed puts', () => {
    it('an input stream failing midway leaves the previous content and metadata, and no temp file', async () => {
      await db.put('k/v', 'previous', { contentType: 'text/plain', httpMeta: { cacheControl: 'max-age=5' } });
      const before = await tree(root);
      const err = await rejectionOf(db.put('k/v', failingBody(200_000), { contentType: 'image/png' }));
      expect(err).to.be.instanceOf(BackendError);
      expect(((err as Error).cause as Error).message).to.equal('disk of the sender caught fire');
      expect((await getBytes(db, 'k/v')).toString()).to.equal('previous');
      const st = await db.stat('k/v');
      expect(st.contentType).to.equal('text/plain');
      expect(st.httpMeta?.cacheControl).to.equal('max-age=5');
      expect(await tree(root)).to.deep.equal(before);
    });

    it('a failed put into new directories removes them again', async () => {
      const err = await rejectionOf(db.put('new/dirs/k', failingBody(10)));
      expect(err).to.be.instanceOf(BackendError);
      expect(await tree(root)).to.deep.equal([]);
    });

    it('a size mismatch leaves nothing: no temp file, no sidecar', async () => {
      await db.put('s', 'abc');
      const err = await rejectionOf(
        db.put('s', Readable.from([Buffer.from('abcdef')]), { size: 3, contentType: 'a/b' }),
      );
      expect(err).to.be.instanceOf(SizeMismatchError);
      expect(await tree(root)).to.deep.equal(['s']);
    });

    it('a refused overwrite: false leaves no temp file and no sidecar behind', async () => {
      await db.put('o', 'first');
      const err = await rejectionOf(
        db.put('o', Readable.from([Buffer.from('second')]), { overwrite: false, contentType: 'a/b' }),
      );
      expect(err).to.be.instanceOf(BlobExistsError);
      expect(await tree(root)).to.deep.equal(['o']);
    });
  });

  describe('metadata sidecar', () => {
    it('is replaced on overwrite and cleared when the new put has none', async () => {
      await db.put('p/q', 'v1', { contentType: 'text/plain', httpMeta: { metadata: { n: '1' } } });
      expect(reserved(await tree(root))).to.have.length(1);
      await db.put('p/q', 'v2', { contentType: 'text/csv', httpMeta: { metadata: { n: '2' } } });
      let st = await db.stat('p/q');
      expect(st.contentType).to.equal('text/csv');
      expect(st.httpMeta?.metadata).to.deep.equal({ n: '2' });
      expect(reserved(await tree(root)), 'the old sidecar is gone').to.have.length(1);
      await db.put('p/q', 'v3');
      st = await db.stat('p/q');
      expect(st.contentType).to.equal(undefined);
      expect(st.httpMeta).to.equal(undefined);
      expect(reserved(await tree(root))).to.deep.equal([]);
    });

    it('is kept by a refused overwrite: false and removed with the blob', async () => {
      await db.put('r/s', 'v1', { contentType: 'text/plain' });
      await rejectionOf(db.put('r/s', 'v2', { overwrite: false, contentType: 'text/html' }));
      expect((await db.stat('r/s')).contentType).to.equal('text/plain');
      await db.delete('r/s');
      expect(await tree(root)).to.deep.equal([]);
    });

    it('is ignored once something else rewrites the blob file in place', async () => {
      await db.put('w', 'original', { contentType: 'text/plain' });
      await writeFile(path.join(root, 'w'), 'rewritten by another program');
      const st = await db.stat('w');
      expect(st.size).to.equal(28);
      expect(st.contentType).to.equal(undefined);
      // Same size, same inode: the modification time gives it away.
      await db.put('w2', 'original', { contentType: 'text/plain' });
      await new Promise((r) => setTimeout(r, 5));
      await writeFile(path.join(root, 'w2'), 'ORIGINAL');
      expect((await db.stat('w2')).contentType).to.equal(undefined);
    });

    it('fits next to a 255-byte file name', async () => {
      const name = 'é'.repeat(127) + 'x'; // 255 bytes
      await db.put(`long/${name}`, 'v', { contentType: 'text/plain', httpMeta: { contentLanguage: 'de' } });
      const st = await db.stat(`long/${name}`);
      expect(st.contentType).to.equal('text/plain');
      expect(st.httpMeta?.contentLanguage).to.equal('de');
      expect(await listKeys(db)).to.deep.equal([`long/${name}`]);
    });

    it('racing overwrites with metadata leave the winner its own metadata', async () => {
      await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          db.put('race', `body ${i}`, {
            contentType: `text/x-${i}`,
            httpMeta: { metadata: { i: String(i) } },
          }),
        ),
      );
      const body = (await getBytes(db, 'race')).toString();
      const i = body.slice(5);
      const st = await db.stat('race');
      expect(st.contentType).to.equal(`text/x-${i}`);
      expect(st.httpMeta?.metadata).to.deep.equal({ i });
    });

    /** Blobs with and without metadata, in nested directories; what stat should say of each. */
    async function seed(
      store: FilesystemBlobDB,
    ): Promise<Map<string, { contentType?: string; httpMeta?: HttpMeta }>> {
      const expected = new Map<string, { contentType?: string; httpMeta?: HttpMeta }>();
      for (let i = 0; i < 12; i++) {
        const key = `media/${i % 3}/file-${i}.bin`;
        const meta =
          i % 4 === 3
            ? {}
            : {
                contentType: `image/x-${i}`,
                httpMeta: { cacheControl: `max-age=${i}`, contentDisposition: `inline; filename="f${i}"` },
              };
        await store.put(key, `bytes of ${i}`, meta);
        expected.set(key, meta);
      }
      return expected;
    }

    async function expectMetadata(
      store: FilesystemBlobDB,
      expected: Map<string, { contentType?: string; httpMeta?: HttpMeta }>,
      what: string,
    ): Promise<void> {
      for (const [key, meta] of expected) {
        const st = await store.stat(key);
        expect(st.contentType, `${what}: ${key}`).to.equal(meta.contentType);
        expect(st.httpMeta, `${what}: ${key}`).to.deep.equal(meta.httpMeta);
      }
    }

    for (const [tool, copy] of [
      ['cp -a', (from: string, to: string) => execFileSync('cp', ['-a', from, to])],
      ['rsync -a', (from: string, to: string) => rsync(from, to)],
    ] as const) {
      it(`survives a copy of the root with ${tool}: stat gives the metadata back, cleanupTemp removes no sidecar`, async () => {
        const expected = await seed(db);
        const sidecars = reserved(await tree(root));
        expect(sidecars).to.have.length(9);
        const copyRoot = path.join(await freshDir(), 'restored');
        copy(root, copyRoot);
        const restored = new FilesystemBlobDB({ root: copyRoot });
        await expectMetadata(restored, expected, `after ${tool}`);
        expect(await restored.cleanupTemp({ olderThanMs: 0 })).to.deep.equal({ removed: 0, migrated: 0 });
        expect(reserved(await tree(copyRoot))).to.deep.equal(sidecars);
        await expectMetadata(restored, expected, `after ${tool} and cleanupTemp`);
        // The copy is a working store: an overwrite there replaces its sidecar.
        await restored.put('media/0/file-0.bin', 'new bytes', { contentType: 'text/plain' });
        expect((await restored.stat('media/0/file-0.bin')).contentType).to.equal('text/plain');
        expect(reserved(await tree(copyRoot))).to.have.length(9);
      });
    }

    it('a copy that drops modification times (cp -r) loses the metadata, but cleanupTemp keeps those sidecars', async () => {
      const expected = await seed(db);
      const copyRoot = path.join(await freshDir(), 'copied');
      execFileSync('cp', ['-r', root, copyRoot]);
      const copied = new FilesystemBlobDB({ root: copyRoot });
      for (const key of expected.keys()) expect((await copied.stat(key)).contentType).to.equal(undefined);
      expect(await copied.cleanupTemp({ olderThanMs: 0 })).to.deep.equal({ removed: 0, migrated: 0 });
      expect(reserved(await tree(copyRoot))).to.have.length(9);
    });

    it('reads sidecars of the first format (named by inode); cleanupTemp renames them, in place or after a copy', async () => {
      // What blobshift 0.1 development versions wrote: `<hash>-<inode>.json`, checked by size and mtime.
      const nameHash = (name: string) => createHash('sha256').update(name, 'utf8').digest('hex').slice(0, 32);
      const oldRoot = await freshDir();
      const keys = ['a/one.txt', 'a/two.txt', 'b/three.txt'];
      for (const [i, key] of keys.entries()) {
        const file = path.join(oldRoot, key);
        await mkdir(path.dirname(file), { recursive: true });
        await writeFile(file, `old ${i}`);
        const st = await lstat(file, { bigint: true });
        const sidecar = path.join(
          path.dirname(file),
          `${META_PREFIX}${nameHash(path.basename(key))}-${st.ino.toString()}.json`,
        );
        await writeFile(
          sidecar,
          JSON.stringify({
            v: 1,
            size: st.size.toString(),
            mtimeNs: st.mtimeNs.toString(),
            contentType: `text/x-${i}`,
          }),
        );
      }
      const old = new FilesystemBlobDB({ root: oldRoot });
      for (const [i, key] of keys.entries())
        expect((await old.stat(key)).contentType).to.equal(`text/x-${i}`);

      // Copied before any upgrade: the inodes changed, the sizes and times did not.
      const copyRoot = path.join(await freshDir(), 'copy');
      execFileSync('cp', ['-a', oldRoot, copyRoot]);
      const copied = new FilesystemBlobDB({ root: copyRoot });
      expect((await copied.stat('a/one.txt')).contentType, 'not found by inode').to.equal(undefined);
      expect(await copied.cleanupTemp({ olderThanMs: 0 })).to.deep.equal({ removed: 0, migrated: 3 });
      for (const [i, key] of keys.entries())
        expect((await copied.stat(key)).contentType).to.equal(`text/x-${i}`);

      // In place: renamed too, and a copy afterwards keeps them.
      expect(await old.cleanupTemp({ olderThanMs: 0 })).to.deep.equal({ removed: 0, migrated: 3 });
      expect(reserved(await tree(oldRoot)).every((f) => /-s\d+-m\d+\.json$/.test(f))).to.equal(true);
      const again = path.join(await freshDir(), 'again');
      rsync(oldRoot, again);
      const fresh = new FilesystemBlobDB({ root: again });
      for (const [i, key] of keys.entries())
        expect((await fresh.stat(key)).contentType).to.equal(`text/x-${i}`);
      // An overwrite replaces a first-format sidecar like any other.
      await old.put('a/one.txt', 'new', { contentType: 'text/new' });
      expect((await old.stat('a/one.txt')).contentType).to.equal('text/new');
    });

    it('a first-format sidecar of a blob that is gone, or of another size, is an orphan', async () => {
      const nameHash = (name: string) => createHash('sha256').update(name, 'utf8').digest('hex').slice(0, 32);
      await db.put('o/kept', 'four', { contentType: 'text/kept' });
      await db.put('o/grown', 'four');
      const stale = [
        `${META_PREFIX}${nameHash('gone')}-123.json`,
        `${META_PREFIX}${nameHash('grown')}-456.json`,
      ];
      await writeFile(
        path.join(root, 'o', stale[0] as string),
        JSON.stringify({ v: 1, size: '4', mtimeNs: '1', contentType: 'x/y' }),
      );
      await writeFile(
        path.join(root, 'o', stale[1] as string),
        JSON.stringify({ v: 1, size: '99', mtimeNs: '1', contentType: 'x/y' }),
      );
      expect(await db.cleanupTemp({ olderThanMs: 0 })).to.deep.equal({ removed: 2, migrated: 0 });
      expect((await db.stat('o/kept')).contentType).to.equal('text/kept');
    });

    it('a sidecar a crash left before its rename never describes the blob there, and is removed as an orphan', async () => {
      await db.put('crash/x', 'same size', { contentType: 'text/original' });
      const st = await lstat(path.join(root, 'crash', 'x'), { bigint: true });
      const nameHash = createHash('sha256').update('x', 'utf8').digest('hex').slice(0, 32);
      // Another version of the same size, a moment later: its sidecar was written, its rename never happened.
      const other = { size: st.size, mtimeNs: st.mtimeNs + 1000n };
      const leftover = `${META_PREFIX}${nameHash}-s${other.size}-m${other.mtimeNs}.json`;
      await writeFile(
        path.join(root, 'crash', leftover),
        JSON.stringify({
          v: 2,
          size: other.size.toString(),
          mtimeNs: other.mtimeNs.toString(),
          contentType: 'text/never',
        }),
      );
      expect((await db.stat('crash/x')).contentType).to.equal('text/original');
      expect(await db.cleanupTemp({ olderThanMs: 0 })).to.deep.equal({ removed: 1, migrated: 0 });
      expect(reserved(await tree(root))).to.have.length(1);
      expect((await db.stat('crash/x')).contentType).to.equal('text/original');
    });

    it('quick overwrites of one size, with and without metadata, never show another version’s', async () => {
      for (let i = 0; i < 40; i++) {
        const meta = i % 3 === 2 ? {} : { contentType: `text/v${i}` };
        await db.put('quick', `v${String(i).padStart(2, '0')}`, meta);
        const st = await db.stat('quick');
        expect(st.contentType, `overwrite ${i}`).to.equal(meta.contentType);
        expect(reserved(await tree(root)), `overwrite ${i}`).to.have.length(meta.contentType ? 1 : 0);
      }
    });

    it('gives each write a modification time within a second before it', async () => {
      const before = Date.now();
      await db.put('t', 'x', { contentType: 'text/plain' });
      const after = Date.now();
      const lastModified = (await db.stat('t')).lastModified?.getTime() ?? 0;
      expect(lastModified).to.be.within(before - 1000, after);
    });
  });
});
