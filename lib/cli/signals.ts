/**
 * SIGINT/SIGTERM for long commands: the first signal asks the command to stop
 * gracefully (in-flight work finishes, the checkpoint is saved), the second
 * abandons in-flight work. Handlers are removed when the command ends.
 */
import { AbortedError } from '../contract/errors.js';
import type { Logger } from './log.js';

/**
 * Signals that arrive before a command has trapped them (while the CLI loads,
 * reads its config, opens the database, runs the preflight) would otherwise
 * kill the process (exit 143 for SIGTERM) in the middle of its setup. The CLI
 * installs this early handler first thing: the first signal is remembered,
 * the step in progress finishes (`throwIfInterrupted` between steps turns it
 * into exit 130), and a trap installed later starts out stopping. A second
 * signal before any trap ends the process at once (exit 130).
 */
let early: { installed: boolean; pending: string | undefined; traps: number } = {
  installed: false,
  pending: undefined,
  traps: 0,
};

export function trapEarlySignals(stderr: NodeJS.WritableStream = process.stderr): void {
  if (early.installed) return;
  early.installed = true;
  const on = (name: string) => {
    if (early.traps > 0) return; // a command's trap has it
    if (early.pending !== undefined) {
      stderr.write(`blobshift: ${name} again: stopping now\n`);
      process.exit(130);
    }
    early.pending = name;
    stderr.write(
      `blobshift: ${name}: stopping once the setup step in progress ends (again to stop at once)\n`,
    );
  };
  process.on('SIGINT', () => on('SIGINT'));
  process.on('SIGTERM', () => on('SIGTERM'));
}

/** The signal that arrived before any trap, if one did. */
export function pendingSignal(): string | undefined {
  return early.pending;
}

/** Throws `AbortedError` (exit 130) when a signal arrived during the setup. */
export function throwIfInterrupted(): void {
  if (early.pending !== undefined && early.traps === 0) {
    throw new AbortedError(`interrupted (${early.pending}) during setup, before any blob was touched`);
  }
}

/** Forgets the early state (tests). */
export function resetEarlySignals(): void {
  early = { installed: early.installed, pending: undefined, traps: 0 };
}

export interface StopSignals {
  /** Aborted on the first signal. */
  soft: AbortSignal;
  /** Aborted on the second. */
  hard: AbortSignal;
  dispose(): void;
}

/**
 * `messages.stopping` and `messages.abandoning` complete the lines logged on
 * the first and the second signal (`SIGINT: stopping; …`, `SIGINT again: …`).
 */
export function trapSignals(
  logger: Pick<Logger, 'warn'>,
  messages: { stopping: string; abandoning: string } = {
    stopping: 'in-flight work finishes (again to abandon it)',
    abandoning: 'abandoning in-flight work',
  },
): StopSignals {
  const soft = new AbortController();
  const hard = new AbortController();
  let count = 0;
  const on = (name: string) => {
    count++;
    if (count === 1) {
      logger.warn(`${name}: stopping; ${messages.stopping}`);
      soft.abort();
    } else {
      logger.warn(`${name} again: ${messages.abandoning}`);
      hard.abort();
    }
  };
  const onInt = () => on('SIGINT');
  const onTerm = () => on('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  early.traps++;
  // A signal that came during the setup: the command starts out stopping.
  const pending = early.pending;
  if (pending !== undefined) {
    early.pending = undefined;
    on(pending);
  }
  let disposed = false;
  return {
    soft: soft.signal,
    hard: hard.signal,
    dispose() {
      if (disposed) return;
      disposed = true;
      early.traps--;
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
    },
  };
}
