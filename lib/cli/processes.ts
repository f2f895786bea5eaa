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
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BackfillSummary } from '../engine/backfill.js';
import type { CheckLogsReport, CheckTypeReport } from '../engine/check-logs.js';
import { backfillJson, formatBackfillSummary } from '../engine/report.js';
import { unresolvedRecords, verdictFor } from '../engine/verdict.js';
import type { VerifyReport } from '../engine/verify.js';
import { DEFAULTS, type Shard } from './args.js';
import type { BackfillOptions, CheckBlobLogsOptions, VerifyOptions } from './options.js';
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

/** The flags a child of `backfill --processes` is started with (any other flag of a backfill may ride along). */
export type BackfillChildFlags = Pick<
  BackfillOptions,
  'config' | 'run' | 'logDir' | 'chunkSize' | 'concurrency' | 'existence' | 'logFormat'
> &
  Partial<BackfillOptions>;

/** The backfill flags of `options` for a child, on `shard`, reporting in JSON. */
export function backfillChildArgs(options: BackfillChildFlags, shard: Shard): string[] {
  const args = ['backfill'];
  const value = (flag: string, v: unknown) => {
    if (v !== undefined) args.push(flag, String(v));
  };
  value('--config', options.config);
  value('--run', options.run);
  value('--log-dir', options.logDir);
  value('--chunk-size', options.chunkSize);
  value('--concurrency', options.concurrency);
  if (options.types && options.types.length > 0) value('--types', options.types.join(','));
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
    mode: parts[0]?.mode ?? 'backfill',
    run: parts[0]?.run ?? DEFAULTS.run,
    shard: shardLabel,
    status: worst?.status ?? 'completed',
    exitCode,
    total: sum((s) => s.total),
    copied: sum((s) => s.copied),
    replaced: sum((s) => s.replaced ?? 0),
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

interface Finished {
  /** Each child's parsed `--json` output, or undefined where it printed none. */
  outputs: (Record<string, unknown> | undefined)[];
  /** The worst exit code (see `worstExitCode`). */
  exitCode: number;
  /** One line per child that ended without a JSON output. */
  lost: string[];
}

/**
 * Starts `count` children of the CLI (`argsOf(k)`), forwards their log lines
 * (prefixed `[process k/N]` in text format), hands their IPC messages to
 * `onMessage`, passes SIGINT/SIGTERM on, and waits for all of them.
 */
async function runChildren(
  what: string,
  count: number,
  argsOf: (k: number) => string[],
  opts: { textLogs: boolean; onMessage?: (k: number, m: ChildMessage) => void },
): Promise<Finished> {
  const stderr = process.stderr;
  const entry = cliEntry();
  let interrupted = false;
  const children = Array.from({ length: count }, (_, k) => {
    const proc = spawn(process.execPath, [...process.execArgv, entry, ...argsOf(k)], {
      env: { ...process.env, [CHILD_ENV]: `${k}/${count}` },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      // Its own process group: a terminal's Ctrl-C reaches it through the parent only, once.
      detached: true,
    });
    const child = {
      proc,
      stdout: '',
      exit: new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
        proc.once('close', (code, signal) => resolve({ code, signal }));
        proc.once('error', () => resolve({ code: null, signal: null }));
      }),
    };
    proc.stdout?.setEncoding('utf8').on('data', (d: string) => {
      child.stdout += d;
    });
    const prefix = opts.textLogs ? `[process ${k}/${count}] ` : '';
    let partial = '';
    proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
      const lines = (partial + d).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) stderr.write(`${prefix}${line}\n`);
    });
    proc.stderr?.on('end', () => {
      if (partial !== '') stderr.write(`${prefix}${partial}\n`);
    });
    proc.on('message', (m: ChildMessage) => opts.onMessage?.(k, m));
    return child;
  });
  const forward = (signal: NodeJS.Signals) => () => {
    interrupted = true;
    stderr.write(`blobshift: ${signal}: passing it on to ${count} ${what} processes\n`);
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
  }
  const outputs: (Record<string, unknown> | undefined)[] = [];
  const codes: number[] = [];
  const lost: string[] = [];
  children.forEach((c, k) => {
    const output = parseJsonOutput(c.stdout);
    const exit = exits[k];
    outputs.push(output);
    if (output && typeof output.exitCode === 'number') {
      codes.push(output.exitCode);
      return;
    }
    // No output: a failed start (its one-line error is above), or a process that died.
    const code =
      exit?.code !== null && exit?.code !== undefined
        ? exit.code
        : interrupted
          ? EXIT.INTERRUPTED
          : EXIT.INFRA;
    codes.push(code);
    lost.push(
      `process ${k}/${count} ended without a summary: ${exit?.signal ? `killed by ${exit.signal}` : `exit ${code}`}`,
    );
  });
  for (const line of lost) stderr.write(`blobshift: ${line}\n`);
  return { outputs, exitCode: worstExitCode(codes), lost };
}

/** A child's `--json` output (one JSON object on stdout), or undefined. */
function parseJsonOutput(stdout: string): Record<string, unknown> | undefined {
  const text = stdout.trim();
  if (!text.startsWith('{')) return undefined;
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

type ChildEstimate = { count: number; bytes: number };

/**
 * Runs `blobshift backfill` as `count` child processes on disjoint shards and
 * returns the exit code (see the module comment).
 */
export async function runBackfillProcesses(options: BackfillOptions, count: number): Promise<number> {
  const json = options.json === true;
  const outer = options.shard;
  const shards = Array.from({ length: count }, (_, k) => childShard(k, count, outer));
  const state = shards.map(() => ({
    estimate: undefined as ChildEstimate | undefined,
    done: 0,
    total: 0,
    bytes: 0,
  }));
  let progress: Progress | undefined;
  const sum = (f: (c: (typeof state)[number]) => number) => state.reduce((a, c) => a + f(c), 0);
  const finished = await runChildren(
    'backfill',
    count,
    (k) => backfillChildArgs(options, shards[k] as Shard),
    {
      textLogs: options.logFormat !== 'json',
      onMessage: (k, m) => {
        const child = state[k];
        if (!child) return;
        if (m.type === 'start') {
          child.estimate = m.estimate;
          child.total = m.estimate.count;
          if (!progress && state.every((c) => c.estimate !== undefined)) {
            progress = createProgress({
              total: sum((c) => c.estimate?.count ?? 0),
              totalBytes: sum((c) => c.estimate?.bytes ?? 0),
              enabled: options.progress !== false && !json,
            });
          }
        } else if (m.type === 'progress') {
          child.done = m.done;
          child.total = m.total;
          child.bytes = m.bytes;
        }
        progress?.setTotal(sum((c) => c.total));
        progress?.update(
          sum((c) => c.done),
          sum((c) => c.bytes),
        );
      },
    },
  ).finally(() => progress?.stop());
  const summaries = finished.outputs.flatMap((o) => (o ? [toSummary(o)] : []));
  if (summaries.length > 0) {
    const label = outer && outer.count > 1 ? `${outer.index}/${outer.count}` : '';
    const combined = combineSummaries(summaries, label);
    combined.exitCode = finished.exitCode;
    if (json) {
      printJson({
        ...backfillJson(combined),
        processes: summaries.map((s) => backfillJson(s)),
        ...(finished.lost.length > 0 ? { lostProcesses: finished.lost } : {}),
      });
    } else {
      printLines([
        ...formatBackfillSummary(combined),
        `  processes:                ${count} (shards ${shards.map((s) => `${s.index}/${s.count}`).join(', ')})`,
      ]);
    }
  }
  return finished.exitCode;
}

function toSummary(j: Record<string, unknown>): BackfillSummary {
  const s = j as unknown as BackfillSummary;
  return { ...s, shard: typeof j.shard === 'string' ? j.shard : '' };
}

// ---------------------------------------------------------------------------
// verify --processes

/** The shard of the rows this child of `--processes` judges (`BLOBSHIFT_PROCESS=k/N`), if it is one. */
export function processShard(): Shard | undefined {
  const m = /^(\d+)\/(\d+)$/.exec(process.env[CHILD_ENV] ?? '');
  if (!m) return undefined;
  const index = Number(m[1]);
  const count = Number(m[2]);
  return count > 1 && index < count ? { index, count } : undefined;
}

/**
 * A metadata store whose walks cover only `shard` (`id % N = k`); everything
 * else (the row count that refuses an empty table, reference rechecks,
 * orphans) sees every row.
 */
export function shardedMeta<M extends { walk(opts: object): AsyncIterable<unknown> }>(
  meta: M,
  shard: Shard,
): M {
  return new Proxy(meta, {
    get(target, prop, receiver) {
      if (prop === 'walk') return (opts: object) => target.walk({ ...opts, shard });
      // verify's cross-check counts this process's share of the table, the share it walks.
      if (prop === 'count') {
        return (opts: object = {}) =>
          (target as unknown as { count(o: object): unknown }).count({ ...opts, shard });
      }
      const value = Reflect.get(target, prop, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

/** The verify flags of `options` for child `k` of `count`: its own report directory, JSON out. */
export function verifyChildArgs(options: VerifyOptions, k: number, count: number): string[] {
  const args = ['verify'];
  if (options.config !== undefined) args.push('--config', options.config);
  if (options.checksum === true) args.push('--checksum');
  if (options.reverse === true) args.push('--reverse');
  if (options.types && options.types.length > 0) args.push('--types', options.types.join(','));
  const logDir = options.logDir;
  args.push('--log-dir', join(logDir, `verify-process-${k}-of-${count}`), '--json');
  return args;
}

/**
 * The children's verify reports as one: counts summed, key files and samples
 * of every process, orphans and the snapshot from the first (every process
 * judges every orphan; they agree), the verdict made again from the sums.
 */
export function combineVerifyReports(parts: VerifyReport[]): VerifyReport {
  const first = parts[0] as VerifyReport;
  const sum = (f: (r: VerifyReport) => number) => parts.reduce((a, r) => a + f(r), 0);
  // Old and new the same place in any process's probe: the same place.
  const samePlace = parts.find((r) => r.backends === 'same place');
  if (samePlace) return samePlace;
  const files: VerifyReport['files'] = {};
  const samples: VerifyReport['samples'] = {
    ...(first.samples.orphans ? { orphans: first.samples.orphans } : {}),
  };
  const perRow = [
    'missing',
    'sizeMismatch',
    'checksumMismatch',
    'unverifiable',
    'unreadable',
    'invalidRow',
  ] as const;
  for (const c of perRow) {
    const paths = parts.flatMap((r) => (r.files[c] ? [r.files[c]] : []));
    if (paths.length > 0) files[c] = paths.join(', ');
    const keys = parts.flatMap((r) => r.samples[c] ?? []).slice(0, 10);
    if (keys.length > 0) samples[c] = keys;
  }
  // Keys held by more than one row are judged on the whole table by every process: the first's.
  if (first.files.duplicateKey) files.duplicateKey = first.files.duplicateKey;
  if (first.samples.duplicateKey) samples.duplicateKey = first.samples.duplicateKey;
  const counts = {
    missing: sum((r) => r.missing),
    sizeMismatches: sum((r) => r.sizeMismatches),
    checksumMismatches: sum((r) => r.checksumMismatches),
    unverifiable: sum((r) => r.unverifiable),
    unreadable: sum((r) => r.unreadable),
    invalidRows: sum((r) => r.invalidRows),
    duplicateKeys: Math.max(...parts.map((r) => r.duplicateKeys)),
    // Each process counted its own share of the table (id % N = k) against its walk.
    unvisitedRows: sum((r) => r.unvisitedRows),
  };
  const { safe, verdict } = verdictFor(counts);
  return {
    ...first,
    ...counts,
    safe,
    verdict,
    exitCode: safe ? 0 : 1,
    rows: sum((r) => r.rows),
    expired: sum((r) => r.expired),
    checked: sum((r) => r.checked),
    ok: sum((r) => r.ok),
    okBytes: sum((r) => r.okBytes),
    tableRows: sum((r) => r.tableRows),
    deletedDuringVerify: sum((r) => r.deletedDuringVerify),
    hashed: sum((r) => r.hashed),
    hashedAgainstOld: sum((r) => r.hashedAgainstOld),
    files,
    samples,
    seconds: Math.max(...parts.map((r) => r.seconds)),
  };
}

/**
 * Runs `blobshift verify` as `count` children, each judging the rows with
 * `id % count = k` (its key files in `--log-dir/verify-process-k-of-N/`), and
 * prints one report; the exit code is the worst child's.
 */
export async function runVerifyProcesses(
  options: VerifyOptions,
  count: number,
  onReport?: (report: VerifyReport | undefined) => Promise<void>,
): Promise<number> {
  const finished = await runChildren('verify', count, (k) => verifyChildArgs(options, k, count), {
    textLogs: true,
  });
  const reports = finished.outputs.flatMap((o) => (o ? [o as unknown as VerifyReport] : []));
  if (reports.length === count) {
    const combined = combineVerifyReports(reports);
    await onReport?.(combined);
    if (options.json === true) printJson({ ...combined, processes: count });
    else {
      // Loaded here only: a backfill (which imports this module) does not need it.
      const { formatVerifyReport } = await import('../engine/verify.js');
      process.stdout.write(formatVerifyReport(combined));
    }
    return worstExitCode([finished.exitCode, combined.exitCode]);
  }
  await onReport?.(undefined);
  // A process ended without its report (interrupted, refused, killed): no verdict.
  return finished.exitCode === EXIT.OK ? EXIT.INCOMPLETE : finished.exitCode;
}

// ---------------------------------------------------------------------------
// check-blob-logs --processes

/** The check-blob-logs flags of `options` for a child: JSON out, the same logs. */
export function checkLogsChildArgs(options: CheckBlobLogsOptions, files: string[]): string[] {
  const args = ['check-blob-logs'];
  if (options.config !== undefined) args.push('--config', options.config);
  if (options.migrate === true) args.push('--migrate');
  if (options.concurrency !== undefined) args.push('--concurrency', String(options.concurrency));
  if (options.logDir !== undefined) args.push('--log-dir', String(options.logDir));
  args.push('--json', '--', ...files);
  return args;
}

/**
 * The children's check reports as one: counts summed per type, every "Not
 * found" record and failed copy, malformed lines and warnings once (every
 * process reads every line), the exit code made again from the sums.
 */
export function combineCheckReports(parts: CheckLogsReport[]): CheckLogsReport {
  const first = parts[0] as CheckLogsReport;
  const byType = new Map<string, CheckTypeReport>();
  for (const r of parts) {
    for (const t of r.byType) {
      const into = byType.get(t.type);
      if (!into) {
        byType.set(t.type, { ...t });
        continue;
      }
      for (const k of Object.keys(t) as (keyof CheckTypeReport)[]) {
        if (k !== 'type') (into[k] as number) += t[k] as number;
      }
    }
  }
  const totals = { ...first.totals };
  for (const r of parts.slice(1)) {
    for (const k of Object.keys(totals) as (keyof typeof totals)[]) totals[k] += r.totals[k];
  }
  const leftBehind = unresolvedRecords(totals);
  return {
    ...first,
    records: parts.reduce((a, r) => a + r.records, 0),
    duplicates: parts.reduce((a, r) => a + r.duplicates, 0),
    byType: [...byType.values()].sort((a, b) => (a.type < b.type ? -1 : a.type > b.type ? 1 : 0)),
    totals,
    notFound: parts.flatMap((r) => r.notFound),
    wrongSize: parts.flatMap((r) => r.wrongSize),
    errors: parts.flatMap((r) => r.errors),
    migrateFailures: parts.flatMap((r) => r.migrateFailures),
    exitCode: leftBehind > 0 || first.malformed.length > 0 ? 1 : 0,
  };
}

/**
 * Runs `blobshift check-blob-logs` as `count` children, each taking the
 * records with `id % count = k`, and prints one report (with one key file of
 * every "Not found" when there are many); the exit code is the worst child's.
 */
export async function runCheckLogsProcesses(
  options: CheckBlobLogsOptions,
  files: string[],
  count: number,
): Promise<number> {
  const finished = await runChildren('check-blob-logs', count, () => checkLogsChildArgs(options, files), {
    textLogs: true,
  });
  const reports = finished.outputs.flatMap((o) => (o ? [o as unknown as CheckLogsReport] : []));
  if (reports.length !== count) return finished.exitCode === EXIT.OK ? EXIT.INCOMPLETE : finished.exitCode;
  const check = await import('../engine/check-logs.js');
  const combined = combineCheckReports(reports);
  const logDir = options.logDir;
  const notFoundFile =
    combined.notFound.length > check.MAX_LISTED ? await check.writeNotFoundFile(combined, logDir) : undefined;
  if (options.json === true)
    printJson({ ...combined, ...(notFoundFile ? { notFoundFile } : {}), processes: count });
  else process.stdout.write(check.formatCheckReport(combined, notFoundFile ? { notFoundFile } : {}));
  return worstExitCode([finished.exitCode, combined.exitCode]);
}
