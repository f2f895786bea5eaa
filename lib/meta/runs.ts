/**
 * Run state (backfill checkpoints) rows: one per (name, shard), JSON text for
 * the structured fields so SQLite and MySQL store them the same way.
 */
import { RunStateError } from '../contract/errors.js';
import { emptyCounts, type RunCounts, type RunState, type RunStatus } from '../contract/meta.js';

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
    options: parseJson<Record<string, unknown>>(row.options, {}, `${what} options`),
    attempts: toSafeNumber(row.attempts, `${what} attempts`),
    exitCode: row.exit_code === null || row.exit_code === undefined ? null : Number(row.exit_code),
    startedAt: toDate(row.started_at) ?? new Date(0),
    updatedAt: toDate(row.updated_at) ?? new Date(0),
    finishedAt: toDate(row.finished_at),
    extra: parseJson<Record<string, unknown>>(row.extra, {}, `${what} extra`),
  };
}
