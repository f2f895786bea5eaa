/**
 * Target 7: `blobshift --help` and `blobshift estimate` on a small SQLite
 * database start and finish in under 0.5 s (the compiled CLI in dist/ when
 * built — `npm run build` — else through tsx, which the row says). The
 * comparison is a bare `node -e 0` on the same machine. Median of
 * BENCH_STARTUP_RUNS (7) runs each.
 */
import { join } from 'node:path';
import {
  type BenchRow,
  cliCommand,
  envNumber,
  isMain,
  keyFor,
  median,
  ratioText,
  run,
  runCli,
  scratch,
  seedMeta,
  sqliteMetaConfig,
  standalone,
  writeConfig,
} from './common.js';

export async function benchStartup(): Promise<BenchRow[]> {
  const runs = envNumber('BENCH_STARTUP_RUNS', 7);
  const dir = await scratch('startup');
  const metaFile = join(dir, 'meta.sqlite');
  await seedMeta(
    metaFile,
    Array.from({ length: 100 }, (_, i) => ({ key: keyFor('s', i), size: 1000 + i })),
  );
  const config = await writeConfig(dir, {
    meta: sqliteMetaConfig(metaFile),
    old: { type: 'fs', root: join(dir, 'old') },
  });
  const times = async (fn: () => Promise<{ seconds: number; code: number }>) => {
    const out: number[] = [];
    for (let i = 0; i < runs; i++) {
      const r = await fn();
      if (r.code !== 0) throw new Error(`startup run exited ${r.code}`);
      out.push(r.seconds);
    }
    return median(out);
  };
  const bare = await times(() => run(process.execPath, ['-e', '0']));
  const help = await times(() => runCli(['--help']));
  const estimate = await times(() => runCli(['estimate', '-c', config]));
  const how = cliCommand().compiled ? 'compiled dist/' : 'through tsx (not built)';
  const { rm } = await import('node:fs/promises');
  await rm(dir, { recursive: true, force: true });
  return [
    {
      target: `7. blobshift --help start-up (${how})`,
      ours: `${help.toFixed(3)} s`,
      comparison: `node -e 0: ${bare.toFixed(3)} s; limit 0.5 s`,
      ratio: ratioText(help / 0.5),
      met: help < 0.5,
      note: `median of ${runs}; ratio is to the 0.5 s limit`,
    },
    {
      target: `7. blobshift estimate start-up (${how}, 100 rows)`,
      ours: `${estimate.toFixed(3)} s`,
      comparison: `node -e 0: ${bare.toFixed(3)} s; limit 0.5 s`,
      ratio: ratioText(estimate / 0.5),
      met: estimate < 0.5,
    },
  ];
}

if (isMain(import.meta.url)) await standalone(benchStartup);
