/**
 * `blobshift status`: not built yet. The CLI (scripts/cli.ts) parses and validates
 * the flags, then calls `main(options, args)` and exits with its result.
 */
import { EXIT } from '../lib/cli/run.js';

export async function main(_options: Record<string, unknown>, _args: string[]): Promise<number> {
  process.stderr.write('blobshift status: not built yet\n');
  return EXIT.USAGE;
}
