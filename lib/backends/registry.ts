/**
 * Every backend blobshift can build from a config file, one entry each:
 * its `type`, its config section's `schema`, and how to `create`,
 * `describe` and compare (`sameLocation`) it. The config loader knows
 * backends only through this list; so does anything else that needs to.
 *
 * Adding a backend (say Azure Blob):
 *
 * 1. `lib/backends/azure/index.ts`: `class AzureBlobDB implements BlobDB`
 *    (run the conformance suite against it: `describeBlobDB(...)`), its
 *    error mapping, and `registerErrorKnowledge('azure', …)` for the names
 *    the engine should retry or treat as lost infrastructure.
 * 2. `lib/backends/azure/config.ts`: `export const azureEntry: BackendEntry<AzureBackendConfig>`
 *    with a strict zod schema (`type: z.literal('azure')`), `normalize`,
 *    `create` (loading `./index.js` and its SDK only then), `describe`,
 *    `sameLocation`.
 * 3. One line here: `azure: azureEntry,`.
 */
import { z } from 'zod';
import { registerErrorKnowledge } from '../contract/error-knowledge.js';
import type { BlobDB } from '../contract/types.js';
import type { BackendEntry, CreateContext, NormalizeContext } from './entry.js';
import { fsEntry } from './fs/config.js';
import { memoryEntry } from './memory/config.js';
import { s3Entry } from './s3/config.js';

export type { BackendEntry, CreateContext, NormalizeContext } from './entry.js';
export type { FsBackendConfig } from './fs/config.js';
export type { MemoryBackendConfig } from './memory/config.js';
export type { S3BackendConfig } from './s3/config.js';

/** The backends, by config `type`, in the order messages list them. */
export const BACKENDS = {
  fs: fsEntry,
  s3: s3Entry,
  memory: memoryEntry,
} as const;

type Entries = typeof BACKENDS;
type ConfigOf<E> = E extends BackendEntry<infer C> ? C : never;

/** A backend's config, any type. */
export type BackendConfig = { [T in keyof Entries]: ConfigOf<Entries[T]> }[keyof Entries];

/** The backend types, in the order messages list them. */
export const BACKEND_TYPES: readonly string[] = Object.keys(BACKENDS);

for (const entry of Object.values(BACKENDS) as BackendEntry[]) {
  if (entry.errors) registerErrorKnowledge(entry.type, entry.errors);
}

/** The entry for `type`; undefined for a type no backend has. */
export function backendEntry(type: string): BackendEntry | undefined {
  return Object.hasOwn(BACKENDS, type) ? (BACKENDS[type as keyof Entries] as BackendEntry) : undefined;
}

function entryOf(cfg: { type: string }): BackendEntry<{ type: string }> {
  const entry = backendEntry(cfg.type);
  if (entry === undefined) throw new TypeError(`no backend of type ${JSON.stringify(cfg.type)}`);
  return entry;
}

/** One config section of any backend type: zod's discriminated union over every entry's schema. */
export const backendSchema = z.discriminatedUnion(
  'type',
  Object.values(BACKENDS).map((e) => e.schema) as unknown as [
    z.ZodObject<{ type: z.ZodLiteral<string> }>,
    ...z.ZodObject<{ type: z.ZodLiteral<string> }>[],
  ],
);

/** A parsed section as its backend's config (see `BackendEntry.normalize`). */
export function normalizeBackend(parsed: { type: string }, ctx: NormalizeContext): BackendConfig {
  return entryOf(parsed).normalize(parsed, ctx) as BackendConfig;
}

/** Builds the backend a config describes. */
export function createBackend(cfg: BackendConfig, ctx?: CreateContext): Promise<BlobDB> {
  return entryOf(cfg).create(cfg, ctx);
}

/** A short, secret-free description for messages: `fs:/srv/blobs`, `s3://bucket/prefix at http://host:9000`. */
export function describeBackend(cfg: BackendConfig): string {
  return entryOf(cfg).describe(cfg);
}

/**
 * True when two backends could hold the same blobs: the same or nested
 * filesystem roots (symlinks resolved where the paths exist), or the same
 * endpoint and bucket with overlapping prefixes. Backends of two types are
 * two places. Copying between them, or cleaning one after the other, would
 * destroy data.
 */
export function sameLocation(a: BackendConfig, b: BackendConfig): boolean {
  return a.type === b.type && entryOf(a).sameLocation(a, b);
}
