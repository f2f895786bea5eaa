/**
 * The filesystem backend: one file per blob under a root directory.
 */
import { randomBytes } from 'node:crypto';
import { type BigIntStats, constants as fsc } from 'node:fs';
import {
  type FileHandle,
  link,
  mkdir,
  open,
  opendir,
  realpath,
  rename,
  rmdir,
  chmod as setMode,
  unlink,
} from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { bodyBuffer, isValidSize } from '../../contract/body.js';
import {
  BackendError,
  BlobExistsError,
  BlobNotFoundError,
  BlobShiftError,
  describeKey,
  errorMessage,
  InvalidKeyError,
  isErrnoException,
  KeyConflictError,
  NotSupportedError,
  SizeMismatchError,
} from '../../contract/errors.js';
import { validateKey, validatePrefix } from '../../contract/keys.js';
import type {
  BlobBody,
  BlobDB,
  BlobInfo,
  BlobWithInfo,
  BulkDeleteResult,
  Capabilities,
  ListOptions,
  PutOptions,
  SignedUrlOptions,
} from '../../contract/types.js';
import { cleanupTree } from './cleanup.js';
import { checkMode, firstEntry, isMissing, lstatBig, syncDir, unlinkQuiet, wrap } from './files.js';
import { blobInfo, type Location, removeSidecars } from './sidecars.js';
import { TEMP_PREFIX, walkTree } from './walk.js';
import { stampVersion, writeBody } from './write.js';

export { META_PREFIX } from './sidecars.js';
export { TEMP_PREFIX } from './walk.js';

export interface FilesystemBlobDBOptions {
  /** The directory holding the blobs. Created (with `dirMode`) on the first put when missing. */
  root: string;
  /** Mode of blob files, applied with chmod whatever the umask. Default 0o644. */
  fileMode?: number;
  /** Mode of the directories this backend creates, applied with chmod whatever the umask. Default 0o755. */
  dirMode?: number;
}

/** Temporary files and orphaned sidecars older than this are removed when met. */
export const STALE_TEMP_MS = 60 * 60 * 1000;

const READ_FLAGS = fsc.O_RDONLY | (fsc.O_NOFOLLOW ?? 0) | (fsc.O_NONBLOCK ?? 0);
const TEMP_FLAGS = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | (fsc.O_NOFOLLOW ?? 0);
const DELETE_CONCURRENCY = 16;
/** `getWithInfo` reads a blob up to this size in one read instead of streaming it. */
const WHOLE_READ_BYTES = 256 * 1024;
/** Attempts at giving a new blob file a (size, mtime) no other version of its key has. */
const _STAMP_ATTEMPTS = 8;

/**
 * A `BlobDB` on a local (or mounted) filesystem.
 *
 * Layout: the blob `a/b/c` is the plain file `<root>/a/b/c`, so an existing
 * tree of files is a valid store. A key cannot be both a blob and a prefix of
 * other keys (`a` and `a/b`): the second put fails with `KeyConflictError`.
 * Names starting with `.blobshift-` are blobshift's own and never listed.
 *
 * Writes: the body goes to `.blobshift-tmp-<random>` in the target
 * directory, its byte count checked against `size` while streaming, then
 * fsync, then `rename` over the target (or, for `overwrite: false`, `link`
 * to the target, which fails with EEXIST when a blob is there: atomic, so
 * `conditionalWrites` is true), then fsync of the directory. A failed or
 * destroyed body removes the temp file; the previous blob stays. Temp files
 * left by a crash are removed when `list` meets them an hour later, or by
 * `cleanupTemp()`.
 *
 * Metadata (content type, HTTP metadata) lives in a JSON sidecar next to the
 * blob, `.blobshift-meta-<hash>-s<size>-m<mtime>.json`, where `<hash>` is 32
 * hex digits of the SHA-256 of the file name (so a 255-byte name still fits)
 * and `<size>`, `<mtime>` are the byte size and the modification time in
 * nanoseconds of the blob file it describes: a version of the blob is its
 * (size, mtime), which a copy of the tree that keeps modification times
 * (`cp -a`, `rsync -a`, a restore) keeps too, so the sidecars stay attached
 * to their blobs there. Every put gives its file a modification time of its
 * own (the time of the write, less a random part of a second) and makes sure
 * no present blob or sidecar of the key has the same (size, mtime), trying
 * another time when one has; the sidecar is created (never replaced), written
 * and fsynced before the rename, so the rename switches bytes and metadata
 * together: `stat` never pairs a blob with another version's metadata, and a
 * failed put leaves the old metadata untouched. A file rewritten in place by
 * something else gets a new mtime and so loses its metadata rather than
 * showing stale values. The previous version's sidecar is removed after the
 * rename; `delete` removes the blob's; a put without metadata writes none.
 * Sidecars of the first format, named by the blob file's inode, are still
 * read where the files were never copied; `cleanupTemp()` renames them to
 * the current format. Sidecars orphaned by a crash or racing writers are
 * removed by `cleanupTemp()`, never one that may describe a present blob.
 * (Extended attributes were the alternative: Node has no API for them,
 * `rsync -a` does not copy them and not every filesystem keeps them.)
 *
 * Safety: keys pass the shared validator, the resolved path must stay under
 * the root, and every directory is resolved with realpath before use, so a
 * symbolic link inside the root that points outside it is refused
 * (`BackendError`); a blob file that is a symlink is opened only when its
 * target is inside the root. `list` does not follow symbolic links.
 *
 * Listing walks the tree with `opendir`, holding only the entries of the
 * directories on the current path (never the whole tree), sorting each
 * directory's entries by byte order of the full key (a
 * directory `a` sorts as `a/`), descending only into directories that can
 * hold keys matching `prefix` and after `startAfter`.
 */
export class FilesystemBlobDB implements BlobDB {
  readonly capabilities: Capabilities = { conditionalWrites: true };
  readonly #root: string;
  readonly #fileMode: number;
  readonly #dirMode: number;
  /** The root's real path, once it exists. */
  #realRoot: string | undefined;

  constructor(options: FilesystemBlobDBOptions) {
    if (typeof options?.root !== 'string' || options.root === '') {
      throw new BlobShiftError('FilesystemBlobDB: root must be a non-empty path');
    }
    this.#root = path.resolve(options.root);
    this.#fileMode = checkMode('fileMode', options.fileMode ?? 0o644);
    this.#dirMode = checkMode('dirMode', options.dirMode ?? 0o755);
  }

  /** The root directory (absolute). */
  get root(): string {
    return this.#root;
  }

  async put(key: string, body: BlobBody, opts: PutOptions = {}): Promise<BlobInfo> {
    validateKey(key);
    if (opts.size !== undefined && !isValidSize(opts.size)) {
      throw new BlobShiftError(`put: size must be a non-negative safe integer, got ${String(opts.size)}`);
    }
    const known = bodyBuffer(body);
    if (known !== undefined && opts.size !== undefined && known.length !== opts.size) {
      throw new SizeMismatchError(key, opts.size, known.length);
    }
    try {
      return await this.#put(key, body, known, opts);
    } catch (err) {
      throw wrap(err, 'put', key);
    }
  }

  async get(key: string): Promise<Readable> {
    validateKey(key);
    try {
      const { handle } = await this.#openBlob(key);
      return handle.createReadStream();
    } catch (err) {
      throw wrap(err, 'get', key);
    }
  }

  async stat(key: string): Promise<BlobInfo> {
    validateKey(key);
    try {
      const { handle, loc, st } = await this.#openBlob(key);
      try {
        return await blobInfo(key, loc, st);
      } finally {
        await handle.close();
      }
    } catch (err) {
      throw wrap(err, 'stat', key);
    }
  }

  /**
   * `stat` and `get` on one open file: the info and the bytes are of the same
   * file. A small blob is read whole in one read (and the file closed) rather
   * than streamed; a file that turns out longer than its stat said is
   * streamed after all.
   */
  async getWithInfo(key: string): Promise<BlobWithInfo> {
    validateKey(key);
    try {
      const { handle, loc, st } = await this.#openBlob(key);
      let info: BlobInfo;
      let whole: Buffer | undefined;
      try {
        info = await blobInfo(key, loc, st);
        if (info.size <= WHOLE_READ_BYTES) {
          // One byte more than the size tells a file that grew since its stat.
          // A read may return fewer bytes than asked (a network mount, a
          // signal): read on to the end.
          const buf = Buffer.allocUnsafe(info.size + 1);
          let filled = 0;
          for (;;) {
            const { bytesRead } = await handle.read(buf, filled, buf.length - filled, filled);
            if (bytesRead === 0) break;
            filled += bytesRead;
            if (filled === buf.length) break;
          }
          // Exactly the stat's size, or else (grown or shrunk meanwhile) a stream, as `get` gives.
          if (filled === info.size) whole = buf.subarray(0, filled);
        }
      } catch (err) {
        await handle.close().catch(() => undefined);
        throw err;
      }
      if (whole === undefined) return { info, body: handle.createReadStream({ start: 0 }) };
      await handle.close();
      return { info, body: Readable.from([whole], { objectMode: false }) };
    } catch (err) {
      throw wrap(err, 'getWithInfo', key);
    }
  }

  /**
   * Rejects `NotSupportedError`: files on disk have no URL of their own. Serve the bytes through
   * the app instead (`BlobStore.getWithInfo` gives the stream with its size
   * and content type).
   */
  async getSignedUrl(key: string, _opts?: SignedUrlOptions): Promise<string> {
    validateKey(key);
    throw new NotSupportedError(
      'getSignedUrl',
      `FilesystemBlobDB cannot sign a URL for ${describeKey(key)}: files on disk have no URL of their own; serve the bytes through the app (BlobStore.getWithInfo gives the stream, its size and content type)`,
    );
  }

  async exists(key: string): Promise<boolean> {
    try {
      await this.size(key);
      return true;
    } catch (err) {
      if (err instanceof BlobNotFoundError) return false;
      throw err;
    }
  }

  async size(key: string): Promise<number> {
    validateKey(key);
    try {
      const { handle, st } = await this.#openBlob(key);
      await handle.close();
      return Number(st.size);
    } catch (err) {
      throw wrap(err, 'size', key);
    }
  }

  async delete(key: string): Promise<boolean> {
    validateKey(key);
    try {
      const loc = await this.#locate(key);
      if (!loc) return false;
      let st: Awaited<ReturnType<typeof lstatBig>>;
      try {
        st = await lstatBig(loc.file);
      } catch (err) {
        if (isMissing(err)) return false;
        throw err;
      }
      if (st.isDirectory()) return false;
      try {
        await unlink(loc.file);
      } catch (err) {
        if (isMissing(err) || isErrnoException(err, 'EISDIR')) return false;
        throw err;
      }
      await removeSidecars(loc.dir, loc.name, st);
      await this.#prune(loc.dir);
      return true;
    } catch (err) {
      throw wrap(err, 'delete', key);
    }
  }

  async bulkDelete(keys: string[]): Promise<BulkDeleteResult> {
    const errors: BulkDeleteResult['errors'] = [];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < keys.length) {
        const key = keys[next++] as string;
        try {
          await this.delete(key);
        } catch (err) {
          errors.push({ key, error: err instanceof Error ? err : new Error(errorMessage(err)) });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(DELETE_CONCURRENCY, keys.length) }, worker));
    return { errors };
  }

  async *list(opts: ListOptions = {}): AsyncIterable<BlobInfo> {
    const prefix = validatePrefix(opts.prefix);
    const startAfter = opts.startAfter;
    if (startAfter !== undefined && typeof startAfter !== 'string') {
      throw new InvalidKeyError(String(startAfter), 'startAfter must be a string');
    }
    const root = await this.#getRoot(false);
    if (root === undefined) return;
    // Start in the deepest directory the prefix names whole: `a/b/c` starts in `a/b/`.
    const cut = prefix.lastIndexOf('/');
    const startRel = cut < 0 ? '' : prefix.slice(0, cut + 1);
    const literal = path.join(root, ...startRel.split('/').filter(Boolean));
    let real: string;
    try {
      real = await realpath(literal);
    } catch (err) {
      if (isMissing(err)) return;
      throw wrap(err, 'list', prefix);
    }
    // A symbolic link on the way: list does not follow links.
    if (real !== literal) return;
    yield* walkTree(real, startRel, prefix, startAfter, Date.now() - STALE_TEMP_MS);
  }

  /**
   * What a preflight asks before a command writes anything: the root, when it
   * exists, can be opened and read (one entry, not a listing of a directory
   * that may hold millions). A root that does not exist yet is fine: the
   * first put creates it.
   */
  async preflight(): Promise<void> {
    try {
      const root = await this.#getRoot(false);
      if (root === undefined) return;
      const dir = await opendir(root);
      try {
        await dir.read();
      } finally {
        await dir.close();
      }
    } catch (err) {
      throw wrap(err, 'preflight', '');
    }
  }

  /**
   * Removes temporary files and orphaned metadata sidecars older than
   * `olderThanMs` (default one hour) in the whole tree, and renames
   * sidecars of the first format (named by inode) that describe their blob
   * to the current format, so that a copy of the tree keeps them. Resolves
   * with how many files it removed and how many sidecars it renamed.
   *
   * A sidecar is an orphan when no blob of its name is there, when the blob
   * has another size, or when the blob has its own sidecar; a sidecar whose
   * blob is there with the same size but another modification time (a copy
   * that did not keep times) is kept: it may be that blob's metadata. A
   * first-format sidecar whose blob has another inode but the size and time
   * it records (a copy of an old tree) is that blob's, and is renamed.
   * Safe while puts run, as long as no put takes longer than `olderThanMs`
   * between two writes.
   */
  async cleanupTemp(opts: { olderThanMs?: number } = {}): Promise<{ removed: number; migrated: number }> {
    const root = await this.#getRoot(false);
    if (root === undefined) return { removed: 0, migrated: 0 };
    const cutoff = Date.now() - (opts.olderThanMs ?? STALE_TEMP_MS);
    try {
      return await cleanupTree(root, cutoff);
    } catch (err) {
      throw wrap(err, 'cleanupTemp', '');
    }
  }

  async close(): Promise<void> {}

  // -------------------------------------------------------------------------
  // put

  async #put(key: string, body: BlobBody, known: Buffer | undefined, opts: PutOptions): Promise<BlobInfo> {
    const overwrite = opts.overwrite ?? true;
    // Cheap early refusal; the link below is what makes overwrite: false atomic.
    if (!overwrite && (await this.exists(key))) throw new BlobExistsError(key);
    const segments = key.split('/');
    const name = segments.pop() as string;
    const temp = await this.#openTemp(key, segments);
    const { dir, tmp } = temp;
    let handle: FileHandle | undefined = temp.handle;
    let sidecar: string | undefined;
    let committed = false;
    try {
      await handle.chmod(this.#fileMode);
      await writeBody(handle, key, body, known, opts.size);
      const target = path.join(dir, name);
      const version = await stampVersion(handle, { key, dir, name, target, opts, fileMode: this.#fileMode });
      sidecar = version.sidecar;
      const { st, meta } = version;
      await handle.close();
      handle = undefined;

      if (overwrite) {
        const previous = await lstatBig(target).catch((err: unknown) => {
          if (isMissing(err)) return undefined;
          throw err;
        });
        await this.#retryOnEmptyDir(key, target, () => rename(tmp, target));
        committed = true;
        if (previous?.isFile() && previous.ino !== st.ino) await removeSidecars(dir, name, previous, st);
      } else {
        try {
          await this.#retryOnEmptyDir(key, target, () => link(tmp, target));
        } catch (err) {
          if (isErrnoException(err, 'EEXIST')) throw new BlobExistsError(key, { cause: err });
          throw err;
        }
        committed = true;
        await unlinkQuiet(tmp);
      }
      await syncDir(dir);
      const out: BlobInfo = { key, size: Number(st.size), lastModified: new Date(Number(st.mtimeMs)) };
      if (meta?.contentType !== undefined) out.contentType = meta.contentType;
      if (meta?.httpMeta !== undefined) out.httpMeta = meta.httpMeta;
      return out;
    } catch (err) {
      if (handle !== undefined) await handle.close().catch(() => undefined);
      if (!committed) {
        await unlinkQuiet(tmp);
        if (sidecar !== undefined) await unlinkQuiet(sidecar);
        await this.#prune(dir);
      }
      throw err;
    }
  }

  /**
   * Creates a new temp file in the directory of `key` (created as needed),
   * exclusively, with the blob file mode. A directory a concurrent delete
   * pruned is created again; a file where a directory should be is a
   * `KeyConflictError`.
   */
  async #openTemp(
    key: string,
    segments: string[],
  ): Promise<{ dir: string; tmp: string; handle: FileHandle }> {
    let dir = await this.#ensureDir(key, segments);
    for (let attempt = 0; ; attempt++) {
      const tmp = path.join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
      try {
        return { dir, tmp, handle: await open(tmp, TEMP_FLAGS, this.#fileMode) };
      } catch (err) {
        // A concurrent delete pruned the (then empty) directory: create it again.
        if (isErrnoException(err, 'ENOENT') && attempt < 5) {
          dir = await this.#ensureDir(key, segments);
          continue;
        }
        if (isErrnoException(err, 'ENOTDIR')) throw await this.#conflictAbove(key, segments, err);
        throw err;
      }
    }
  }

  /**
   * Runs a rename or link onto `target`. When `target` is a directory: an
   * empty one (a leftover) is removed and the operation retried; one holding
   * keys is a `KeyConflictError`.
   */
  async #retryOnEmptyDir(key: string, target: string, op: () => Promise<void>): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await op();
        return;
      } catch (err) {
        const maybeDir = ['EISDIR', 'EEXIST', 'ENOTEMPTY', 'EPERM'].some((c) => isErrnoException(err, c));
        if (!maybeDir) throw err;
        const st = await lstatBig(target).catch(() => undefined);
        if (!st?.isDirectory()) throw err;
        if (attempt === 0) {
          try {
            await rmdir(target);
            continue;
          } catch {
            // Not empty: a real conflict.
          }
        }
        const below = await firstEntry(target);
        throw new KeyConflictError(
          key,
          below === undefined ? `${key}/` : `${key}/${below}`,
          `other keys are stored under "${key}/", so it cannot also be a blob (the filesystem backend cannot hold both "a" and "a/b")`,
          { cause: err },
        );
      }
    }
  }

  /**
   * The real path of the directory for `segments` (the key's parents),
   * created with `dirMode` where missing. Every existing level is resolved
   * and checked to be under the root before anything is created in it.
   */
  async #ensureDir(key: string, segments: string[]): Promise<string> {
    const root = (await this.#getRoot(true)) as string;
    if (segments.length === 0) return root;
    const literal = path.join(root, ...segments);
    try {
      return this.#checkUnder(key, await realpath(literal));
    } catch (err) {
      if (isErrnoException(err, 'ENOTDIR')) throw await this.#conflictAbove(key, segments, err);
      if (!isErrnoException(err, 'ENOENT')) throw err;
    }
    const parent = await this.#ensureDir(key, segments.slice(0, -1));
    const dir = path.join(parent, segments[segments.length - 1] as string);
    try {
      await mkdir(dir, { mode: this.#dirMode });
      await setMode(dir, this.#dirMode);
    } catch (err) {
      if (isErrnoException(err, 'ENOTDIR')) throw await this.#conflictAbove(key, segments, err);
      if (!isErrnoException(err, 'EEXIST')) throw err;
    }
    const real = this.#checkUnder(key, await realpath(dir));
    const st = await lstatBig(real);
    if (!st.isDirectory()) throw await this.#conflictAbove(key, segments, undefined);
    return real;
  }

  /** The KeyConflictError for a put below a blob (`a/b` when `a` is a file). */
  async #conflictAbove(key: string, segments: string[], cause: unknown): Promise<Error> {
    const root = (await this.#getRoot(false)) as string;
    for (let i = 1; i <= segments.length; i++) {
      const anc = segments.slice(0, i).join('/');
      const st = await lstatBig(path.join(root, ...segments.slice(0, i))).catch(() => undefined);
      if (st === undefined) break;
      if (st.isDirectory() || st.isSymbolicLink()) continue;
      return new KeyConflictError(
        key,
        anc,
        `"${anc}" is a blob, so no key can be stored under "${anc}/" (the filesystem backend cannot hold both "a" and "a/b")`,
        cause === undefined ? undefined : { cause },
      );
    }
    return cause instanceof Error
      ? cause
      : new BackendError(`put ${describeKey(key)}: a parent is not a directory`, { key });
  }

  // -------------------------------------------------------------------------
  // reading

  /** Opens the blob under `key`: BlobNotFoundError unless it is a regular file. */
  /** Opens the blob file (never a directory, never outside the root) with its stat. */
  async #openBlob(key: string): Promise<{ handle: FileHandle; loc: Location; st: BigIntStats }> {
    const loc = await this.#locate(key);
    if (!loc) throw new BlobNotFoundError(key, { where: this.#root });
    let handle: FileHandle;
    try {
      handle = await open(loc.file, READ_FLAGS);
    } catch (err) {
      if (isMissing(err)) throw new BlobNotFoundError(key, { cause: err, where: this.#root });
      if (!isErrnoException(err, 'ELOOP') && !isErrnoException(err, 'EMLINK')) throw err;
      // The blob file is a symbolic link: follow it only to a target inside the root.
      let target: string;
      try {
        target = await realpath(loc.file);
      } catch (err2) {
        if (isMissing(err2)) throw new BlobNotFoundError(key, { cause: err2, where: this.#root });
        throw err2;
      }
      this.#checkUnder(key, target);
      try {
        handle = await open(target, READ_FLAGS);
      } catch (err2) {
        if (isMissing(err2)) throw new BlobNotFoundError(key, { cause: err2, where: this.#root });
        throw err2;
      }
    }
    let st: BigIntStats;
    try {
      st = await handle.stat({ bigint: true });
      if (!st.isFile()) throw new BlobNotFoundError(key, { where: this.#root });
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw err;
    }
    return { handle, loc, st };
  }

  /**
   * The key's real directory and file path, or undefined when its directory
   * does not exist. Refuses a directory that resolves outside the root.
   */
  async #locate(key: string): Promise<Location | undefined> {
    const root = await this.#getRoot(false);
    if (root === undefined) return undefined;
    const segments = key.split('/');
    const name = segments.pop() as string;
    // A key at the top level lives in the root itself, whose real path is known.
    let dir = root;
    if (segments.length > 0) {
      try {
        dir = await realpath(path.join(root, ...segments));
      } catch (err) {
        if (isMissing(err)) return undefined;
        throw err;
      }
    }
    this.#checkUnder(key, dir);
    const file = path.join(dir, name);
    this.#checkUnder(key, file);
    return { dir, name, file };
  }

  /** The root's real path; with `create`, makes the root first when missing. */
  async #getRoot(create: boolean): Promise<string | undefined> {
    if (this.#realRoot !== undefined) return this.#realRoot;
    try {
      this.#realRoot = await realpath(this.#root);
    } catch (err) {
      if (!isMissing(err)) throw err;
      if (!create) return undefined;
      const first = await mkdir(this.#root, { recursive: true, mode: this.#dirMode });
      if (first !== undefined) {
        // Every level mkdir created, from the first down to the root.
        for (let d = this.#root; ; d = path.dirname(d)) {
          await setMode(d, this.#dirMode);
          if (d === first || path.dirname(d) === d) break;
        }
      }
      this.#realRoot = await realpath(this.#root);
    }
    return this.#realRoot;
  }

  /** Throws unless `real` is the root or inside it. */
  #checkUnder(key: string, real: string): string {
    const root = this.#realRoot as string;
    if (real === root || real.startsWith(root.endsWith(path.sep) ? root : root + path.sep)) return real;
    throw new BackendError(
      `refused ${describeKey(key)}: its path resolves outside the root ${this.#root} (a symbolic link points out of it)`,
      { key },
    );
  }

  /** Removes `dir` and its parents while they are empty, up to (not including) the root. */
  async #prune(dir: string): Promise<void> {
    const root = this.#realRoot;
    if (root === undefined) return;
    for (let d = dir; d !== root && d.startsWith(root + path.sep); d = path.dirname(d)) {
      try {
        await rmdir(d);
      } catch {
        return;
      }
    }
  }

  // -------------------------------------------------------------------------
  // listing

  /**
   * Yields the blobs under the directory `abs` (key prefix `rel`, '' or
   * ending in '/') in byte order, filtered by `prefix` and `startAfter`.
   * Stale temp files met on the way are removed.
   */
}
