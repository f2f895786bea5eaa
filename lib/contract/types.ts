/**
 * The blobshift contract. Every backend (filesystem, S3, memory) and
 * `MigratingBlobDB` implement {@link BlobDB}; the migration engine works on
 * this interface alone and imports no backend.
 */
import type { Readable } from 'node:stream';

/** What a blob's bytes can be given as. Strings are written as UTF-8. */
export type BlobBody = Buffer | Uint8Array | string | Readable;

/**
 * HTTP-level metadata carried with a blob. S3 stores it natively; the
 * filesystem backend keeps it in a JSON sidecar next to the blob.
 */
export interface HttpMeta {
  contentEncoding?: string;
  cacheControl?: string;
  contentDisposition?: string;
  contentLanguage?: string;
  /** User metadata (S3 `x-amz-meta-*`). Names are lower-case ASCII. */
  metadata?: Record<string, string>;
  /**
   * A canned ACL for the object. S3 writes it as `x-amz-acl` on the object
   * it stores (put, multipart, server-side copy), before the backend's own
   * `acl` option. An `S3BlobDB` reports it from `stat` / `getWithInfo` only
   * with `readAcl: true` (one more request per blob): `public-read`,
   * `public-read-write` or `authenticated-read` where the object's grants
   * give everyone (or every authenticated user) read, nothing for a private
   * object. The filesystem and memory backends keep it with the rest of the
   * metadata, so it survives a copy through them.
   */
  acl?: CannedAcl;
}

/** The canned ACLs S3 knows. Buckets with ACLs disabled (Object Ownership "bucket owner enforced") refuse all but `bucket-owner-full-control` and `private`. */
export type CannedAcl =
  | 'private'
  | 'public-read'
  | 'public-read-write'
  | 'authenticated-read'
  | 'aws-exec-read'
  | 'bucket-owner-read'
  | 'bucket-owner-full-control';

/** What `getSignedUrl` takes. */
export interface SignedUrlOptions {
  /** Seconds the URL stays valid, 1 to 604800 (seven days, SigV4's limit). Default 900. */
  expiresIn?: number;
  /** The `Content-Disposition` the server answers the URL with (`attachment; filename="a.pdf"`). */
  responseContentDisposition?: string;
  /** The `Content-Type` the server answers the URL with. */
  responseContentType?: string;
}

/** What a backend knows about one stored blob. */
export interface BlobInfo {
  key: string;
  /** Size in bytes. */
  size: number;
  /** An opaque content tag where the backend has one (S3 ETag, quotes removed). */
  etag?: string;
  contentType?: string;
  /** Last modification time where the backend has one. */
  lastModified?: Date;
  httpMeta?: HttpMeta;
}

export interface PutOptions {
  /** MIME type stored with the blob and returned by `stat`. */
  contentType?: string;
  httpMeta?: HttpMeta;
  /**
   * The expected size in bytes. When given, a body whose streamed byte count
   * differs fails the put with `SizeMismatchError` before anything becomes
   * visible under the key.
   */
  size?: number;
  /**
   * Default `true`: replace whatever is stored under the key.
   * `false`: fail with `BlobExistsError` when a blob is already there. This is
   * atomic where `capabilities.conditionalWrites` is true; otherwise the
   * backend checks and then writes, and a concurrent writer can slip in
   * between.
   */
  overwrite?: boolean;
}

/** What `copyFrom` takes: a put's options, and what the caller already knows of the source. */
export interface CopyFromOptions extends PutOptions {
  /**
   * The source's ETag as the caller's `stat` gave it (with `size`): the copy
   * is pinned to that version, and the backend need not ask the source again.
   */
  sourceEtag?: string;
}

export interface ListOptions {
  /** Only keys that start with this string (compared as UTF-8 bytes). */
  prefix?: string;
  /** Only keys strictly greater than this one in byte order. */
  startAfter?: string;
}

export interface Capabilities {
  /** `put(…, { overwrite: false })` is atomic on this backend. */
  conditionalWrites: boolean;
  /**
   * True when `copyFrom(other, key, opts)` copies a blob out of `other`
   * without the bytes passing through this process (S3 CopyObject on one
   * endpoint). With `{ overwrite: false }`: only where the copy keeps that as
   * well as a put would (see `S3BlobDB.copyFrom`); may answer false until
   * `probeCapabilities()` has run.
   */
  serverSideCopyFrom?(other: BlobDB, opts?: { overwrite?: boolean }): boolean;
}

/** A blob's info and a stream of its bytes, from `getWithInfo`. */
export interface BlobWithInfo {
  info: BlobInfo;
  /** The bytes; the caller consumes it or destroys it. */
  body: Readable;
}

export interface BulkDeleteResult {
  /** Keys that could not be deleted. Absent keys are not errors. */
  errors: { key: string; error: Error }[];
}

/**
 * A blob store. Keys are validated by one shared validator (see `keys.ts`);
 * every method rejects an invalid key with `InvalidKeyError` before any I/O.
 */
export interface BlobDB {
  readonly capabilities: Capabilities;

  /**
   * Stores `body` under `key` and resolves with what was stored. Readers never
   * see a partly written blob: the new content appears whole or not at all.
   * A failed or destroyed input stream leaves the previous content (or
   * nothing) in place. Rejects `BlobExistsError` for `overwrite: false` on a
   * present key, `SizeMismatchError` when `size` is given and differs.
   */
  put(key: string, body: BlobBody, opts?: PutOptions): Promise<BlobInfo>;

  /**
   * A stream of the blob's bytes. Rejects `BlobNotFoundError` for a missing
   * key before any stream is handed back; a stream returned has found its blob.
   */
  get(key: string): Promise<Readable>;

  /** Size, content type and HTTP metadata. Rejects `BlobNotFoundError`. */
  stat(key: string): Promise<BlobInfo>;

  /**
   * Optional: `stat` and `get` in one step (one GetObject on S3, one open of
   * the file on disk): what `stat` would say and a stream of the bytes, both of
   * the same version of the blob. Rejects `BlobNotFoundError` before returning.
   * The caller consumes `body` or destroys it. The exported
   * `getWithInfo(db, key)` calls it where a backend has it and falls back to
   * `stat` then `get`.
   */
  getWithInfo?(key: string): Promise<BlobWithInfo>;

  /**
   * Optional: a URL that reads the blob with a plain HTTP GET, without
   * credentials, until it expires (S3: a presigned GetObject, signed locally
   * with the client's credentials: no request, so a URL for a missing key
   * answers 404 when used). `MigratingBlobDB` signs for the new backend when
   * the blob is there (one `exists` first), else for the old one. Backends
   * that cannot (files, memory) reject `NotSupportedError`, whose message says
   * to serve the bytes through the app instead.
   */
  getSignedUrl?(key: string, opts?: SignedUrlOptions): Promise<string>;

  /** Whether a blob is stored under `key`. Never rejects for a missing key. */
  exists(key: string): Promise<boolean>;

  /** The blob's size in bytes. Rejects `BlobNotFoundError`. */
  size(key: string): Promise<number>;

  /**
   * Removes the blob. Resolves `true` if a blob was there, `false` if not;
   * deleting a missing key is not an error (idempotent).
   */
  delete(key: string): Promise<boolean>;

  /**
   * Removes many blobs. Absent keys are fine; keys that could not be deleted
   * are returned with their error rather than thrown. Invalid keys are
   * returned as `InvalidKeyError`s and the others are still deleted.
   */
  bulkDelete(keys: string[]): Promise<BulkDeleteResult>;

  /**
   * Every blob, in ascending UTF-8 byte order of key, pages fetched lazily.
   * Temporary files and other internal objects are never listed.
   */
  list(opts?: ListOptions): AsyncIterable<BlobInfo>;

  /**
   * Optional: copies `key` from `source` into this backend without the bytes
   * passing through this process (S3 CopyObject). Called only where
   * `capabilities.serverSideCopyFrom(source, opts)` is true; honours
   * `overwrite: false` and `size` exactly as `put` does.
   */
  copyFrom?(source: BlobDB, key: string, opts?: CopyFromOptions): Promise<BlobInfo>;

  /**
   * Optional: finds out what the backend can do (S3: whether the server
   * honours conditional writes) and resolves its capabilities; with
   * `copyFrom`, also how copies out of that backend keep no-overwrite (S3:
   * whether CopyObject is conditional). Until it has run, `capabilities` may
   * say less than the backend can. Made once; calling it again is cheap.
   */
  probeCapabilities?(opts?: { copyFrom?: BlobDB }): Promise<Capabilities>;

  /**
   * Optional: the backend's own check, before a command touches anything,
   * that it answers and these credentials may use it (S3: the bucket exists
   * and may be listed, in one one-key ListObjectsV2). Rejects with the
   * backend's error when it does not. `write: true` asks for a check fit for
   * a command that will write (the write probe itself is the engine's).
   * Absent: preflight lists the first key instead.
   */
  preflight?(opts: { write: boolean }): Promise<void>;

  /** Releases sockets, handles and timers. The instance is unusable afterwards. */
  close(): Promise<void>;
}

/** One row of blob metadata, as the application records it. */
export interface BlobMeta {
  /** 64-bit auto-increment id; walks go by id. */
  id: number;
  key: string;
  /** The owning object in the app (a case, a form, a user…). */
  parentId: string;
  /** The blob's kind in the app (`attachment`, `image`…); used by `--types`. */
  type: string;
  name: string;
  contentLength: number;
  contentType: string | null;
  /** Lower-case hex SHA-256 of the bytes, filled by `BlobStore.put`. */
  sha256: string | null;
  createdOn: Date;
  expiresOn: Date | null;
  /**
   * Set (by `MetaStore.walk` and `get`, on an app's own mapped table) when the
   * row cannot be used as it is, saying why in words: `the key is NULL`,
   * `the key is empty`, `the size is NULL`, `the size "0x5" is not a
   * non-negative integer`, a size beyond 2^53. `key` is then `''` for a NULL
   * key and `contentLength` NaN for an unusable size. Absent on usable rows
   * (a key that fails the key validator is not marked: that is judged per row
   * where the key is used).
   */
  invalid?: string;
}
