/**
 * The metadata contract: blob rows (the app's references to blobs) and run
 * state (backfill checkpoints). `MetaDB` in `meta/index.ts` implements it over
 * knex; the migration engine depends on this interface only.
 */
import type { BlobMeta } from './types.js';

export interface ShardSpec {
  /** 0 ≤ index < count. Selects rows with `id % count = index`. */
  index: number;
  count: number;
}

export interface IdRange {
  /** Exclusive lower bound: rows with `id > after`. */
  after: number;
  /** Inclusive upper bound: rows with `id <= upTo`. */
  upTo: number;
}

export interface WalkOptions {
  /** Resume after this id (exclusive). Default 0. */
  afterId?: number;
  /** Rows per yielded chunk. */
  chunkSize: number;
  /** Only these blob types. Undefined or empty: all. */
  types?: string[];
  shard?: ShardSpec;
  idRange?: IdRange;
}

export interface TypeTotals {
  count: number;
  bytes: number;
}

export interface Estimate extends TypeTotals {
  byType: Record<string, TypeTotals>;
}

/** A row as given to `add`/`upsert`: the id is assigned by the database. */
export type NewBlobMeta = Omit<
  BlobMeta,
  'id' | 'createdOn' | 'expiresOn' | 'contentType' | 'sha256' | 'name'
> &
  Partial<Pick<BlobMeta, 'createdOn' | 'expiresOn' | 'contentType' | 'sha256' | 'name'>>;

/** The counts of a run that has done nothing yet. */
export function emptyCounts(): RunCounts {
  return {
    total: 0,
    copied: 0,
    replaced: 0,
    present: 0,
    notFound: 0,
    failed: 0,
    deletedDuringMigration: 0,
    expired: 0,
    bytes: 0,
    retries: 0,
    seconds: 0,
  };
}

export type RunStatus = 'running' | 'interrupted' | 'failed' | 'completed';

/** Cumulative counts of a run over all its attempts. */
export interface RunCounts {
  total: number;
  copied: number;
  /** Of `copied`: stale copies in the destination replaced (a rollback, see `refreshStale`). */
  replaced: number;
  present: number;
  notFound: number;
  failed: number;
  deletedDuringMigration: number;
  expired: number;
  bytes: number;
  retries: number;
  /** Seconds spent in attempts, summed. */
  seconds: number;
}

export interface RunState {
  name: string;
  /** `''` for an unsharded run, else `i/n`. */
  shard: string;
  status: RunStatus;
  /** Every blob with id ≤ this is finished (copied, present, logged or skipped). */
  lowWaterMark: number;
  counts: RunCounts;
  /** Every attempt's missing-blob log file, oldest first. */
  logs: string[];
  /** The options the run started with; a resume with others is refused. */
  options: RunOptions;
  attempts: number;
  exitCode: number | null;
  startedAt: Date;
  updatedAt: Date;
  finishedAt: Date | null;
  /** Per-run data: the process running it, a scale-out run's finished chunks, a ledger row's result. */
  extra: RunExtra;
}

/**
 * The options a run started with, as its state row stores them. A backfill
 * (or rollback) row has no `kind`; the ledger's rows (`verify`,
 * `check-blob-logs`) name theirs. Fields a row of another version holds
 * beyond these are kept as they are.
 */
export interface RunOptions {
  /** Absent for a backfill or rollback. */
  kind?: 'verify' | 'check-blob-logs';
  /** `--types`, sorted and without duplicates (`[]`: every type; a verify's `null`: every type). */
  types?: string[] | null;
  /** `''` for an unsharded run, else `i/n`. */
  shard?: string;
  /** The backends as the operator configured them (`null`: not told). */
  old?: string | null;
  new?: string | null;
  /** A rollback (`backfill`'s `replaceStale`). */
  replaceStale?: boolean;
  /** A verify that compared checksums. */
  checksum?: boolean;
  /** A check-blob-logs that migrated what it found. */
  migrate?: boolean;
  /** Fields of other versions, kept as they are. */
  [other: string]: unknown;
}

/** The options of a backfill run: what a resume must match. */
export interface BackfillRunOptions extends RunOptions {
  kind?: undefined;
  types: string[];
  shard: string;
  old: string | null;
  new: string | null;
}

/** The process running a run (checked so that two processes never run one run). */
export interface RunOwner {
  host: string;
  /** Absent or not a number: no owner to check (a row another writer made). */
  pid?: number;
}

/** A scale-out run's queue: finished chunk ranges `[after, upTo]` beyond the low-water mark. */
export interface QueueRunExtra {
  /** The queue's name. */
  name: string;
  /** Part of every job id of this run; a `--reset` starts a new one. */
  epoch: string;
  completed: [number, number][];
}

/** Per-run data beside the checkpoint. */
export interface RunExtra {
  owner?: RunOwner;
  queue?: QueueRunExtra;
  /** A verify ledger row: its verdict. */
  verdict?: string;
  safe?: boolean;
  rows?: number;
  checked?: number;
  /** A ledger row of a command that did not finish: why. */
  error?: string;
  /** Fields of other versions, kept as they are. */
  [other: string]: unknown;
}

/** Maps an app's own table, read-only. Values are column names. */
export interface ColumnMap {
  id: string;
  key: string;
  size: string;
  type?: string;
  parentId?: string;
  contentType?: string;
  sha256?: string;
  name?: string;
  createdOn?: string;
  expiresOn?: string;
}

export interface MetaOpenOptions {
  /** Table name, default `blob_meta`. Run state lives in `<table>_runs`. */
  table?: string;
  /** Create or migrate the schema (default true for blobshift's own table). */
  create?: boolean;
  /** Map an app's own table read-only instead of blobshift's schema. */
  columns?: ColumnMap;
  /** Where run state lives when `columns` maps a read-only app table. Default `blobshift_meta_runs`. */
  runsTable?: string;
  /**
   * PostgreSQL only: the schema that holds every table blobshift reads or
   * writes (it must exist). Default: the connection's current schema (the
   * first of its search_path, usually `public`).
   */
  schema?: string;
}

export interface DuplicateKeysOptions {
  types?: string[];
  /** Samples to return, default 10. */
  limit?: number;
}

export interface DuplicateKeys {
  /** Distinct keys that have more than one row. */
  count: number;
  samples: { key: string; ids: number[] }[];
}

export interface MetaStore {
  readonly table: string;
  /** True for an app's own mapped table: writes are refused with `ReadOnlyError`. */
  readonly readOnly: boolean;
  /** `sqlite`, `mysql` or `pg`. */
  readonly dialect: string;
  add(m: NewBlobMeta): Promise<BlobMeta>;
  /** Inserts, or updates the row with the same key (keeping its id). */
  upsert(m: NewBlobMeta): Promise<BlobMeta>;
  get(key: string): Promise<BlobMeta | undefined>;
  /** Resolves true when a row was deleted. */
  delete(key: string): Promise<boolean>;
  /**
   * Optional: deletes the row of `key` only when `check(row)` resolves true,
   * atomically with respect to every other write of that row in any process
   * (the row is locked from the read to the delete, so a concurrent `upsert`
   * of the key waits). `check` runs while the lock is held: keep it short.
   * Resolves true when a row was deleted. `BlobStore` uses it to remove a row
   * whose blob a concurrent delete took.
   */
  deleteIf?(key: string, check: (row: BlobMeta) => Promise<boolean>): Promise<boolean>;
  walk(opts: WalkOptions): AsyncIterable<BlobMeta[]>;
  estimate(opts?: { types?: string[] }): Promise<Estimate>;
  /** The subset of `keys` that have a row. */
  referenced(keys: string[]): Promise<Set<string>>;
  /** Highest id present (0 when empty), within the filters. */
  maxId(opts?: { types?: string[] }): Promise<number>;
  /**
   * Rows, all of them (NULL keys and invalid rows included), within `types`
   * and, when `upToId` is given, with `id <= upToId`; rows whose id is NULL
   * (which no walk can reach) are counted too. A walk's rows checked against
   * this count show rows it never visited. With `shard`, the rows with
   * `id % count = index` (rows with a NULL id count in shard 0).
   */
  count(opts?: { types?: string[]; upToId?: number; shard?: ShardSpec }): Promise<number>;
  /**
   * Keys held by more than one row: how many distinct non-NULL keys (compared
   * byte for byte: `A` and `a`, `a` and `a `, are different keys) have two or
   * more rows, in the whole table or among `types`, with up to `limit`
   * (default 10) samples, smallest first id first, each with its ids in
   * ascending order. blobshift's own table has a unique key: `{ count: 0,
   * samples: [] }` without a query.
   */
  duplicateKeys(opts?: DuplicateKeysOptions): Promise<DuplicateKeys>;

  getRun(name: string, shard: string): Promise<RunState | undefined>;
  /** Inserts or replaces the run's state row. */
  saveRun(state: RunState): Promise<void>;
  deleteRun(name: string, shard: string): Promise<boolean>;
  listRuns(): Promise<RunState[]>;

  close(): Promise<void>;
}
