/**
 * Central error handling and exit codes for the CLI. Every subcommand runs
 * inside `runCommand`, which turns a thrown error into one redacted line on
 * stderr and an exit code (DESIGN.md, CLI): no stack traces unless
 * `BLOBSHIFT_DEBUG=1`.
 */
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import {
  AbortedError,
  BlobShiftError,
  ConfigError,
  InfrastructureError,
  InvalidKeyError,
  LogFormatError,
  PreflightError,
  RunStateError,
} from '../contract/errors.js';
import { redactString } from '../contract/redact.js';
import { UsageError } from './args.js';

/** Process exit codes. */
export const EXIT = {
  /** Finished clean. */
  OK: 0,
  /** Finished, but blobs are missing or failed. */
  INCOMPLETE: 1,
  /** Bad usage, config or input, or a failed preflight: nothing was written. */
  USAGE: 2,
  /** Infrastructure lost mid-run: the checkpoint is saved and a rerun resumes. */
  INFRA: 3,
  /** Interrupted (SIGINT/SIGTERM). */
  INTERRUPTED: 130,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export interface RunOptions {
  /** Where the error line goes (default `process.stderr`). */
  stderr?: NodeJS.WritableStream;
  /** Environment read for `BLOBSHIFT_DEBUG` (default `process.env`). */
  env?: NodeJS.ProcessEnv;
  /** Prefix of the error line (default `blobshift`). */
  prefix?: string;
}

/** Errors that mean "the user must change something": exit 2, message only. */
export function isUserError(err: unknown): boolean {
  if (
    err instanceof UsageError ||
    err instanceof ConfigError ||
    err instanceof LogFormatError ||
    err instanceof PreflightError ||
    err instanceof RunStateError ||
    err instanceof InvalidKeyError
  ) {
    return true;
  }
  // The same families raised as a plain BlobShiftError with their code (an unreadable log file).
  const code = err instanceof BlobShiftError ? err.code : undefined;
  return code !== undefined && USER_ERROR_CODES.has(code);
}

const USER_ERROR_CODES = new Set(['E_CONFIG', 'E_LOG_FORMAT', 'E_PREFLIGHT', 'E_RUN_STATE', 'E_INVALID_KEY']);

/** The exit code for an error that reached the top. */
export function exitCodeFor(err: unknown): number {
  if (isUserError(err)) return EXIT.USAGE;
  if (err instanceof AbortedError) return EXIT.INTERRUPTED;
  if (err instanceof InfrastructureError) return EXIT.INFRA;
  return EXIT.INCOMPLETE;
}

/** Collapses a message onto one line. */
export function oneLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}

/** The stack of `err` and its causes, redacted, for `BLOBSHIFT_DEBUG=1`. */
function debugDetail(err: unknown): string {
  const parts: string[] = [];
  let current: unknown = err;
  for (let depth = 0; current !== undefined && depth < 8; depth++) {
    const text = current instanceof Error ? (current.stack ?? messageOf(current)) : String(current);
    parts.push(depth === 0 ? text : `caused by: ${text}`);
    current = current instanceof Error ? current.cause : undefined;
  }
  return redactString(parts.join('\n'));
}

/**
 * Writes the one-line report of `err` to `stderr` and returns its exit code.
 * User errors (usage, config, input, preflight, run state) → 2; an abort →
 * 130; anything else → 1, with the stack only when `BLOBSHIFT_DEBUG=1`.
 */
export function reportError(err: unknown, options: RunOptions = {}): number {
  const stderr = options.stderr ?? process.stderr;
  const env = options.env ?? process.env;
  const prefix = options.prefix ?? 'blobshift';
  const code = exitCodeFor(err);
  const debug = env.BLOBSHIFT_DEBUG === '1';
  const message = oneLine(redactString(messageOf(err)));
  if (code === EXIT.INCOMPLETE) {
    const hint = debug ? '' : ' (set BLOBSHIFT_DEBUG=1 for the stack trace)';
    stderr.write(`${prefix}: unexpected error: ${message}${hint}\n`);
  } else {
    stderr.write(`${prefix}: ${message}\n`);
  }
  if (debug) stderr.write(`${debugDetail(err)}\n`);
  return code;
}

/** Runs `fn` and returns its exit code, or the code of the error it throws (reported on stderr). */
export async function runCommand(fn: () => Promise<number>, options: RunOptions = {}): Promise<number> {
  try {
    return await fn();
  } catch (err) {
    return reportError(err, options);
  }
}

/** True when the module at `moduleUrl` (its `import.meta.url`) is the process's entry point. */
export function isMainModule(moduleUrl: string): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return pathToFileURL(realpathSync(entry)).href === moduleUrl;
  } catch {
    return false;
  }
}

/** Lets stdout and stderr drain, then ends the process with `code`. */
export function exitWith(code: number): void {
  process.exitCode = code;
  let pending = 2;
  const done = (): void => {
    pending -= 1;
    if (pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}
