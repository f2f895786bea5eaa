/**
 * `blobshift backfill --processes N`: one host's every core, without Redis.
 *
 * A parent process runs N children, each the ordinary `blobshift backfill`
 * on a disjoint shard of the same run: child k gets `--shard k/N` (or, when
 * the user gave `--shard i/n`, `--shard i+n·k/n·N`, whose union over k is
 * exactly the rows of `i/n`). So every child keeps the run's usual state: its
 * checkpoint row (per run name and shard), its missing-blob log in
 * `--log-dir`, its preflight and listing snapshot. The parent:
 *
 * - shows one progress display, summed from the children's progress sent
 *   over IPC, and one summary (text, or `--json` with the per-process
 *   summaries under `processes`);
 * - forwards SIGINT/SIGTERM to every child (they stop as a single process
 *   does: in-flight copies finish, the checkpoint is saved; a second signal
 *   abandons them); children run in their own process group, so a terminal's
 *   Ctrl-C reaches them once, through the parent, and a child whose parent
 *   vanished stops itself as on SIGTERM;
 * - exits with the worst child's code, in this order: 2 (bad usage, config or
 *   preflight) before 3 (infrastructure lost) before 130 (interrupted) before
 *   1 (blobs missing or failed) before 0. A child that dies without a summary
 *   counts as 3 (its checkpoint is saved; a rerun resumes), or 130 when the
 *   parent was interrupted.
 *
 * The same command with the same `--processes N` resumes every shard.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { BackfillSummary } from '../migrate/backfill.js';
import { backfillJson, formatBackfillSummary } from '../migrate/report.js';
import type { Shard } from './args.js';
import { printJson, printLines } from './output.js';
import { createProgress, type Progress } from './progress.js';
import { EXIT } from './run.js';

/** Set in a child's environment: `k/N`, the process it is. */
export const CHILD_ENV = 'BLOBSHIFT_PROCESS';

/** Messages a child sends its parent. */
export type ChildMessage =
  | { type: 'start'; estimate: { count: number; bytes: number } }
  | { type: 'progress'; done: number; total: number; bytes: number };

/** The child's side: reports to the parent, and stops itself when the parent is gone. */
export interface ChildLink {
  start(estimate: { count: number; bytes: number }): void;
  progress(p: { done: number; total: number; bytes: number }): void;
}

/**
 * In a child of `--processes`: the link to the parent (progress over IPC),
 * and a SIGTERM to itself when the parent goes away (the IPC channel closes).
 * `undefined` in an ordinary process.
 */
export function childLink(): ChildLink | undefined {
  if (process.env[CHILD_ENV] === undefined || typeof process.send !== 'function') return undefined;
  // With the parent gone, stdout and stderr are broken pipes: a log line must not end the
  // process (EPIPE) before it has stopped cleanly and saved its checkpoint.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});
  process.once('disconnect', () => process.kill(process.pid, 'SIGTERM'));
  let last = 0;
  const send = (message: ChildMessage) => {
    if (process.connected) process.send?.(message);
  };
  return {
    start: (estimate) => send({ type: 'start', estimate }),
    progress(p) {
      // At most ten messages a second; the last one always goes (done = total).
      const now = Date.now();
      if (now - last < 100 && p.done < p.total) return;
      last = now;
      send({ type: 'progress', done: p.done, total: p.total, bytes: p.bytes });
    },
  };
}

/** The shard child `k` of `count` covers, within the user's `--shard` (if any). */
export function childShard(k: number, count: number, outer: Shard | undefined): Shard {
  if (!outer || outer.count <= 1) return { index: k, count };
  return { index: outer.index + outer.count * k, count: outer.count * count };
}

/** Exit codes from worst to best (a code not listed counts as 1). */
const PRECEDENCE: readonly number[] = [EXIT.USAGE, EXIT.INFRA, EXIT.INTERRUPTED, EXIT.INCOMPLETE, EXIT.OK];

/** The worst of the children's exit codes. */
export function worstExitCode(codes: readonly number[]): number {
  let worst: number = EXIT.OK;
  for (const raw of codes) {
    const code = PRECEDENCE.includes(raw) ? raw : EXIT.INCOMPLETE;
    if (PRECEDENCE.indexOf(code) < PRECEDENCE.indexOf(worst)) worst = code;
  }
  return worst;
}

/** The backfill flags of `options` for a child, on `shard`, reporting in JSON. */
export function backfillChildArgs(options: Record<string, unknown>, shard: Shard): string[] {
  const args = ['backfill'];
  const value = (flag: string, v: unknown) => {
    if (v !== undefined) args.push(flag, String(v));
  };
  value('--config', options.config);
  value('--run', options.run);
  value('--log-dir', options.logDir);
  value('--chunk-size', options.chunkSize);
  value('--concurrency', options.concurrency);
  if (Array.isArray(options.types) && options.types.length > 0) value('--types', options.types.join(','));
  value('--existence', options.existence);
  value('--max-rate', options.maxRate);
  value('--log-format', options.logFormat);
  if (options.reset === true) args.push('--reset');
  if (options.dryRun === true) args.push('--dry-run');
  args.push('--shard', `${shard.index}/${shard.count}`, '--json', '--no-progress');
  return args;
}

/** How to start the CLI again: the compiled `cli.js` beside this build, or `cli.ts` through the same loader. */
function cliEntry(): string {
  const js = fileURLToPath(new URL('../../scripts/cli.js', import.meta.url));
  if (existsSync(js)) return js;
  return fileURLToPath(new URL('../../scripts/cli.ts', import.meta.url));
}

interface Child {
  index: number;
  shard: Shard;
  proc: ChildProcess;
  stdout: string;
  estimate: { count: number; bytes: number } | undefined;
  done: number;
  total: number;
  bytes: number;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Sums the children's backfill summaries into one (the shard is the user's, if any). */
export function combineSummaries(parts: BackfillSummary[], shardLabel: string): BackfillSummary {
  const sum = (f: (s: BackfillSummary) => number) => parts.reduce((a, s) => a + f(s), 0);
  const codes = parts.map((s) => s.exitCode);
  const exitCode = worstExitCode(codes);
  const worst = parts.find((s) => s.exitCode === exitCode) ?? parts[0];
  const seconds = Math.max(0, ...parts.map((s) => s.seconds));
  const done = sum(
    (s) => s.copied + s.present + s.notFound + s.failed + s.deletedDuringMigration + s.expired,
  );
  const out: BackfillSummary = {
    run: parts[0]?.run ?? 'default',
    shard: shardLabel,
    status: worst?.status ?? 'completed',
    exitCode,
    total: sum((s) => s.total),
    copied: sum((s) => s.copied),
    present: sum((s) => s.present),
    notFound: sum((s) => s.notFound),
    failed: sum((s) => s.failed),
    deletedDuringMigration: sum((s) => s.deletedDuringMigration),
    expired: sum((s) => s.expired),
    bytes: sum((s) => s.bytes),
    retries: sum((s) => s.retries),
    seconds,
    rate: seconds > 0 ? Math.round((done / seconds) * 10) / 10 : 0,
    logs: parts.flatMap((s) => s.logs),
    attempts: Math.max(0, ...parts.map((s) => s.attempts)),
    lowWaterMark: Math.min(...parts.map((s) => s.lowWaterMark)),
    reprinted: parts.length > 0 && parts.every((s) => s.reprinted),
  };
  const reasons = parts.flatMap((s) => (s.reason !== undefined ? [s.reason] : []));
  if (reasons.length > 0) out.reason = [...new Set(reasons)].join('; ');
  if (parts.some((s) => s.toCopy !== undefined)) {
    out.toCopy = sum((s) => s.toCopy ?? 0);
    out.toCopyBytes = sum((s) => s.toCopyBytes ?? 0);
  }
  return out;
}

/** The summary a child printed with `--json` (backfillJson's fields), or undefined. */
function parseSummary(stdout: string): BackfillSummary | undefined {
  const text = stdout.trim();
  if (!text.startsWith('{')) return undefined;
  try {
    const j = JSON.parse(text) as Record<string, unknown> & BackfillSummary;
    return { ...j, shard: typeof j.shard === 'string' ? j.shard : '' };
  } catch {
    return undefined;
  }
}

/**
 * Runs `blobshift backfill` as `count` child processes on disjoint shards and
 * returns the exit code (see the module comment).
 */
export async function runBackfillProcesses(options: Record<string, unknown>, count: number): Promise<number> {
  const stderr = process.stderr;
  const json = options.json === true;
  const outer = options.shard as Shard | undefined;
  const textLogs = options.logFormat !== 'json';
  const entry = cliEntry();
  const children: Child[] = [];
  let progress: Progress | undefined;
  let interrupted = false;
  const redraw = () => {
    if (!progress) return;
    progress.setTotal(children.reduce((a, c) => a + c.total, 0));
    progress.update(
      children.reduce((a, c) => a + c.done, 0),
      children.reduce((a, c) => a + c.bytes, 0),
    );
  };
  for (let k = 0; k < count; k++) {
    const shard = childShard(k, count, outer);
    const proc = spawn(process.execPath, [...process.execArgv, entry, ...backfillChildArgs(options, shard)], {
      env: { ...process.env, [CHILD_ENV]: `${k}/${count}` },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      // Its own process group: a terminal's Ctrl-C reaches it through the parent only, once.
      detached: true,
    });
    const child: Child = {
      index: k,
      shard,
      proc,
      stdout: '',
      estimate: undefined,
      done: 0,
      total: 0,
      bytes: 0,
      exit: new Promise((resolve) => {
        proc.once('close', (code, signal) => resolve({ code, signal }));
        proc.once('error', () => resolve({ code: null, signal: null }));
      }),
    };
    proc.stdout?.setEncoding('utf8').on('data', (d: string) => {
      child.stdout += d;
    });
    let partial = '';
    proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
      const lines = (partial + d).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) stderr.write(textLogs ? `[process ${k}/${count}] ${line}\n` : `${line}\n`);
    });
    proc.stderr?.on('end', () => {
      if (partial !== '') stderr.write(textLogs ? `[process ${k}/${count}] ${partial}\n` : `${partial}\n`);
    });
    proc.on('message', (m: ChildMessage) => {
      if (m.type === 'start') {
        child.estimate = m.estimate;
        child.total = m.estimate.count;
        if (!progress && children.every((c) => c.estimate !== undefined)) {
          progress = createProgress({
            total: children.reduce((a, c) => a + (c.estimate?.count ?? 0), 0),
            totalBytes: children.reduce((a, c) => a + (c.estimate?.bytes ?? 0), 0),
            enabled: options.progress !== false && !json,
          });
        }
      } else if (m.type === 'progress') {
        child.done = m.done;
        child.total = m.total;
        child.bytes = m.bytes;
      }
      redraw();
    });
    children.push(child);
  }
  const forward = (signal: NodeJS.Signals) => () => {
    interrupted = true;
    stderr.write(`blobshift: ${signal}: passing it on to ${count} backfill processes\n`);
    for (const c of children) if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill(signal);
  };
  const onInt = forward('SIGINT');
  const onTerm = forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  let exits: { code: number | null; signal: NodeJS.Signals | null }[];
  try {
    exits = await Promise.all(children.map((c) => c.exit));
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
    progress?.stop();
  }
  const summaries: BackfillSummary[] = [];
  const codes: number[] = [];
  const lost: string[] = [];
  children.forEach((c, i) => {
    const summary = parseSummary(c.stdout);
    const exit = exits[i];
    if (summary) {
      summaries.push(summary);
      codes.push(summary.exitCode);
      return;
    }
    // No summary: a failed start (its one-line error is above), or a process that died.
    const code =
      exit?.code !== null && exit?.code !== undefined
        ? exit.code
        : interrupted
          ? EXIT.INTERRUPTED
          : EXIT.INFRA;
    codes.push(code);
    lost.push(
      `process ${c.index}/${count} (shard ${c.shard.index}/${c.shard.count}) ended without a summary: ` +
        (exit?.signal ? `killed by ${exit.signal}` : `exit ${code}`),
    );
  });
  const exitCode = worstExitCode(codes);
  for (const line of lost) stderr.write(`blobshift: ${line}\n`);
  if (summaries.length > 0) {
    const label = outer && outer.count > 1 ? `${outer.index}/${outer.count}` : '';
    const combined = combineSummaries(summaries, label);
    combined.exitCode = exitCode;
    if (json) {
      printJson({
        ...backfillJson(combined),
        processes: summaries.map((s) => backfillJson(s)),
        ...(lost.length > 0 ? { lostProcesses: lost } : {}),
      });
    } else {
      printLines([
        ...formatBackfillSummary(combined),
        `  processes:                ${count} (shards ${children.map((c) => `${c.shard.index}/${c.shard.count}`).join(', ')})`,
      ]);
    }
  }
  return exitCode;
}
