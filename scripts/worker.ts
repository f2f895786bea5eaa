/**
 * `blobshift worker`: takes backfill chunks from a Redis queue (BullMQ) and
 * copies them through the same copy path as a local backfill. The CLI
 * (scripts/cli.ts) parses and validates the flags, then calls
 * `main(options, args)` and exits with its result. Run directly
 * (`tsx scripts/worker.ts …`), this file runs the CLI with `worker` prepended.
 */
import type { WorkerOptions } from '../lib/cli/options.js';
import { exitWith, isMainModule } from '../lib/cli/run.js';

export async function main(options: WorkerOptions, _args: string[]): Promise<number> {
  const { workerCommand } = await import('../lib/cli/queue-command.js');
  return workerCommand(options);
}

if (isMainModule(import.meta.url)) {
  // No top-level await: cli.js imports this module back, and must not wait on it.
  void import('./cli.js').then(({ runCli }) => runCli(['worker', ...process.argv.slice(2)])).then(exitWith);
}
