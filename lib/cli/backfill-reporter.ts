/**
 * What `blobshift backfill` shows, run locally or through the queue: the
 * start line, the progress on stderr, and the summary (text or `--json`) on
 * stdout.
 */

import type { BackfillProgress, BackfillStartInfo, BackfillSummary } from '../engine/backfill.js';
import { backfillJson, formatBackfillSummary } from '../engine/report.js';
import type { Logger } from './log.js';
import { printJson, printLines } from './output.js';
import { createProgress, type Progress } from './progress.js';

export interface BackfillReporter {
  onStart(info: BackfillStartInfo & { queue?: string; migrationId?: string }): void;
  onProgress(p: BackfillProgress): void;
  /** Stops the progress, prints the summary, and returns its exit code. */
  finish(summary: BackfillSummary): number;
  /** Stops the progress (on an error). */
  stop(): void;
}

export function backfillReporter(
  logger: Pick<Logger, 'info'>,
  opts: { json: boolean; progress: boolean },
): BackfillReporter {
  let progress: Progress | undefined;
  return {
    onStart(info) {
      const queued = info.queue ? `, chunks queued on ${info.queue} (migration ${info.migrationId})` : '';
      logger.info(
        `${info.mode ?? 'backfill'} run "${info.run}"${info.shard ? ` shard ${info.shard}` : ''}, attempt ${info.attempt}${queued}` +
          (info.resumedFrom > 0 ? `, resuming after id ${info.resumedFrom}` : ''),
        {
          log: info.log,
          estimate: info.estimate,
          ...(info.snapshot
            ? { [info.mode === 'rollback' ? 'oldBackendHolds' : 'newBackendHolds']: info.snapshot }
            : {}),
        },
      );
      progress = createProgress({
        total: info.estimate.count,
        totalBytes: info.estimate.bytes,
        enabled: opts.progress && !opts.json,
      });
    },
    onProgress(p) {
      progress?.setTotal(p.total);
      progress?.update(p.done, p.bytes);
    },
    finish(summary) {
      progress?.stop();
      if (opts.json) printJson(backfillJson(summary));
      else printLines(formatBackfillSummary(summary));
      return summary.exitCode;
    },
    stop() {
      progress?.stop();
    },
  };
}
