// The public API, for `import` and (Node >= 20.19) `require` alike. Importing
// it loads the AWS SDK (S3BlobDB); knex and its database drivers load only
// when MetaDB.open is called, the URL presigner on the first getSignedUrl.
export { FilesystemBlobDB, type FilesystemBlobDBOptions } from './backends/fs.js';
export { MemoryBlobDB, type MemoryBlobDBOptions } from './backends/memory.js';
export * from './backends/s3.js';
export { getWithInfo, knownLength, readAll, toReadable } from './body.js';
export * from './config.js';
export * from './errors.js';
export * from './keys.js';
export { createLogger, type LogFormat, type Logger, type LoggerOptions, type LogLevel } from './log.js';
export { MetaDB } from './meta/index.js';
export type * from './meta/types.js';
export * from './migrate/backfill.js';
export * from './migrate/check-logs.js';
export * from './migrate/cleanup.js';
export {
  type CopyContext,
  type CopyOutcome,
  type CopyRow,
  copyBlob,
  DEFAULT_RETRY,
  ReferenceChecker,
  type RetryPolicy,
  refreshStale,
} from './migrate/copy.js';
export { isInfrastructureError, isTransientError } from './migrate/errors.js';
export { type BlobDigest, hashBlob } from './migrate/hash.js';
export {
  type BackendIdentity,
  CHECK_RUN,
  identityKey,
  requireCleanVerify,
  VERIFY_RUN,
} from './migrate/ledger.js';
export * from './migrate/missing-log.js';
export { type PreflightOptions, preflight, proveDistinct } from './migrate/preflight.js';
export { PresentIndex } from './migrate/present-index.js';
export { backfillJson, formatBackfillSummary } from './migrate/report.js';
export * from './migrate/verify.js';
export * from './migrating.js';
export { redact, redactString, registerSecret } from './redact.js';
export * from './store.js';
export type * from './types.js';
