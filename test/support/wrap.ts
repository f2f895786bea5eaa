/**
 * A BlobDB wrapper for tests: counts calls per method and lets a test run a
 * hook before a call (to inject a fault or a concurrent app action). Used for
 * faults a real backend cannot produce on demand; the real backend still does
 * the work.
 */
import type { Readable } from 'node:stream';
import type {
  BlobBody,
  BlobDB,
  BlobInfo,
  BulkDeleteResult,
  ListOptions,
  PutOptions,
} from '../../lib/contract/types.js';

export type Method = 'put' | 'get' | 'stat' | 'exists' | 'size' | 'delete' | 'bulkDelete' | 'list';

export interface Hooks {
  before?(method: Method, key: string | undefined): void | Promise<void>;
  /** Runs after a successful put (still inside the call). */
  afterPut?(key: string): void | Promise<void>;
}

export class WrappedBlobDB implements BlobDB {
  readonly inner: BlobDB;
  readonly calls: Record<Method, number> = {
    put: 0,
    get: 0,
    stat: 0,
    exists: 0,
    size: 0,
    delete: 0,
    bulkDelete: 0,
    list: 0,
  };
  /** Keys put, in order, with repeats. */
  readonly putKeys: string[] = [];
  hooks: Hooks;

  constructor(inner: BlobDB, hooks: Hooks = {}) {
    this.inner = inner;
    this.hooks = hooks;
  }

  get capabilities() {
    return this.inner.capabilities;
  }

  async #before(method: Method, key?: string): Promise<void> {
    this.calls[method]++;
    await this.hooks.before?.(method, key);
  }

  async put(key: string, body: BlobBody, opts?: PutOptions): Promise<BlobInfo> {
    await this.#before('put', key);
    this.putKeys.push(key);
    const info = await this.inner.put(key, body, opts);
    await this.hooks.afterPut?.(key);
    return info;
  }
  async get(key: string): Promise<Readable> {
    await this.#before('get', key);
    return this.inner.get(key);
  }
  async stat(key: string): Promise<BlobInfo> {
    await this.#before('stat', key);
    return this.inner.stat(key);
  }
  async exists(key: string): Promise<boolean> {
    await this.#before('exists', key);
    return this.inner.exists(key);
  }
  async size(key: string): Promise<number> {
    await this.#before('size', key);
    return this.inner.size(key);
  }
  async delete(key: string): Promise<boolean> {
    await this.#before('delete', key);
    return this.inner.delete(key);
  }
  async bulkDelete(keys: string[]): Promise<BulkDeleteResult> {
    await this.#before('bulkDelete');
    return this.inner.bulkDelete(keys);
  }
  async *list(opts?: ListOptions): AsyncIterable<BlobInfo> {
    await this.#before('list');
    yield* this.inner.list(opts);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** An error shaped like a Node.js socket error. */
export function connectionRefused(): Error {
  return Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' });
}

/** An error shaped like an S3 503 SlowDown after the SDK gave up. */
export function slowDown(): Error {
  return Object.assign(new Error('Please reduce your request rate.'), {
    name: 'SlowDown',
    $metadata: { httpStatusCode: 503 },
  });
}
