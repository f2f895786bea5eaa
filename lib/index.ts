/**
 * The public API of `blobshift`, for `import` and (Node >= 20.19) `require`
 * alike: every name here is one a user may rely on, listed by hand, so that
 * moving or renaming a helper inside lib/ breaks no one. Anything not listed
 * is internal. Importing it loads no AWS SDK (S3BlobDB loads it with its
 * first request), no database driver (knex and its drivers load when
 * MetaDB.open is called) and no presigner (the first getSignedUrl).
 *
 * Narrower entry points, for an app that wants one backend only:
 * `blobshift/fs`, `blobshift/memory`, `blobshift/s3`, and `blobshift/queue`
 * (the scale-out over Redis workers, which loads BullMQ).
 */

export { MigratingBlobDB } from './app/migrating.js';
export { BlobStore, type BlobStoreOptions, ROW_LIMITS, type StorePutOptions } from './app/store.js';
// Backends, and the BlobDB the app uses during a migration.
export { FilesystemBlobDB, type FilesystemBlobDBOptions } from './backends/fs/index.js';
export { MemoryBlobDB, type MemoryBlobDBOptions } from './backends/memory/index.js';
export {
  isS3NotFoundError,
  S3BlobDB,
  type S3BlobDBOptions,
  type S3ClientConfigLike,
} from './backends/s3/index.js';
// Logging as the CLI does it (winston, redacted, text or JSON lines).
export { createLogger, type LogFormat, type Logger, type LoggerOptions, type LogLevel } from './cli/log.js';
// The config file.
export {
  type BackendConfig,
  type BlobShiftConfig,
  type ConfigOptions,
  DEFAULT_CONFIG_FILE,
  describeBackend,
  type FsBackendConfig,
  type LoadedConfig,
  loadConfig,
  type MemoryBackendConfig,
  type MetaConfig,
  type MysqlConnectionConfig,
  type PgConnectionConfig,
  parseConfig,
  type QueueConfig,
  type S3BackendConfig,
  sameLocation,
} from './config/index.js';
export { getWithInfo, readAll, toReadable } from './contract/body.js';
export {
  AbortedError,
  BackendError,
  BlobExistsError,
  BlobNotFoundError,
  BlobShiftError,
  ConcurrentDeleteError,
  ConfigError,
  type ErrorCode,
  InfrastructureError,
  InvalidFieldError,
  InvalidKeyError,
  isBlobExists,
  isBlobNotFound,
  isBlobShiftError,
  KeyConflictError,
  LogFormatError,
  MetadataError,
  NotSupportedError,
  PreflightError,
  ReadOnlyError,
  RunStateError,
  SameLocationError,
  SizeMismatchError,
} from './contract/errors.js';
export {
  compareKeys,
  isValidKey,
  keyProblem,
  MAX_KEY_BYTES,
  MAX_SEGMENT_BYTES,
  RESERVED_PREFIX,
  validateKey,
} from './contract/keys.js';
// Metadata, and the app-facing store over a BlobDB and the metadata.
export type {
  ColumnMap,
  DuplicateKeys,
  DuplicateKeysOptions,
  Estimate,
  IdRange,
  MetaOpenOptions,
  MetaStore,
  NewBlobMeta,
  RunCounts,
  RunState,
  RunStatus,
  ShardSpec,
  TypeTotals,
  WalkOptions,
} from './contract/meta.js';
export { redact, redactString, registerSecret } from './contract/redact.js';
// The contract: the BlobDB interface every backend implements, its errors and keys.
export type {
  BlobBody,
  BlobDB,
  BlobInfo,
  BlobMeta,
  BlobWithInfo,
  BulkDeleteResult,
  CannedAcl,
  Capabilities,
  CopyFromOptions,
  HttpMeta,
  ListOptions,
  PutOptions,
  SignedUrlOptions,
} from './contract/types.js';

// The migration's commands, as the CLI runs them.
export {
  type BackfillOptions,
  type BackfillProgress,
  type BackfillStartInfo,
  type BackfillStatus,
  type BackfillSummary,
  backfill,
  type EngineLogger,
} from './engine/backfill.js';
export {
  type CheckLogsOptions,
  type CheckLogsProgress,
  type CheckLogsReport,
  type CheckTypeReport,
  checkBlobLogs,
  formatCheckReport,
} from './engine/check-logs.js';
export {
  type CleanupOptions,
  type CleanupProgress,
  type CleanupReport,
  cleanupOld,
  formatCleanupReport,
} from './engine/cleanup.js';
// The engine's building blocks, for tools built on the same safety rules:
// one blob's copy, the listing snapshot, content hashing, the distinctness
// probe, the error guards and the verify ledger.
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
export {
  type LogProblem,
  MissingLogWriter,
  type MissingRecord,
  missingLogName,
  NOT_FOUND,
  readMissingLog,
  TOO_MANY_RETRIES,
} from './engine/missing-log.js';
export { type PreflightOptions, preflight, proveDistinct } from './engine/preflight.js';
export { PresentIndex } from './engine/present-index.js';
export { backfillJson, formatBackfillSummary } from './engine/report.js';
export {
  formatVerifyReport,
  type VerifyOptions,
  type VerifyProgress,
  type VerifyReport,
  verify,
} from './engine/verify.js';
export { MetaDB } from './meta/index.js';
