/**
 * What a backend tells the rest of blobshift about itself: its section of
 * the config file and how to build, describe and compare it. Each backend's
 * folder exports one `BackendEntry`; `registry.ts` lists them.
 */
import type { z } from 'zod';
import type { ErrorKnowledge } from '../contract/error-knowledge.js';
import type { BlobDB } from '../contract/types.js';

/** Where a backend's config section sits, for resolving paths and naming fields in errors. */
export interface NormalizeContext {
  /** The directory relative paths in the config are resolved against. */
  baseDir: string;
  /** The section's place in the config (`old`, `new`): a `ConfigError`'s field is `${path}.<key>`. */
  path: string;
}

/** What building a backend may be told besides its config (nothing yet: room for a logger, a signal). */
export type CreateContext = Record<string, never>;

export interface BackendEntry<C extends { type: string } = { type: string }> {
  /** The config's `type` value, e.g. `fs`, `s3`. */
  readonly type: C['type'];
  /**
   * The config section (zod): a strict object with `type: z.literal(type)`.
   * Messages and field paths of its errors are the config loader's.
   */
  readonly schema: z.ZodType;
  /**
   * The parsed section as the backend's config: relative paths resolved,
   * checks zod cannot make (throw `ConfigError` with field `${ctx.path}.<key>`).
   */
  normalize(parsed: unknown, ctx: NormalizeContext): C;
  /** A backend for this config. May load the backend's module (and its SDK) only now. */
  create(config: C, ctx?: CreateContext): Promise<BlobDB>;
  /** A short, secret-free description for messages: `fs:/srv/blobs`, `s3://bucket/prefix at …`. */
  describe(config: C): string;
  /** True when two configs of this type could hold the same blobs (same or nested places). */
  sameLocation(a: C, b: C): boolean;
  /** What the engine should know of this backend's native errors (also registered when the backend loads). */
  readonly errors?: ErrorKnowledge;
}
