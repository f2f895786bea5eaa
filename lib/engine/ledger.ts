/**
 * The ledger of checks: `verify` and `check-blob-logs` record each invocation
 * in the run-state table (`<table>_runs`) next to the backfill runs, so that
 * `cleanup-old` can refuse to delete anything unless the latest verify of this
 * pair of backends was clean and came after every backfill and
 * check-blob-logs run.
 *
 * Rows use reserved run names that `--run` cannot take (they start with
 * `:`): `:verify` and `:check-blob-logs`, one row per pair of backends (the
 * shard column holds a hash of the pair's descriptions), holding the latest
 * invocation. A verify writes its row as `running` when it starts, so an
 * interrupted or crashed verify leaves no clean verdict behind.
 */
import { createHash } from 'node:crypto';
import { PreflightError } from '../contract/errors.js';
import type { MetaStore, RunState } from '../contract/meta.js';
import { emptyCounts } from '../contract/meta.js';

export const VERIFY_RUN = ':verify';
export const CHECK_RUN = ':check-blob-logs';

/** The two backends a check is about, as the operator configured them (secret-free descriptions). */
export interface BackendIdentity {
  old: string | null;
  new: string;
}

/** The ledger row's shard column for a pair of backends. */
export function identityKey(identity: BackendIdentity): string {
  return createHash('sha256')
    .update(`${identity.old ?? ''}\n${identity.new}`)
    .digest('hex')
    .slice(0, 32);
}

/** True for ledger rows (verify, check-blob-logs), false for backfill runs. */
export function isLedgerRun(state: Pick<RunState, 'name'>): boolean {
  return state.name.startsWith(':');
}

export interface VerifyRecord {
  identity: BackendIdentity;
  types: string[] | null;
  checksum: boolean;
}

/** What a verify recorded when it ended. */
export interface VerifyOutcome {
  safe: boolean;
  verdict: string;
  rows: number;
  checked: number;
}

/** Starts the ledger row of a verify: `running`, so only a finished clean verify counts. */
export async function recordVerifyStart(meta: MetaStore, record: VerifyRecord, at: Date): Promise<RunState> {
  const state: RunState = {
    name: VERIFY_RUN,
    shard: identityKey(record.identity),
    status: 'running',
    lowWaterMark: 0,
    counts: emptyCounts(),
    logs: [],
    options: {
      kind: 'verify',
      old: record.identity.old,
      new: record.identity.new,
      types: record.types,
      checksum: record.checksum,
    },
    attempts: 1,
    exitCode: null,
    startedAt: at,
    updatedAt: at,
    finishedAt: null,
    extra: {},
  };
  await meta.saveRun(state);
  return state;
}

/** Ends the ledger row of a verify with its verdict (or as failed, when it did not finish). */
export async function recordVerifyEnd(
  meta: MetaStore,
  state: RunState,
  outcome: VerifyOutcome | { error: string },
): Promise<void> {
  const now = new Date();
  const done: RunState = { ...state, updatedAt: now, finishedAt: now };
  if ('error' in outcome) {
    done.status = 'failed';
    done.exitCode = null;
    done.extra = { error: outcome.error };
  } else {
    done.status = 'completed';
    done.exitCode = outcome.safe ? 0 : 1;
    done.counts = { ...emptyCounts(), total: outcome.rows };
    done.extra = {
      verdict: outcome.verdict,
      safe: outcome.safe,
      rows: outcome.rows,
      checked: outcome.checked,
    };
  }
  await meta.saveRun(done);
}

/** Records one check-blob-logs invocation (its start, then its end). */
export async function recordCheck(
  meta: MetaStore,
  identity: BackendIdentity,
  at: { startedAt: Date; finishedAt: Date | null },
  details: { migrate: boolean; files: string[]; exitCode: number | null },
): Promise<void> {
  await meta.saveRun({
    name: CHECK_RUN,
    shard: identityKey(identity),
    status: at.finishedAt === null ? 'running' : 'completed',
    lowWaterMark: 0,
    counts: emptyCounts(),
    logs: [...details.files],
    options: { kind: 'check-blob-logs', old: identity.old, new: identity.new, migrate: details.migrate },
    attempts: 1,
    exitCode: details.exitCode,
    startedAt: at.startedAt,
    updatedAt: at.finishedAt ?? at.startedAt,
    finishedAt: at.finishedAt,
    extra: {},
  });
}

/**
 * Resolves the latest verify of this pair of backends when it vouches for a
 * cleanup of `types` (null: every type): it finished SAFE TO FLIP, covered
 * those types, and started after the last save of every backfill run and
 * every check-blob-logs run in this metadata database (any pair of backends:
 * a rollback or another migration sharing the database changes what "clean"
 * means). Rejects `PreflightError` saying what to run otherwise.
 */
export async function requireCleanVerify(
  meta: MetaStore,
  identity: BackendIdentity,
  types: string[] | null,
): Promise<RunState> {
  const target = 'cleanup-old';
  const again = "run 'blobshift verify' with this config and try again";
  const latest = await meta.getRun(VERIFY_RUN, identityKey(identity));
  if (!latest) {
    throw new PreflightError(
      target,
      `no verify of these backends is recorded in the metadata database; cleanup-old deletes only after a clean verify: ${again}`,
    );
  }
  const when = latest.startedAt.toISOString();
  if (latest.status !== 'completed') {
    throw new PreflightError(
      target,
      `the latest verify of these backends (started ${when}) did not finish (${latest.status}); ${again}`,
    );
  }
  if (latest.exitCode !== 0) {
    const verdict = typeof latest.extra.verdict === 'string' ? latest.extra.verdict : 'NOT SAFE';
    throw new PreflightError(
      target,
      `the latest verify of these backends (started ${when}) said ${verdict}; fix what it listed, then ${again}`,
    );
  }
  const verified = Array.isArray(latest.options.types) ? (latest.options.types as string[]) : null;
  if (verified !== null && (types === null || types.some((t) => !verified.includes(t)))) {
    throw new PreflightError(
      target,
      `the latest verify of these backends (started ${when}) covered only --types ${verified.join(',')}; ${again} for every type cleaned up`,
    );
  }
  await refuseRunsSince(meta, latest, again);
  return latest;
}

/**
 * Refuses (`PreflightError`) when any backfill or check-blob-logs run was
 * saved after `verify` started: a verify vouches only for what happened
 * before it.
 */
async function refuseRunsSince(meta: MetaStore, verify: RunState, again: string): Promise<void> {
  const when = verify.startedAt.toISOString();
  for (const run of await meta.listRuns()) {
    if (run.name === VERIFY_RUN) continue;
    if (run.updatedAt.getTime() < verify.startedAt.getTime()) continue;
    const what =
      run.name === CHECK_RUN
        ? 'a check-blob-logs run'
        : `backfill run "${run.name}"${run.shard && !isLedgerRun(run) ? ` shard ${run.shard}` : ''}`;
    throw new PreflightError(
      'cleanup-old',
      `${what} was saved at ${run.updatedAt.toISOString()}, after the latest verify started (${when}); a verify vouches only for what happened before it: ${again}`,
    );
  }
}
