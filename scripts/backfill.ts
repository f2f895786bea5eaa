/**
 * `blobshift backfill`: not built yet. The CLI (scripts/cli.ts) parses and validates
 * the flags, then calls `main(options, args)` and exits with its result.
 * Run directly (`tsx scripts/backfill.ts …`), this file runs the CLI with `backfill`
 * prepended, so the flags are parsed and checked in one place.
 */
import { EXIT, exitWith, isMainModule } from '../lib/cli/run.js';

export async function main(_options: Record<string, unknown>, _args: string[]): Promise<number> {
  process.stderr.write('blobshift backfill: not built yet\n');
  return EXIT.USAGE;
}

if (isMainModule(import.meta.url)) {
  // No top-level await: cli.js imports this module back, and must not wait on it.
  void import('./cli.js').then(({ runCli }) => runCli(['backfill', ...process.argv.slice(2)])).then(exitWith);
}
