// The public API, for `import` and (Node >= 20.19) `require` alike. Importing
// it loads the AWS SDK (S3BlobDB); knex and its database drivers load only
// when MetaDB.open is called, the URL presigner on the first getSignedUrl.

export * from './app/migrating.js';
export * from './app/store.js';
export { FilesystemBlobDB, type FilesystemBlobDBOptions } from './backends/fs/index.js';
export { MemoryBlobDB, type MemoryBlobDBOptions } from './backends/memory/index.js';
export * from './backends/s3/index.js';
export { createLogger, type LogFormat, type Logger, type LoggerOptions, type LogLevel } from './cli/log.js';
export * from './config/index.js';
export { getWithInfo, knownLength, readAll, toReadable } from './contract/body.js';
export * from './contract/errors.js';
export * from './contract/keys.js';
export type * from './contract/meta.js';
export { redact, redactString, registerSecret } from './contract/redact.js';
export type * from './contract/types.js';
export * from './engine/backfill.js';
export * from './engine/check-logs.js';
export * from './engine/cleanup.js';
export {
  type CopyContext,
  type CopyOutcome,
  type CopyRow,
  copyBlob,
  DEFAULT_RETRY,
  ReferenceChecker,
  type RetryPolicy,
  refreshStale,
} from './engine/copy.js';
export { isInfrastructureError, isTransientError } from './engine/errors.js';
export { type BlobDigest, hashBlob } from './engine/hash.js';
export {
  type BackendIdentity,
  CHECK_RUN,
  identityKey,
  requireCleanVerify,
  VERIFY_RUN,
} from './engine/ledger.js';
export * from './engine/missing-log.js';
export { type PreflightOptions, preflight, proveDistinct } from './engine/preflight.js';
export { PresentIndex } from './engine/present-index.js';
export { backfillJson, formatBackfillSummary } from './engine/report.js';
export * from './engine/verify.js';
export { MetaDB } from './meta/index.js';
