/**
 * The parsed options of each subcommand, as `scripts/cli.ts` builds them with
 * commander (one option per flag, in camelCase; a flag with a default in
 * `DEFAULTS` is always set). Each subcommand's `main` takes its own type.
 * Types only: the CLI's startup loads nothing from here.
 */
import type { ExistenceMode, LogFormat, Shard } from './args.js';

/** `-c, --config FILE`: every subcommand has it. */
export type CommonOptions = {
  config: string;
};

/** The flags `backfill` and `rollback` share: one copy run over the metadata. */
export type CopyRunOptions = CommonOptions & {
  run: string;
  logDir: string;
  chunkSize: number;
  concurrency: number;
  types?: string[];
  shard?: Shard;
  existence: ExistenceMode;
  maxRate?: number;
  reset?: boolean;
  dryRun?: boolean;
  json?: boolean;
  /** false with `--no-progress`. */
  progress: boolean;
  logFormat: LogFormat;
};

/** `blobshift backfill`: a copy run, on this host, over N processes or over queue workers. */
export type BackfillOptions = CopyRunOptions & {
  processes?: number;
  /** A Redis URL, or `true` for `--queue` without a value (the config's `queue.url`). */
  queue?: string | true;
  queueName: string;
};

/** `blobshift rollback`: a copy run from new back to old (no `--processes`, no `--queue`). */
export type RollbackOptions = CopyRunOptions;

/** `blobshift worker`. */
export type WorkerOptions = CommonOptions & {
  /** A Redis URL, or `true`/absent for the config's `queue.url`. */
  queue?: string | true;
  queueName: string;
  concurrency: number;
};

/** `blobshift check-blob-logs LOG...` (the log files are the operands). */
export type CheckBlobLogsOptions = CommonOptions & {
  migrate?: boolean;
  processes?: number;
  concurrency: number;
  logDir: string;
  json?: boolean;
};

/** `blobshift verify`. */
export type VerifyOptions = CommonOptions & {
  checksum?: boolean;
  reverse?: boolean;
  processes?: number;
  types?: string[];
  logDir: string;
  json?: boolean;
};

/** `blobshift estimate`. */
export type EstimateOptions = CommonOptions & {
  types?: string[];
  json?: boolean;
};

/** `blobshift status`. */
export type StatusOptions = CommonOptions & {
  run: string;
  json?: boolean;
};

/** `blobshift cleanup-old`. */
export type CleanupOptions = CommonOptions & {
  yes?: boolean;
  dryRun?: boolean;
  logDir: string;
};

/** Each subcommand's options, by its name. */
export type CommandOptions = {
  backfill: BackfillOptions;
  rollback: RollbackOptions;
  worker: WorkerOptions;
  'check-blob-logs': CheckBlobLogsOptions;
  verify: VerifyOptions;
  estimate: EstimateOptions;
  status: StatusOptions;
  'cleanup-old': CleanupOptions;
};
