/**
 * What every topic of the conformance suite shares: the options, and the
 * hooks that give each test a fresh instance and a namespace of its own.
 */
import { expect } from 'chai';
import type { BlobDB, ListOptions } from '../../lib/contract/types.js';
import { uniqueName } from '../support/env.js';
import { byteSorted, listKeys } from './helpers.js';

/** Called once per test; returns a fresh instance (the suite closes it after the test). */
export type BlobDBFactory = () => Promise<BlobDB> | BlobDB;

export interface ConformanceOptions {
  /**
   * `list` returns keys in ascending UTF-8 byte order. Default true. When
   * false the suite compares listings as sets, and the pagination test uses
   * flat keys only.
   */
  orderedListing?: boolean;
  /**
   * Whether `put(…, { overwrite: false })` is atomic, so that racing writers
   * have exactly one winner. Default: the instance's
   * `capabilities.conditionalWrites`. When false the suite still tests the
   * check-then-write semantics (a present key is refused, content is whole).
   */
  conditionalWrites?: boolean;
  /**
   * The backend cannot hold both `a` and `a/b` (the filesystem). Default
   * false. When true the suite avoids such pairs and expects
   * `KeyConflictError` for them; when false it expects both to coexist.
   */
  keyConflicts?: boolean;
  /** Shrink the big cases (a 6 MiB stream instead of 20 MiB, fewer racers) for slow servers. */
  slow?: boolean;
  /** Every key the suite writes starts with this (for a shared bucket). */
  keyPrefix?: string;
  /**
   * The longest key, in bytes, the backend stores. Default 1024. An S3BlobDB
   * with its own `prefix` has 1024 minus that prefix.
   */
  maxKeyBytes?: number;
  /**
   * The longest key segment, in bytes, the backend stores. Default 255 (the
   * key rules' limit). A store that keeps each segment as a file name plus a
   * suffix of its own has less.
   */
  maxSegmentBytes?: number;
}

/** The running test's instance and namespace, helpers on them, and the options with their defaults. */
export interface Conformance {
  /** The instance of the running test. */
  bdb(): BlobDB;
  /** The running test's namespace: `keyPrefix` + a unique segment + `/`. */
  ns(): string;
  /** A key inside this test's namespace. */
  k(rel: string): string;
  /** Keys relative to the namespace, checking they are all inside it. */
  rel(keys: string[]): string[];
  /** The keys listed in the namespace, relative to it. */
  listRel(opts?: ListOptions): Promise<string[]>;
  /** Whether `overwrite: false` is atomic (the option, else the instance's capability). */
  atomic(): boolean;
  /** Checks a listing: in order for ordered backends, as a set otherwise. */
  expectListed(actual: string[], expected: string[], what: string): void;
  readonly ordered: boolean;
  readonly keyConflicts: boolean;
  readonly slow: boolean;
  readonly maxKeyBytes: number;
  readonly maxSegmentBytes: number;
}

/**
 * Registers, in the calling describe block, the hooks that open a fresh
 * instance and a fresh namespace before each test and close the instance
 * after it; returns the helpers the tests use.
 */
export function useBlobDB(factory: BlobDBFactory, options: ConformanceOptions = {}): Conformance {
  const ordered = options.orderedListing ?? true;
  let db: BlobDB | undefined;
  let ns = '';

  beforeEach(async () => {
    ns = `${options.keyPrefix ?? ''}${uniqueName('c')}/`;
    db = await factory();
  });

  afterEach(async () => {
    const d = db;
    db = undefined;
    await d?.close();
  });

  const bdb = (): BlobDB => {
    if (!db) throw new Error('no BlobDB instance: the factory did not run');
    return db;
  };
  const rel = (keys: string[]): string[] =>
    keys.map((key) => {
      expect(key.startsWith(ns), `listed key ${JSON.stringify(key)} outside the test namespace`).to.equal(
        true,
      );
      return key.slice(ns.length);
    });
  return {
    bdb,
    ns: () => ns,
    k: (key: string): string => ns + key,
    rel,
    listRel: async (opts: ListOptions = {}): Promise<string[]> =>
      rel(await listKeys(bdb(), { prefix: ns, ...opts })),
    atomic: (): boolean => options.conditionalWrites ?? bdb().capabilities.conditionalWrites,
    expectListed: (actual: string[], expected: string[], what: string): void => {
      if (ordered) {
        expect(actual, what).to.deep.equal(expected);
      } else {
        expect(new Set(actual).size, `${what}: duplicates`).to.equal(actual.length);
        expect(byteSorted(actual), what).to.deep.equal(byteSorted(expected));
      }
    },
    ordered,
    keyConflicts: options.keyConflicts ?? false,
    slow: options.slow ?? false,
    maxKeyBytes: options.maxKeyBytes ?? 1024,
    maxSegmentBytes: options.maxSegmentBytes ?? 255,
  };
}
