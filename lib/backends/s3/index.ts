/**
 * `S3BlobDB`: blobs in an S3 bucket (AWS S3 or an S3-compatible server such
 * as Ceph RGW, MinIO or s3rver), optionally under a key prefix.
 *
 * - Puts: in-memory bodies and streams of a known `size` up to
 *   `multipartThreshold` go through one PutObject with `Content-Length`
 *   (small streams read whole first); larger bodies through a multipart
 *   upload in bounded memory (`queueSize + 1` part buffers allocated once),
 *   as do streams of unknown length longer than one part. A streamed byte
 *   count that differs from `size` fails the request before the object
 *   becomes visible (the PutObject is aborted short of its `Content-Length`;
 *   the multipart upload is aborted), and a multipart result is confirmed
 *   with a HEAD.
 * - `overwrite: false` sends `If-None-Match: *` where a probe (made once per
 *   endpoint and bucket) showed the server honours it; elsewhere it checks,
 *   then writes, and `capabilities.conditionalWrites` says false. Where
 *   PutObject honours it but CompleteMultipartUpload does not (Ceph RGW
 *   before Squid), a body of known size goes as one streamed PutObject.
 * - `copyFrom` copies server-side on one endpoint wherever that keeps
 *   no-overwrite as well as a put does, and streams elsewhere.
 * - `list` pages ListObjectsV2 (asking for the next page while the caller
 *   takes this one) and checks each page is in byte order and continues
 *   after the previous one: a misordered paged listing is an error (it would
 *   skip keys); one that fits a single page is sorted.
 * - Retries are the SDK's (`retryMode: 'adaptive'`); a consumed stream is
 *   never re-sent by hand (an in-memory body is re-sent after a 409
 *   ConditionalRequestConflict).
 * - The AWS SDK loads on the first request (`sdk.ts`), not with this module.
 *
 * The class holds the state and delegates each job to its file: `client.ts`
 * (the client), `errors.ts` (S3's errors), `capabilities.ts` (probes),
 * `put.ts` and `multipart.ts` (puts, the one multipart lifecycle), `copy.ts`
 * (server-side copies), `list.ts` (listing), `lean.ts` (the lean request path).
 */
import type { Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import { bodyBuffer, isValidSize } from '../../contract/body.js';
import {
  BackendError,
  BlobExistsError,
  BlobNotFoundError,
  ConfigError,
  describeKey,
  errorMessage,
  InvalidFieldError,
  InvalidKeyError,
  SizeMismatchError,
} from '../../contract/errors.js';
import { validateKey, validatePrefix } from '../../contract/keys.js';
import { redactString } from '../../contract/redact.js';
import type {
  BlobBody,
  BlobDB,
  BlobInfo,
  BlobWithInfo,
  BulkDeleteResult,
  CannedAcl,
  CopyFromOptions,
  ListOptions,
  PutOptions,
  SignedUrlOptions,
} from '../../contract/types.js';
import {
  type ConditionalSupport,
  conditionalCompleteSupport,
  conditionalCopySupport,
  conditionalPutSupport,
  NO_CONDITIONALS,
  probeKey,
  type S3Capabilities,
} from './capabilities.js';
import {
  awsEndpoint,
  buildS3Client,
  displayEndpoint,
  identityOf,
  knownIdentity,
  type S3ClientConfigLike,
  type S3ClientOptions,
} from './client.js';
import {
  DEFAULT_MULTIPART_THRESHOLD,
  DEFAULT_PART_SIZE,
  DEFAULT_QUEUE_SIZE,
  DELETE_BATCH,
  MAX_COPY_OBJECT_BYTES,
  MAX_PUT_OBJECT_BYTES,
  MAX_S3_KEY_BYTES,
  MIN_PART_SIZE,
  objectInfo,
  putParams,
  type S3Context,
  type S3Io,
  SMALL_BODY_BYTES,
  stripQuotes,
} from './common.js';
import { type CopyTarget, copyMultipart, copyObject, streamFrom } from './copy.js';
import { describeS3Error, isS3NotFoundError, refusesAcl } from './errors.js';
import { type LeanObjectOutput, LeanS3 } from './lean.js';
import { listObjects } from './list.js';
import { putBuffer, putParts, putStream, readExactly } from './put.js';
import { loadSdk, sdkNow } from './sdk.js';

export type { ConditionalSupport, S3Capabilities } from './capabilities.js';
export {
  createS3Client,
  DEFAULT_CONNECTION_TIMEOUT_MS,
  DEFAULT_MAX_SOCKETS,
  DEFAULT_REQUEST_TIMEOUT_MS,
  type S3ClientConfigLike,
  type S3ClientOptions,
} from './client.js';
export {
  DEFAULT_MULTIPART_THRESHOLD,
  DEFAULT_PART_SIZE,
  DEFAULT_QUEUE_SIZE,
  SMALL_BODY_BYTES,
} from './common.js';
export { isS3NotFoundError } from './errors.js';

/** `getSignedUrl`'s default lifetime: 15 minutes. */
export const DEFAULT_SIGNED_URL_SECONDS = 900;
/** The longest a SigV4 presigned URL may live: seven days. */
export const MAX_SIGNED_URL_SECONDS = 604_800;

export interface S3BlobDBOptions {
  bucket: string;
  /** Keys are stored under `prefix/` (a trailing `/` is added when missing). */
  prefix?: string;
  /** A ready client; the caller keeps ownership (`close()` leaves it alone). Excludes `clientConfig`. */
  client?: S3Client;
  /** Settings for a client this instance builds and owns. */
  clientConfig?: S3ClientConfigLike;
  /** Used only when this instance builds its client. */
  maxSockets?: number;
  connectionTimeoutMs?: number;
  requestTimeoutMs?: number;
  /** Multipart part size in bytes (at least 5 MiB). Default 8 MiB. */
  partSize?: number;
  /** Parts in flight per multipart upload. Default 4; memory per upload ≈ queueSize × partSize. */
  queueSize?: number;
  /**
   * Bodies of a known size up to this many bytes go through one PutObject;
   * larger ones and streams of unknown length through a multipart upload.
   * Default 16 MiB.
   */
  multipartThreshold?: number;
  /**
   * A canned ACL for every object this backend writes (PutObject, multipart
   * upload, server-side copy), e.g. `public-read` for media served straight
   * from the bucket. A put's `httpMeta.acl` takes precedence. Default none:
   * the bucket's default (private). A bucket with ACLs disabled (Object
   * Ownership "bucket owner enforced") refuses any ACL but
   * `bucket-owner-full-control`: grant public reads with a bucket policy there.
   */
  acl?: CannedAcl;
  /**
   * Default false. True: `stat` and `getWithInfo` also ask for the object's
   * ACL (GetObjectAcl, one more request per blob) and report a public one as
   * `httpMeta.acl` (`public-read`, `public-read-write`, `authenticated-read`),
   * so copies out of this backend carry it. Set it on the source of a
   * migration whose objects are individually public.
   */
  readAcl?: boolean;
  /**
   * How PutObject of in-memory bodies (up to 2 MiB), HeadObject, GetObject
   * and DeleteObject are sent. `'lean'` (the default for a client this
   * instance builds): signed by the client's own SigV4 signer and sent
   * through its HTTP handler without the SDK's middleware stack, with the
   * same endpoint, credentials, retries, clock-skew correction, region
   * redirects and errors (see `s3-lean.ts`). `'sdk'`: every request through
   * the SDK. A client passed in always goes through the SDK (its middleware
   * is the caller's).
   */
  requestPath?: 'lean' | 'sdk';
}

/** The canned ACLs S3 accepts in `x-amz-acl` (the config's `acl` takes these). */
export const CANNED_ACLS = [
  'private',
  'public-read',
  'public-read-write',
  'authenticated-read',
  'aws-exec-read',
  'bucket-owner-read',
  'bucket-owner-full-control',
] as const satisfies readonly CannedAcl[];
const ALL_USERS = 'http://acs.amazonaws.com/groups/global/AllUsers';
const AUTHENTICATED_USERS = 'http://acs.amazonaws.com/groups/global/AuthenticatedUsers';

/** The canned ACL an object's grants amount to, where they open it beyond its owner; `undefined` for a private one. */
function cannedFromGrants(
  grants: readonly { Grantee?: { URI?: string | undefined } | undefined; Permission?: string | undefined }[],
): CannedAcl | undefined {
  const has = (uri: string, permission: string) =>
    grants.some(
      (g) => g.Grantee?.URI === uri && (g.Permission === permission || g.Permission === 'FULL_CONTROL'),
    );
  if (has(ALL_USERS, 'READ')) return has(ALL_USERS, 'WRITE') ? 'public-read-write' : 'public-read';
  if (has(AUTHENTICATED_USERS, 'READ')) return 'authenticated-read';
  return undefined;
}

export class S3BlobDB implements BlobDB {
  readonly #bucket: string;
  readonly #prefix: string;
  /** The client: given, or built on first use from `#clientOptions`. */
  #client: S3Client | undefined;
  readonly #clientOptions: S3ClientOptions;
  readonly #ownsClient: boolean;
  #io: S3Io | undefined;
  readonly #partSize: number;
  readonly #queueSize: number;
  readonly #threshold: number;
  readonly #acl: CannedAcl | undefined;
  readonly #readAcl: boolean;
  #endpoint: string;
  #accessKeyId: string | undefined;
  #resolving: Promise<void> | undefined;
  #conditional: ConditionalSupport | undefined;
  #copyProbed = false;
  #multipartProbed = false;
  #closed = false;
  /** The lean request path: a promise until resolved, then the path or null (not usable here). */
  #lean: Promise<LeanS3 | undefined> | LeanS3 | null | undefined;
  readonly #ctx: S3Context;
  readonly capabilities: S3Capabilities;

  constructor(options: S3BlobDBOptions) {
    if (typeof options?.bucket !== 'string' || options.bucket === '') {
      throw new ConfigError('bucket', 'an S3 backend needs a bucket name');
    }
    if (options.client && options.clientConfig) {
      throw new ConfigError('clientConfig', 'give either a ready client or clientConfig, not both');
    }
    this.#bucket = options.bucket;
    this.#prefix = checkedPrefix(options.prefix ?? '');
    this.#partSize = options.partSize ?? DEFAULT_PART_SIZE;
    this.#queueSize = options.queueSize ?? DEFAULT_QUEUE_SIZE;
    this.#threshold = options.multipartThreshold ?? DEFAULT_MULTIPART_THRESHOLD;
    checkSizes(this.#partSize, this.#queueSize, this.#threshold);
    if (options.acl !== undefined && !CANNED_ACLS.includes(options.acl)) {
      throw new ConfigError(
        'acl',
        `${JSON.stringify(options.acl)} is not a canned ACL (one of ${CANNED_ACLS.join(', ')})`,
      );
    }
    this.#acl = options.acl;
    this.#readAcl = options.readAcl === true;
    const config: S3ClientOptions = { ...options.clientConfig };
    if (options.maxSockets !== undefined) config.maxSockets = options.maxSockets;
    if (options.connectionTimeoutMs !== undefined) config.connectionTimeoutMs = options.connectionTimeoutMs;
    if (options.requestTimeoutMs !== undefined) config.requestTimeoutMs = options.requestTimeoutMs;
    this.#clientOptions = config;
    this.#client = options.client;
    this.#ownsClient = options.client === undefined;
    if (!this.#ownsClient || options.requestPath === 'sdk') this.#lean = null;
    const known = options.client ? knownIdentity(options.client) : identityOf(config);
    this.#endpoint = known?.endpoint ?? awsEndpoint(process.env.AWS_REGION);
    this.#accessKeyId = known?.accessKeyId;
    // A client built elsewhere names its endpoint through an async provider.
    if (!known) this.#resolving = this.#resolveEndpoint();
    this.#ctx = this.#context();

    const self = this;
    this.capabilities = {
      /** False until `probeCapabilities()` has shown the server honours `If-None-Match: *` on PutObject. */
      get conditionalWrites(): boolean {
        return self.#conditional?.put ?? false;
      },
      get conditional(): ConditionalSupport {
        return { ...(self.#conditional ?? NO_CONDITIONALS) };
      },
      serverSideCopyFrom: (other: BlobDB, opts?: { overwrite?: boolean }): boolean =>
        self.#sameServerAndIdentity(other) && (opts?.overwrite !== false || self.#copyGuard(0) !== undefined),
    };
  }

  /** What the put, copy, list and probe steps see of this instance. */
  #context(): S3Context {
    return {
      bucket: this.#bucket,
      prefix: this.#prefix,
      partSize: this.#partSize,
      queueSize: this.#queueSize,
      acl: this.#acl,
      io: () => this.#ready(),
      lean: async () => this.#leanPath(),
      endpoint: () => this.#endpoint,
      where: () => this.#where(),
      fullKey: (key) => this.#fullKey(key),
      backendError: (op, key, err) => this.#backendError(op, key, err),
    };
  }

  /** The SDK and the client, loaded and built on the first request. */
  async #ready(): Promise<S3Io> {
    if (this.#io !== undefined) return this.#io;
    const sdk = await loadSdk();
    this.#client ??= buildS3Client(sdk, this.#clientOptions);
    this.#io = { sdk, client: this.#client };
    return this.#io;
  }

  /** The bucket name. */
  get bucket(): string {
    return this.#bucket;
  }

  /** The key prefix, `''` or ending in `/`. */
  get prefix(): string {
    return this.#prefix;
  }

  /** The endpoint as `scheme://host[:port]`, for messages and same-place checks. */
  get endpoint(): string {
    return this.#endpoint;
  }

  /**
   * The S3 client in use (owned by this instance unless one was passed in).
   * One this instance builds is built here when asked for before the first
   * request, loading the AWS SDK.
   */
  get client(): S3Client {
    this.#client ??= buildS3Client(sdkNow(), this.#clientOptions);
    return this.#client;
  }

  /**
   * Resolves the endpoint and access key id the client really uses (a client
   * not built by `createS3Client` holds providers). Cached; `endpoint` and
   * `capabilities.serverSideCopyFrom` reflect it afterwards.
   */
  async resolveIdentity(): Promise<{ endpoint: string; accessKeyId: string | undefined }> {
    await this.#resolving;
    const config = (await this.#ready()).client.config as unknown as {
      credentials?: () => Promise<{ accessKeyId?: string }>;
    };
    if (this.#accessKeyId === undefined && typeof config.credentials === 'function') {
      try {
        const identity = await config.credentials();
        if (typeof identity.accessKeyId === 'string') this.#accessKeyId = identity.accessKeyId;
      } catch {
        // No credentials yet: requests will fail and say so.
      }
    }
    return { endpoint: this.#endpoint, accessKeyId: this.#accessKeyId };
  }

  async #resolveEndpoint(): Promise<void> {
    const config = this.#client?.config as unknown as {
      endpoint?: () => Promise<{ protocol: string; hostname: string; port?: number; path?: string }>;
      region?: () => Promise<string>;
    };
    try {
      if (typeof config.endpoint === 'function') {
        const e = await config.endpoint();
        this.#endpoint = displayEndpoint(
          `${e.protocol}//${e.hostname}${e.port ? `:${e.port}` : ''}${e.path ?? ''}`,
        );
      } else if (typeof config.region === 'function') {
        this.#endpoint = awsEndpoint(await config.region());
      }
    } catch {
      // Keep the default; requests will fail and say why.
    }
  }

  #sameServerAndIdentity(other: BlobDB): boolean {
    if (!(other instanceof S3BlobDB)) return false;
    if (other.endpoint !== this.endpoint) return false;
    if (this.#client !== undefined && other.#client === this.#client) return true;
    const mine = this.#accessKeyId;
    return mine !== undefined && mine === other.#accessKeyId;
  }

  /**
   * Finds out whether the server honours `If-None-Match: *` on PutObject:
   * puts a probe object under a reserved key twice with the header (the
   * second must answer 412), then deletes it. With `copyFrom` a backend on the
   * same server, and where PutObject is conditional, it also finds out whether
   * CopyObject is. Whether CompleteMultipartUpload is conditional is asked the
   * first time a conditional upload would need it (`#multipartSupport`). Each
   * probe is made once per endpoint and bucket in this process;
   * `put(…, { overwrite: false })` and `copyFrom` await them. The probe keys
   * are fixed, so a probe a killed process left behind is replaced by the
   * next one.
   */
  async probeCapabilities(opts: { copyFrom?: BlobDB } = {}): Promise<S3Capabilities> {
    // Answered already (every put with overwrite: false asks): no await.
    if (this.#conditional !== undefined && (opts.copyFrom === undefined || this.#copyProbed))
      return this.capabilities;
    const { endpoint } = await this.resolveIdentity();
    const cacheKey = probeKey(endpoint, this.#bucket);
    if (this.#conditional === undefined) this.#conditional = await conditionalPutSupport(this.#ctx, cacheKey);
    const copyFrom = opts.copyFrom;
    if (copyFrom !== undefined && !this.#copyProbed && this.#sameServerAndIdentity(copyFrom)) {
      // Without conditional PutObject a copy checks then copies, as a put does: nothing to ask.
      if (this.#conditional.put) {
        const copy = await conditionalCopySupport(this.#ctx, cacheKey);
        this.#conditional = { ...this.#conditional, copy };
      }
      this.#copyProbed = true;
    }
    return this.capabilities;
  }

  /**
   * Whether CompleteMultipartUpload honours `If-None-Match: *`, asked the
   * first time a conditional put or copy would go multipart (most runs never
   * do): puts a reserved probe object, completes a one-part upload onto it
   * with the header (412 → conditional), deletes it. Once per endpoint and
   * bucket in this process; false where PutObject is not conditional.
   */
  async #multipartSupport(): Promise<boolean> {
    const support = (await this.probeCapabilities()).conditional;
    if (!support.put) return false;
    if (this.#multipartProbed) return support.multipartComplete;
    const { endpoint } = await this.resolveIdentity();
    const multipartComplete = await conditionalCompleteSupport(this.#ctx, probeKey(endpoint, this.#bucket));
    this.#conditional = { ...(this.#conditional ?? NO_CONDITIONALS), multipartComplete };
    this.#multipartProbed = true;
    return multipartComplete;
  }

  /**
   * What a preflight asks before a command writes anything: the bucket exists
   * and these credentials may list it, in one ListObjectsV2 of one key (a
   * server that builds whole pages, like s3rver, answers that fast too).
   */
  async preflight(_opts?: { write: boolean }): Promise<void> {
    this.#checkOpen();
    try {
      const { sdk, client } = await this.#ready();
      await client.send(
        new sdk.s3.ListObjectsV2Command({
          Bucket: this.#bucket,
          MaxKeys: 1,
          ...(this.#prefix !== '' ? { Prefix: this.#prefix } : {}),
        }),
      );
    } catch (err) {
      throw this.#backendError(`ListObjectsV2 (prefix ${JSON.stringify(this.#prefix)})`, undefined, err);
    }
  }

  /** The object key for `key`: validated, prefixed, and within S3's 1024 bytes. */
  #fullKey(key: string): string {
    const full = this.#prefix + validateKey(key);
    const bytes = Buffer.byteLength(full, 'utf8');
    if (bytes > MAX_S3_KEY_BYTES) {
      throw new InvalidKeyError(
        key,
        `under the prefix ${JSON.stringify(this.#prefix)} the S3 object key would be ${bytes} bytes; S3 allows ${MAX_S3_KEY_BYTES}`,
      );
    }
    return full;
  }

  #where(): string {
    return `bucket ${JSON.stringify(this.#bucket)} at ${this.#endpoint}`;
  }

  #backendError(op: string, key: string | undefined, err: unknown): BackendError {
    const what = key === undefined ? '' : ` of ${describeKey(key)}`;
    const hint = refusesAcl(err)
      ? ' (the bucket has ACLs disabled: drop the acl option, or the acl a source read with readAcl gives, and grant public reads with a bucket policy)'
      : '';
    return new BackendError(`S3 ${op}${what} failed in ${this.#where()}: ${describeS3Error(err)}${hint}`, {
      cause: err,
      ...(key === undefined ? {} : { key }),
    });
  }

  #checkOpen(): void {
    if (this.#closed) throw new BackendError(`this S3BlobDB (${this.#where()}) is closed`);
  }

  /** The lean request path, set up on first use; undefined where this client goes through the SDK. */
  #leanPath(): LeanS3 | undefined | Promise<LeanS3 | undefined> {
    const lean = this.#lean;
    if (lean === null) return undefined;
    if (lean !== undefined) return lean;
    const made = this.#ready()
      .then((io) => LeanS3.create(io.client, this.#bucket))
      .then(
        (path) => {
          this.#lean = path ?? null;
          return path;
        },
        () => {
          this.#lean = null;
          return undefined;
        },
      );
    this.#lean = made;
    return made;
  }

  /** Whether requests of this instance take the lean path (resolves it on first call). */
  async usesLeanPath(): Promise<boolean> {
    return (await this.#leanPath()) !== undefined;
  }

  async put(key: string, body: BlobBody, opts: PutOptions = {}): Promise<BlobInfo> {
    const stream = bodyBuffer(body) === undefined ? (body as Readable) : undefined;
    try {
      return await this.#put(key, body, opts);
    } catch (err) {
      // A put that fails owns nothing more: release the caller's stream (and its socket).
      if (stream && !stream.destroyed) stream.destroy();
      throw err;
    }
  }

  async #put(key: string, body: BlobBody, opts: PutOptions): Promise<BlobInfo> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    const expected = opts.size;
    if (expected !== undefined && !isValidSize(expected)) {
      throw new RangeError(
        `put ${describeKey(key)}: size must be a non-negative integer, got ${String(expected)}`,
      );
    }
    const buf = bodyBuffer(body);
    if (buf !== undefined && expected !== undefined && buf.length !== expected) {
      throw new SizeMismatchError(key, expected, buf.length);
    }
    const length = buf?.length ?? expected;
    const { multipart, conditional } = await this.#route(key, length, opts);
    const params = putParams(this.#ctx, fullKey, opts, conditional);
    if (buf !== undefined) {
      return multipart
        ? putParts(this.#ctx, key, params, buf, buf.length, opts)
        : putBuffer(this.#ctx, key, params, buf, opts);
    }
    const source = body as Readable;
    if (!multipart && length !== undefined && length <= SMALL_BODY_BYTES) {
      return putBuffer(this.#ctx, key, params, await readExactly(key, source, length), opts);
    }
    if (!multipart && length !== undefined) return putStream(this.#ctx, key, params, source, length, opts);
    return putParts(this.#ctx, key, params, source, length, opts);
  }

  /**
   * Where a body of `length` bytes goes (one PutObject, streamed or not, or
   * a multipart upload) and whether it carries `If-None-Match: *`; with
   * `overwrite: false` where the server cannot make it atomic, a present
   * key is refused here (a check, then the write).
   */
  async #route(
    key: string,
    length: number | undefined,
    opts: PutOptions,
  ): Promise<{ multipart: boolean; conditional: boolean }> {
    let multipart = length === undefined || length > this.#threshold;
    let conditional = false;
    if (opts.overwrite === false) {
      const support = (await this.probeCapabilities()).conditional;
      conditional = support.put;
      if (multipart && conditional && !(await this.#multipartSupport())) {
        if (length !== undefined && length <= MAX_PUT_OBJECT_BYTES) {
          // This server ignores If-None-Match on CompleteMultipartUpload: a
          // body of known size goes as one conditional PutObject instead.
          multipart = false;
        } else {
          // Unknown length: a body that fits one part is still a conditional
          // PutObject inside the upload; a longer one is checked, then written.
          if (await this.exists(key)) throw new BlobExistsError(key);
        }
      }
      if (!conditional && (await this.exists(key))) throw new BlobExistsError(key);
    }
    return { multipart, conditional };
  }

  /**
   * How `copyFrom` keeps `overwrite: false` for a copy of `size` bytes:
   * `atomic` where the server honours `If-None-Match: *` on the copy
   * (CopyObject, or CompleteMultipartUpload above 5 GiB); `check` (exists,
   * then copy) where it honours it nowhere, so a put would check then write
   * too and the copy is no less safe; `undefined` where only a put is atomic
   * (Ceph RGW before Squid): then the blob is streamed through `put`.
   * `undefined` too before `probeCapabilities({ copyFrom })` has run.
   */
  #copyGuard(size: number): 'atomic' | 'check' | undefined {
    const support = this.#conditional;
    if (support === undefined) return undefined;
    if (!support.put) return 'check';
    if (size > MAX_COPY_OBJECT_BYTES ? !this.#multipartProbed : !this.#copyProbed) return undefined;
    const atomic = size > MAX_COPY_OBJECT_BYTES ? support.multipartComplete : support.copy;
    return atomic ? 'atomic' : undefined;
  }

  /**
   * Copies `key` from `source` (an S3BlobDB on the same endpoint with the
   * same credentials: `capabilities.serverSideCopyFrom(source)`) without the
   * bytes passing through this process: CopyObject up to 5 GiB,
   * UploadPartCopy parts above. The source is pinned by its ETag
   * (`x-amz-copy-source-if-match`): `opts.sourceEtag` with `opts.size` (what
   * the caller's `stat` said), or a HEAD here that checks `size`.
   * `overwrite: false` is kept as `#copyGuard` says: with `If-None-Match: *`
   * where the probe showed the server honours it on copies, by a check then
   * the copy where the server has no conditional writes at all (as a put
   * does there), and otherwise, like any source this backend cannot copy
   * from, the blob is streamed through `put`, which keeps every rule of a put.
   * A server that answers "no such key" for a source that is there (s3rver
   * decodes some characters of `x-amz-copy-source` wrongly) gets the stream.
   */
  async copyFrom(source: BlobDB, key: string, opts: CopyFromOptions = {}): Promise<BlobInfo> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    if (!(source instanceof S3BlobDB) || !this.#sameServerAndIdentity(source))
      return streamFrom(this, source, key, opts);
    const { sourceEtag, ...putOpts } = opts;
    const noOverwrite = putOpts.overwrite === false;
    if (noOverwrite) await this.probeCapabilities({ copyFrom: source });
    let size = putOpts.size;
    let etag = sourceEtag;
    if (size === undefined || etag === undefined) {
      const head = await source.#head(key);
      if (head === undefined) throw new BlobNotFoundError(key, { where: source.#where() });
      const actual = head.ContentLength ?? 0;
      if (size !== undefined && actual !== size) throw new SizeMismatchError(key, size, actual);
      size = actual;
      etag = stripQuotes(head.ETag);
    }
    if (noOverwrite && size > MAX_COPY_OBJECT_BYTES) await this.#multipartSupport();
    const guard = noOverwrite ? this.#copyGuard(size) : 'none';
    if (guard === undefined) return streamFrom(this, source, key, putOpts);
    if (guard === 'check' && (await this.exists(key))) throw new BlobExistsError(key);
    const target: CopyTarget = {
      ctx: this.#ctx,
      key,
      fullKey,
      size,
      etag,
      opts: putOpts,
      conditional: guard === 'atomic',
      source: { bucket: source.#bucket, fullKey: source.#fullKey(key), where: source.#where() },
      exists: () => this.exists(key),
    };
    try {
      return await (size > MAX_COPY_OBJECT_BYTES ? copyMultipart(target) : copyObject(target));
    } catch (err) {
      if (err instanceof BlobNotFoundError && (await source.exists(key)))
        return streamFrom(this, source, key, putOpts);
      throw err;
    }
  }

  async get(key: string): Promise<Readable> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    try {
      // GetObject resolves after the response headers: a missing key rejects here.
      const out = await this.#getObject(fullKey);
      if (out.Body === undefined) throw new Error('GetObject returned no body');
      return out.Body as Readable;
    } catch (err) {
      if (isS3NotFoundError(err)) throw new BlobNotFoundError(key, { cause: err, where: this.#where() });
      throw this.#backendError('GetObject', key, err);
    }
  }

  /** GetObject through the lean path where it serves GETs, else the SDK. */
  async #getObject(fullKey: string): Promise<LeanObjectOutput & { Body?: unknown }> {
    const lean = await this.#leanPath();
    if (lean?.getsLean) return lean.get(fullKey);
    const { sdk, client } = await this.#ready();
    return client.send(new sdk.s3.GetObjectCommand({ Bucket: this.#bucket, Key: fullKey }));
  }

  async #head(key: string): Promise<LeanObjectOutput | undefined> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    try {
      const lean = await this.#leanPath();
      if (lean) return await lean.headIfPresent(fullKey);
      const { sdk, client } = await this.#ready();
      return await client.send(new sdk.s3.HeadObjectCommand({ Bucket: this.#bucket, Key: fullKey }));
    } catch (err) {
      if (isS3NotFoundError(err)) return undefined;
      throw this.#backendError('HeadObject', key, err);
    }
  }

  async stat(key: string): Promise<BlobInfo> {
    const head = await this.#head(key);
    if (head === undefined) throw new BlobNotFoundError(key, { where: this.#where() });
    return this.#withAcl(objectInfo(key, head, head.ContentLength ?? 0));
  }

  /** With `readAcl`: the object's ACL, as a canned one, into `info.httpMeta.acl`. */
  async #withAcl(info: BlobInfo): Promise<BlobInfo> {
    if (!this.#readAcl) return info;
    let grants: Parameters<typeof cannedFromGrants>[0];
    try {
      const { sdk, client } = await this.#ready();
      const out = await client.send(
        new sdk.s3.GetObjectAclCommand({ Bucket: this.#bucket, Key: this.#fullKey(info.key) }),
      );
      grants = out.Grants ?? [];
    } catch (err) {
      if (isS3NotFoundError(err)) throw new BlobNotFoundError(info.key, { cause: err, where: this.#where() });
      throw this.#backendError('GetObjectAcl', info.key, err);
    }
    const acl = cannedFromGrants(grants);
    if (acl !== undefined) info.httpMeta = { ...info.httpMeta, acl };
    return info;
  }

  /** One GetObject: the response headers are the info, its body the bytes. */
  async getWithInfo(key: string): Promise<BlobWithInfo> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    let out: LeanObjectOutput & { Body?: unknown };
    try {
      out = await this.#getObject(fullKey);
    } catch (err) {
      if (isS3NotFoundError(err)) throw new BlobNotFoundError(key, { cause: err, where: this.#where() });
      throw this.#backendError('GetObject', key, err);
    }
    const body = out.Body as Readable | undefined;
    if (body === undefined) {
      throw this.#backendError('GetObject', key, new Error('the answer has no body'));
    }
    if (out.ContentLength !== undefined) {
      if (!this.#readAcl) return { info: objectInfo(key, out, out.ContentLength), body };
      try {
        return { info: await this.#withAcl(objectInfo(key, out, out.ContentLength)), body };
      } catch (err) {
        body.destroy();
        throw err;
      }
    }
    // No Content-Length (a chunked answer through a proxy): the size comes
    // from a HEAD, which must describe the same version as the body.
    let info: BlobInfo;
    try {
      info = await this.stat(key);
    } catch (err) {
      body.destroy();
      throw err;
    }
    const etag = stripQuotes(out.ETag);
    if (etag !== undefined && info.etag !== undefined && info.etag !== etag) {
      body.destroy();
      throw this.#backendError(
        'GetObject',
        key,
        new Error(
          'the answer has no Content-Length, and a HEAD describes another version: the blob changed while being read; read it again',
        ),
      );
    }
    const result = objectInfo(key, out, info.size);
    // The HEAD's stat asked for the ACL already (with readAcl).
    if (info.httpMeta?.acl !== undefined) result.httpMeta = { ...result.httpMeta, acl: info.httpMeta.acl };
    return { info: result, body };
  }

  async exists(key: string): Promise<boolean> {
    return (await this.#head(key)) !== undefined;
  }

  /**
   * A presigned GetObject URL for `key`, valid `expiresIn` seconds (default
   * 900, at most 604800), signed locally with this client's credentials,
   * endpoint and addressing style: no request is made, so the blob's
   * existence is not checked (a URL for a missing key answers 404). The URL
   * carries the credentials' access key id, never the secret; with temporary
   * credentials it stops working when they expire, whatever `expiresIn` says.
   * `responseContentDisposition` / `responseContentType` make the server
   * answer with those headers. The presigner module loads on the first call.
   */
  async getSignedUrl(key: string, opts: SignedUrlOptions = {}): Promise<string> {
    const fullKey = this.#fullKey(key);
    this.#checkOpen();
    const expiresIn = opts.expiresIn ?? DEFAULT_SIGNED_URL_SECONDS;
    if (!Number.isSafeInteger(expiresIn) || expiresIn < 1 || expiresIn > MAX_SIGNED_URL_SECONDS) {
      throw new InvalidFieldError(
        'expiresIn',
        `getSignedUrl ${describeKey(key)}: expiresIn must be a whole number of seconds from 1 to ${MAX_SIGNED_URL_SECONDS} (seven days), got ${String(opts.expiresIn)}`,
        { key },
      );
    }
    const [{ getSignedUrl }, { sdk, client }] = await Promise.all([
      import('@aws-sdk/s3-request-presigner'),
      this.#ready(),
    ]);
    const command = new sdk.s3.GetObjectCommand({
      Bucket: this.#bucket,
      Key: fullKey,
      ...(opts.responseContentDisposition !== undefined
        ? { ResponseContentDisposition: opts.responseContentDisposition }
        : {}),
      ...(opts.responseContentType !== undefined ? { ResponseContentType: opts.responseContentType } : {}),
    });
    try {
      return await getSignedUrl(client, command, { expiresIn });
    } catch (err) {
      throw this.#backendError('presigning GetObject', key, err);
    }
  }

  async size(key: string): Promise<number> {
    return (await this.stat(key)).size;
  }

  async delete(key: string): Promise<boolean> {
    const fullKey = this.#fullKey(key);
    // S3's DeleteObject does not say whether anything was there: ask first.
    if (!(await this.exists(key))) return false;
    try {
      const lean = await this.#leanPath();
      if (lean) await lean.delete(fullKey);
      else {
        const { sdk, client } = await this.#ready();
        await client.send(new sdk.s3.DeleteObjectCommand({ Bucket: this.#bucket, Key: fullKey }));
      }
      return true;
    } catch (err) {
      if (isS3NotFoundError(err)) return false;
      throw this.#backendError('DeleteObject', key, err);
    }
  }

  async bulkDelete(keys: string[]): Promise<BulkDeleteResult> {
    this.#checkOpen();
    const errors: BulkDeleteResult['errors'] = [];
    const valid = this.#validDistinctKeys(keys, errors);
    for (let i = 0; i < valid.length; i += DELETE_BATCH) {
      await this.#deleteBatch(valid.slice(i, i + DELETE_BATCH), errors);
    }
    return { errors };
  }

  /** The valid keys of a bulk delete, each once, in order; an invalid key is an error of its own. */
  #validDistinctKeys(keys: string[], errors: BulkDeleteResult['errors']): string[] {
    const valid: string[] = [];
    const seen = new Set<string>();
    for (const key of keys) {
      try {
        this.#fullKey(key);
      } catch (err) {
        errors.push({
          key,
          error: err instanceof InvalidKeyError ? err : new InvalidKeyError(String(key), errorMessage(err)),
        });
        continue;
      }
      if (!seen.has(key)) {
        seen.add(key);
        valid.push(key);
      }
    }
    return valid;
  }

  /**
   * One DeleteObjects request: the keys S3 could not delete (a missing key
   * is no error) are errors, and every key of the batch where the request failed.
   */
  async #deleteBatch(batch: string[], errors: BulkDeleteResult['errors']): Promise<void> {
    try {
      const { sdk, client } = await this.#ready();
      const out = await client.send(
        new sdk.s3.DeleteObjectsCommand({
          Bucket: this.#bucket,
          Delete: { Objects: batch.map((key) => ({ Key: this.#prefix + key })), Quiet: true },
        }),
      );
      for (const e of out.Errors ?? []) {
        if (e.Code === 'NoSuchKey') continue;
        errors.push(this.#deleteObjectsError(e));
      }
    } catch (err) {
      for (const key of batch) errors.push({ key, error: this.#backendError('DeleteObjects', key, err) });
    }
  }

  /** The error of one key DeleteObjects reports it could not delete. */
  #deleteObjectsError(e: {
    Key?: string;
    Code?: string;
    Message?: string;
  }): BulkDeleteResult['errors'][number] {
    const key = e.Key?.startsWith(this.#prefix) ? e.Key.slice(this.#prefix.length) : (e.Key ?? '');
    return {
      key,
      error: new BackendError(
        `S3 DeleteObjects could not delete ${describeKey(key)} in ${this.#where()}: ${redactString(
          `${e.Code ?? 'error'}: ${e.Message ?? 'no message'}`,
        )}`,
        { key },
      ),
    };
  }

  /**
   * Pages through ListObjectsV2, 1000 keys a page. The next page is asked for
   * as soon as a page arrives, before its keys are handed out, so the server
   * works on it while the caller handles this one (at most two pages held).
   */
  list(opts: ListOptions = {}): AsyncGenerator<BlobInfo> {
    return listObjects(this.#ctx, opts, () => this.#checkOpen());
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ownsClient) this.#client?.destroy();
  }
}

/** `prefix` ending in `/` (unless empty), checked as a key prefix. */
function checkedPrefix(rawPrefix: string): string {
  const prefix = rawPrefix === '' || rawPrefix.endsWith('/') ? rawPrefix : `${rawPrefix}/`;
  try {
    validatePrefix(prefix);
  } catch (err) {
    throw new ConfigError('prefix', `${JSON.stringify(rawPrefix)} is not a usable key prefix`, {
      cause: err,
    });
  }
  return prefix;
}

/** Refuses a part size, queue size or multipart threshold S3 (or memory) cannot take. */
function checkSizes(partSize: number, queueSize: number, threshold: number): void {
  if (!Number.isSafeInteger(partSize) || partSize < MIN_PART_SIZE) {
    throw new ConfigError('partSize', `must be at least ${MIN_PART_SIZE} bytes (S3's minimum part size)`);
  }
  if (!Number.isSafeInteger(queueSize) || queueSize < 1) {
    throw new ConfigError('queueSize', 'must be a positive integer');
  }
  if (!isValidSize(threshold) || threshold > MAX_PUT_OBJECT_BYTES) {
    throw new ConfigError('multipartThreshold', `must be between 0 and ${MAX_PUT_OBJECT_BYTES} bytes`);
  }
}
