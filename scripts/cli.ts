#!/usr/bin/env node
/**
 * The `blobshift` command. Parses and validates flags (lib/cli/args.ts), then
 * loads the one subcommand module it needs (`./<name>.js`) and calls its
 * `main(options, args)`, exiting with the number it returns. Only commander
 * and the small CLI helpers load up front, so `--help` starts fast; the AWS
 * SDK, knex and BullMQ load inside the subcommands that use them.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import {
  DEFAULTS,
  parseChunkSize,
  parseConcurrency,
  parseExistence,
  parseLogFormat,
  parsePath,
  parseProcesses,
  parseQueueName,
  parseQueueUrl,
  parseRate,
  parseRunName,
  parseShard,
  parseTypes,
  UsageError,
  urlPassword,
} from '../lib/cli/args.js';
import type { CommandOptions } from '../lib/cli/options.js';
import { EXIT, exitWith, isMainModule, reportError, runCommand } from '../lib/cli/run.js';
import { pendingSignal, trapEarlySignals } from '../lib/cli/signals.js';
import { registerSecret } from '../lib/contract/redact.js';

export const COMMANDS = [
  'backfill',
  'rollback',
  'worker',
  'check-blob-logs',
  'verify',
  'estimate',
  'status',
  'cleanup-old',
] as const;
export type CommandName = (typeof COMMANDS)[number];

/** What every subcommand module exports: `main(options, operands)`. Returns the process exit code. */
export type SubcommandMain<N extends CommandName = CommandName> = (
  options: CommandOptions[N],
  args: string[],
) => Promise<number>;

/** Runs a subcommand with its parsed options and operands; returns the exit code. */
export type Dispatch = <N extends CommandName>(
  name: N,
  options: CommandOptions[N],
  args: string[],
) => Promise<number>;

/** The CLI's flag defaults (defined beside the flag parsers, in lib/cli/args.ts). */
export { DEFAULTS };

// The AWS SDK warns once per process that its releases after January 2027 need
// Node 22; the CLI's operators get that from the README, not on every run.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const loaders: { [N in CommandName]: () => Promise<{ main: SubcommandMain<N> }> } = {
  backfill: () => import('./backfill.js'),
  rollback: () => import('./rollback.js'),
  worker: () => import('./worker.js'),
  'check-blob-logs': () => import('./check-blob-logs.js'),
  verify: () => import('./verify.js'),
  estimate: () => import('./estimate.js'),
  status: () => import('./status.js'),
  'cleanup-old': () => import('./cleanup-old.js'),
};

/** Loads `./<name>.js` and runs its `main`. */
export const runSubcommand: Dispatch = async (name, options, args) => {
  const mod = await loaders[name]();
  return mod.main(options, args);
};

/** The version in the package.json above this file (scripts/ from a checkout, dist/scripts/ when built). */
export function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
        name?: unknown;
        version?: unknown;
      };
      if (pkg.name === 'blobshift' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // not here: look one directory up
    }
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return '0.0.0-unknown';
}

/** Marks which command a commander error came from (set on the error by `buildProgram`). */
const FAILED_COMMAND = Symbol('blobshift.failedCommand');
type TaggedCommanderError = CommanderError & { [FAILED_COMMAND]?: string };

export interface CliOptions {
  /** Runs the chosen subcommand (default: load its module and call `main`). */
  dispatch?: Dispatch;
  /** Help and version output (default `process.stdout`). */
  stdout?: NodeJS.WritableStream;
  /** Errors (default `process.stderr`). */
  stderr?: NodeJS.WritableStream;
}

const HELP_AFTER = `
Exit codes:
  0    finished clean
  1    finished, but blobs are missing or failed
  2    bad usage, config or input, or a failed preflight (nothing written)
  3    infrastructure lost mid-run (checkpoint saved; rerun resumes)
  130  interrupted

Summaries and --json go to stdout; progress and logs to stderr.
Run 'blobshift <command> --help' for a command's flags.`;

/** Registers a `--queue` URL's password so it is redacted from everything printed. */
function queueUrl(value: string): string {
  const url = parseQueueUrl(value);
  const password = urlPassword(url);
  if (password !== undefined) registerSecret(password);
  return url;
}

/**
 * The flags several subcommands share, each defined once: its parser and its
 * default (from `DEFAULTS`); the help text where it differs by command is
 * the caller's. Each returns the command, for chaining.
 */
const flag = {
  config: (cmd: Command): Command =>
    cmd.option(
      '-c, --config <file>',
      'config file',
      (v: string) => parsePath(v, '--config'),
      DEFAULTS.config,
    ),
  run: (cmd: Command, what: string, fallback: string = DEFAULTS.run): Command =>
    cmd.option('--run <name>', what, (v: string) => parseRunName(v), fallback),
  types: (cmd: Command): Command =>
    cmd.option('--types <a,b>', 'only these blob types (comma list)', (v: string) => parseTypes(v)),
  logDir: (cmd: Command, what: string): Command =>
    cmd.option('--log-dir <dir>', what, (v: string) => parsePath(v, '--log-dir'), DEFAULTS.logDir),
  chunkSize: (cmd: Command): Command =>
    cmd.option(
      '--chunk-size <n>',
      'metadata rows per chunk',
      (v: string) => parseChunkSize(v),
      DEFAULTS.chunkSize,
    ),
  concurrency: (cmd: Command, what: string): Command =>
    cmd.option('--concurrency <n>', what, (v: string) => parseConcurrency(v), DEFAULTS.concurrency),
  shard: (cmd: Command): Command =>
    cmd.option('--shard <I/N>', 'only rows with id % N = I (0 ≤ I < N)', (v: string) => parseShard(v)),
  existence: (cmd: Command, backend: 'new' | 'old'): Command =>
    cmd.option(
      '--existence <mode>',
      `list: one listing snapshot of the ${backend} backend; head: a HEAD per blob`,
      (v: string) => parseExistence(v),
      DEFAULTS.existence,
    ),
  maxRate: (cmd: Command): Command =>
    cmd.option('--max-rate <n>', 'at most N blobs per second', (v: string) => parseRate(v)),
  processes: (cmd: Command, what: string): Command =>
    cmd.option('--processes <n>', what, (v: string) => parseProcesses(v)),
  json: (cmd: Command): Command => cmd.option('--json', 'print the result as one JSON object on stdout'),
  /** `--no-progress`, then `--log-format`. */
  output: (cmd: Command): Command =>
    cmd
      .option('--no-progress', 'no progress output on stderr')
      .option(
        '--log-format <format>',
        'log lines on stderr: text or json',
        (v: string) => parseLogFormat(v),
        DEFAULTS.logFormat,
      ),
  queue: (cmd: Command, what: string): Command => cmd.option('--queue [url]', what, queueUrl),
  queueName: (cmd: Command): Command =>
    cmd.option(
      '--queue-name <name>',
      'BullMQ queue name',
      (v: string) => parseQueueName(v),
      DEFAULTS.queueName,
    ),
};

/** Adds a subcommand (with `-c, --config`) to the program. */
type AddCommand = (name: CommandName, description: string) => Command;
/**
 * Makes `cmd` dispatch to the subcommand `name` with its parsed options,
 * after `check` (a cross-flag rule commander cannot state) passes.
 */
type SetAction = <N extends CommandName>(
  cmd: Command,
  name: N,
  check?: (opts: CommandOptions[N]) => void,
) => void;

function defineBackfill(add: AddCommand, act: SetAction): void {
  const cmd = add('backfill', 'copy every referenced blob the new backend lacks (resumable, shardable)');
  flag.run(cmd, 'run name (checkpoints resume per run)');
  flag.logDir(cmd, 'directory for the missing-blob logs');
  flag.chunkSize(cmd);
  flag.concurrency(cmd, 'blobs copied at once');
  flag.types(cmd);
  flag.shard(cmd);
  flag.existence(cmd, 'new');
  flag.maxRate(cmd).option('--reset', 'start the run over, forgetting its checkpoint');
  flag
    .processes(cmd, 'run N processes on disjoint shards of this run (auto: one a core)')
    .option('--dry-run', 'estimate, and count what the new backend already holds; write nothing');
  flag.json(cmd);
  flag.output(cmd);
  flag.queue(
    cmd,
    "spread the work over workers through Redis (redis://HOST:PORT[/DB]; without a value, the config's queue.url)",
  );
  flag.queueName(cmd);
  act(cmd, 'backfill');
}

function defineRollback(add: AddCommand, act: SetAction): void {
  const cmd = add(
    'rollback',
    "after a flip, copy the app's writes from new back to old, replacing copies in old the metadata proves stale",
  );
  flag.run(cmd, 'run name (checkpoints resume per run; default rollback)', DEFAULTS.rollbackRun);
  flag.logDir(cmd, 'directory for the missing-blob logs');
  flag.chunkSize(cmd);
  flag.concurrency(cmd, 'blobs copied at once');
  flag.types(cmd);
  flag.shard(cmd);
  flag.existence(cmd, 'old');
  flag
    .maxRate(cmd)
    .option('--reset', 'start the run over (a new pass), forgetting its checkpoint')
    .option('--dry-run', 'count what old lacks or holds with another size; write nothing');
  flag.json(cmd);
  flag.output(cmd);
  act(cmd, 'rollback');
}

function defineWorker(add: AddCommand, act: SetAction): void {
  const cmd = add('worker', 'take backfill chunks from a Redis queue and copy them');
  flag.queue(
    cmd,
    "Redis queue (redis://HOST:PORT[/DB]; without the flag or a value, the config's queue.url)",
  );
  flag.queueName(cmd);
  flag.concurrency(cmd, 'blobs copied at once');
  act(cmd, 'worker');
}

function defineCheckBlobLogs(add: AddCommand, act: SetAction): void {
  const cmd = add(
    'check-blob-logs',
    'classify the blobs a backfill could not find; --migrate re-copies them',
  );
  cmd.option('--migrate', 'copy the blobs found in the old backend');
  flag.processes(cmd, 'check (and copy) in N processes (auto: one a core)');
  cmd.argument('<log...>', 'missing-blob log files');
  flag.concurrency(cmd, 'blobs checked at once');
  flag.logDir(cmd, 'directory for the logs of this check');
  flag.json(cmd);
  act(cmd, 'check-blob-logs', () => {
    for (const file of cmd.args) parsePath(file, 'LOG');
  });
}

function defineVerify(add: AddCommand, act: SetAction): void {
  const cmd = add(
    'verify',
    'check every referenced blob is in the new backend; prints SAFE TO FLIP or NOT SAFE',
  )
    .option('--checksum', 'also compare content hashes (reads every blob)')
    .option(
      '--reverse',
      'judge the old backend instead (after a rollback: is old ready to be the only one?)',
    );
  flag.processes(cmd, 'judge the rows in N processes (auto: one a core)');
  flag.types(cmd);
  flag.logDir(cmd, 'directory for the report files');
  flag.json(cmd);
  act(cmd, 'verify');
}

function defineEstimate(add: AddCommand, act: SetAction): void {
  const cmd = add('estimate', 'count blobs and bytes per type from the metadata alone');
  flag.types(cmd);
  flag.json(cmd);
  act(cmd, 'estimate');
}

function defineStatus(add: AddCommand, act: SetAction): void {
  const cmd = add('status', "print a run's saved state");
  flag.run(cmd, 'run name');
  flag.json(cmd);
  act(cmd, 'status');
}

function defineCleanupOld(add: AddCommand, act: SetAction): void {
  const cmd = add(
    'cleanup-old',
    'after a clean verify, delete the old copies proven equal to the new ones (writes an audit log)',
  )
    .option('--yes', 'confirm: delete from the old backend (not needed with --dry-run)')
    .option('--dry-run', 'list what would be deleted; delete nothing');
  flag.logDir(cmd, 'directory for the audit log');
  act(cmd, 'cleanup-old', (opts) => {
    // A dry run deletes nothing: it needs no confirmation.
    if (opts.yes !== true && opts.dryRun !== true) {
      throw new UsageError(
        "cleanup-old deletes blobs from the old backend: pass --yes to confirm (after a clean 'blobshift verify')",
        { flag: '--yes' },
      );
    }
  });
}

/**
 * The `blobshift` program with every subcommand and flag of the CLI
 * contract. Commander errors are thrown (`exitOverride`), not printed: the
 * caller formats them (see `runCli`).
 */
export function buildProgram(options: CliOptions = {}): Command {
  const stdout = options.stdout ?? process.stdout;
  const stderr = options.stderr ?? process.stderr;
  const dispatch = options.dispatch ?? runSubcommand;

  const failedIn: { name?: string } = {};
  const program = new Command('blobshift');
  program
    .description(
      "Move an application's blobs between storage backends (filesystem, S3) while it keeps running.",
    )
    .version(packageVersion(), '-V, --version', 'print the version')
    .helpOption('-h, --help', 'show help')
    .helpCommand('help [command]', 'show help for a command')
    // Throw commander's errors instead of exiting, tagged with the command they came from
    // (subcommands copy this callback when created below).
    .exitOverride((err: TaggedCommanderError) => {
      if (failedIn.name !== undefined) err[FAILED_COMMAND] = failedIn.name;
      throw err;
    })
    .configureOutput({
      writeOut: (s) => void stdout.write(s),
      writeErr: (s) => void stderr.write(s),
      outputError: () => {
        failedIn.name = undefined;
      },
    })
    .addHelpText('after', HELP_AFTER);

  const add: AddCommand = (name, description) => {
    const cmd = program.command(name).description(description);
    // Commander reports through outputError just before it throws: remember the command.
    cmd.configureOutput({
      outputError: () => {
        failedIn.name = name;
      },
    });
    return flag.config(cmd);
  };
  const act: SetAction = (cmd, name, check) => {
    cmd.action(async () => {
      // The one place commander's parsed values become a command's options: the flags
      // registered for it, one each, with their DEFAULTS (lib/cli/options.ts spells them out).
      const opts = cmd.opts<CommandOptions[typeof name]>();
      check?.(opts);
      await dispatch(name, opts, [...cmd.args]);
    });
  };

  for (const define of [
    defineBackfill,
    defineRollback,
    defineWorker,
    defineCheckBlobLogs,
    defineVerify,
    defineEstimate,
    defineStatus,
    defineCleanupOld,
  ]) {
    define(add, act);
  }
  return program;
}

/**
 * Reports a commander error as one line, `blobshift <command>: <what> (see …)`,
 * and returns its exit code: 0 for help and version, 2 for anything else.
 */
function reportCommanderError(err: TaggedCommanderError, stderr: NodeJS.WritableStream | undefined): number {
  if (err.exitCode === 0) return EXIT.OK;
  if (err.code === 'commander.help') {
    // No command given: commander printed the help on stderr already.
    return reportError(new UsageError("no command given: run 'blobshift --help' for the list"), { stderr });
  }
  const name = err[FAILED_COMMAND];
  const what = err.message.replace(/^error:\s*/, '').replace(/\.$/, '');
  const seeHelp = name === undefined ? 'blobshift --help' : `blobshift ${name} --help`;
  const prefix = name === undefined ? 'blobshift' : `blobshift ${name}`;
  return reportError(new UsageError(`${what}; see '${seeHelp}'`), { stderr, prefix });
}

/**
 * Parses `argv` (the arguments after the program name), runs the subcommand
 * and returns the exit code. Errors are reported on stderr as one line.
 */
export async function runCli(argv: readonly string[], options: CliOptions = {}): Promise<number> {
  // Before anything slow: a signal during the setup becomes exit 130, not a kill.
  trapEarlySignals(options.stderr);
  const dispatch = options.dispatch ?? runSubcommand;
  let result: number = EXIT.OK;
  const program = buildProgram({
    ...options,
    dispatch: async (name, opts, args) => {
      result = await dispatch(name, opts, args);
      return result;
    },
  });
  return runCommand(
    async () => {
      try {
        await program.parseAsync([...argv], { from: 'user' });
      } catch (err) {
        if (err instanceof CommanderError) return reportCommanderError(err, options.stderr);
        throw err;
      }
      // A command that traps no signals (estimate, status) ran to its end: the signal still counts.
      if (pendingSignal() !== undefined) return EXIT.INTERRUPTED;
      return Number.isInteger(result) && result >= 0 && result <= 255 ? result : EXIT.INCOMPLETE;
    },
    { stderr: options.stderr },
  );
}

if (isMainModule(import.meta.url)) {
  void runCli(process.argv.slice(2)).then(exitWith);
}
