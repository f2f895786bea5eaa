/**
 * `blobshift rollback`: after a flip, bring the app's writes back into the
 * old backend. The same config as the migration: copies from `new` to `old`
 * every referenced blob old lacks, and replaces a copy in old that the
 * metadata proves stale (its size, or the SHA-256 of its bytes, differs from
 * the row) when the copy in new matches the row. A copy in old that the
 * metadata cannot prove stale is never replaced. Resumable like a backfill
 * (default run name `rollback`; `--reset` starts a new pass).
 */
import type { RollbackOptions } from '../lib/cli/options.js';
import { runBackfillCommand } from './backfill.js';

export async function main(options: RollbackOptions, _args: string[]): Promise<number> {
  return runBackfillCommand(options, 'rollback');
}
