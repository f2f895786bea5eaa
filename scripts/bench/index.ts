/**
 * `npm run bench`: every benchmark in one run, one table: target | our
 * figure | comparison figure | ratio | target met?. Sizes come from
 * environment variables (see each file; BENCH_ONLY=small,get,… picks some).
 * Builds nothing: run `npm run build` first so the start-up and CLI figures
 * are the compiled CLI's (the table says which ran).
 */
import { benchBackfill } from './backfill.js';
import { type BenchRow, formatTable, log } from './common.js';
import { benchCpu } from './cpu.js';
import { benchLarge } from './large.js';
import { benchLatency } from './latency.js';
import { benchMigratingGet } from './migrating-get.js';
import { benchProcesses } from './processes.js';
import { benchS3ToS3 } from './s3-to-s3.js';
import { benchSmall } from './small.js';
import { benchStartup } from './startup.js';
import { benchWalk } from './walk.js';

interface Bench {
  name: string;
  run: (ctx: { copyRate?: number }) => Promise<BenchRow[]>;
}

const benches: Bench[] = [
  { name: 'cpu', run: () => benchCpu() },
  { name: 'latency', run: () => benchLatency() },
  { name: 'processes', run: () => benchProcesses() },
  { name: 'small', run: () => benchSmall() },
  { name: 'get', run: () => benchMigratingGet() },
  { name: 'startup', run: () => benchStartup() },
  { name: 'large', run: () => benchLarge() },
  { name: 'walk', run: (ctx) => benchWalk(ctx.copyRate) },
  { name: 's3-to-s3', run: () => benchS3ToS3() },
  { name: 'backfill', run: () => benchBackfill() },
];

const only = process.env.BENCH_ONLY?.split(',').map((s) => s.trim());
const rows: BenchRow[] = [];
const ctx: { copyRate?: number } = {};
const started = Date.now();
for (const bench of benches) {
  if (only && !only.includes(bench.name)) continue;
  const t = Date.now();
  try {
    const out = await bench.run(ctx);
    rows.push(...out);
    const rate = out.find((r) => r.target.startsWith('1. small') && r.ours.endsWith('blobs/s'));
    if (rate) ctx.copyRate = Number(rate.ours.replace(/[^0-9.]/g, ''));
  } catch (err) {
    rows.push({
      target: `${bench.name}: failed`,
      ours: 'n/a',
      comparison: 'n/a',
      ratio: 'n/a',
      met: false,
      note: err instanceof Error ? err.message.split('\n')[0] : String(err),
    });
  }
  log(`${bench.name} took ${((Date.now() - t) / 1000).toFixed(0)} s`);
}
process.stdout.write(`${formatTable(rows)}\n\nbench took ${((Date.now() - started) / 1000).toFixed(0)} s\n`);
if (rows.some((r) => r.met === false)) process.exitCode = 1;
