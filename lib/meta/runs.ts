/**
 * Run state (backfill checkpoints) rows: one per (name, shard), JSON text for
 * the structured fields so SQLite and MySQL store them the same way.
 */
import { RunStateError } from '../contract/errors.js';
import {
  emptyCounts,
  type QueueRunExtra,
  type RunCounts,
  type RunExtra,
  type RunOptions,
  type RunOwner,
  type RunState,
  type RunStatus,
} from '../contract/meta.js';

export { emptyCounts };

import { parseJson, toDate, toSafeNumber, toText } from './values.js';

const STATUSES: readonly RunStatus[] = ['running', 'interrupted', 'failed', 'completed'];

export interface RunRow {
  name: string;
  shard: string;
  status: string;
  low_water_mark: number;
  counts: string;
  logs: string;
  options: string;
  attempts: number;
  exit_code: number | null;
  started_at: Date;
  updated_at: Date;
  finished_at: Date | null;
  extra: string;
}

export function runToRow(state: RunState): RunRow {
  if (!STATUSES.includes(state.status)) {
    throw new RunStateError(`run ${state.name}: unknown status ${JSON.stringify(state.status)}`);
  }
  if (!Number.isSafeInteger(state.lowWaterMark) || state.lowWaterMark < 0) {
    throw new RunStateError(`run ${state.name}: low-water mark must be a non-negative integer`);
  }
  return {
    name: state.name,
    shard: state.shard,
    status: state.status,
    low_water_mark: state.lowWaterMark,
    counts: JSON.stringify(state.counts),
    logs: JSON.stringify(state.logs),
    options: JSON.stringify(state.options),
    attempts: state.attempts,
    exit_code: state.exitCode,
    started_at: state.startedAt,
    updated_at: state.updatedAt,
    finished_at: state.finishedAt,
    extra: JSON.stringify(state.extra ?? {}),
  };
}

export function rowToRun(row: Record<string, unknown>): RunState {
  const name = toText(row.name);
  const what = `run state ${name}`;
  const status = toText(row.status) as RunStatus;
  return {
    name,
    shard: toText(row.shard),
    status: STATUSES.includes(status) ? status : 'failed',
    lowWaterMark: toSafeNumber(row.low_water_mark, `${what} low_water_mark`),
    counts: { ...emptyCounts(), ...parseJson<Partial<RunCounts>>(row.counts, {}, `${what} counts`) },
    logs: parseJson<string[]>(row.logs, [], `${what} logs`),
    options: toRunOptions(parseJson<unknown>(row.options, {}, `${what} options`)),
    attempts: toSafeNumber(row.attempts, `${what} attempts`),
    exitCode: row.exit_code === null || row.exit_code === undefined ? null : Number(row.exit_code),
    startedAt: toDate(row.started_at) ?? new Date(0),
    updatedAt: toDate(row.updated_at) ?? new Date(0),
    finishedAt: toDate(row.finished_at),
    extra: toRunExtra(parseJson<unknown>(row.extra, {}, `${what} extra`)),
  };
}

/**
 * The stored options as `RunOptions`: every row this or an earlier version
 * wrote reads unchanged; a known field of the wrong type (a row edited by
 * hand) is dropped, unknown fields are kept as they are.
 */
export function toRunOptions(raw: unknown): RunOptions {
  const options: RunOptions = { ...objectOf(raw) };
  if (options.kind !== undefined && options.kind !== 'verify' && options.kind !== 'check-blob-logs') {
    delete options.kind;
  }
  if (options.types !== undefined && options.types !== null && !isStringList(options.types)) {
    delete options.types;
  }
  for (const field of ['old', 'new'] as const) {
    const v = options[field];
    if (v !== undefined && v !== null && typeof v !== 'string') delete options[field];
  }
  if (options.shard !== undefined && typeof options.shard !== 'string') delete options.shard;
  for (const field of ['replaceStale', 'checksum', 'migrate'] as const) {
    if (options[field] !== undefined && typeof options[field] !== 'boolean') delete options[field];
  }
  return options;
}

/** The stored extra data as `RunExtra`, checked like `toRunOptions`. */
export function toRunExtra(raw: unknown): RunExtra {
  const extra: RunExtra = { ...objectOf(raw) };
  const owner = toOwner(extra.owner);
  if (owner) extra.owner = owner;
  else delete extra.owner;
  const queue = toQueueExtra(extra.queue);
  if (queue) extra.queue = queue;
  else delete extra.queue;
  return extra;
}

function toOwner(raw: unknown): RunOwner | undefined {
  const o = objectOf(raw);
  if (typeof o.host !== 'string') return undefined;
  const { pid, ...rest } = o;
  return { ...rest, host: o.host, ...(typeof pid === 'number' ? { pid } : {}) };
}

function toQueueExtra(raw: unknown): QueueRunExtra | undefined {
  const q = objectOf(raw);
  if (typeof q.epoch !== 'string') return undefined;
  const completed = Array.isArray(q.completed)
    ? q.completed.filter(
        (r): r is [number, number] =>
          Array.isArray(r) && r.length === 2 && typeof r[0] === 'number' && typeof r[1] === 'number',
      )
    : [];
  return { ...q, name: typeof q.name === 'string' ? q.name : '', epoch: q.epoch, completed };
}

function objectOf(raw: unknown): Record<string, unknown> {
  return typeof raw === 'object' && raw !== null && !Array.isArray(raw)
    ? (raw as Record<string, unknown>)
    : {};
}

function isStringList(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((t) => typeof t === 'string');
}
