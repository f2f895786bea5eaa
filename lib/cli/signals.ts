/**
 * SIGINT/SIGTERM for long commands: the first signal asks the command to stop
 * gracefully (in-flight work finishes, the checkpoint is saved), the second
 * abandons in-flight work. Handlers are removed when the command ends.
 */
import type { Logger } from '../log.js';

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
  return {
    soft: soft.signal,
    hard: hard.signal,
    dispose() {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
    },
  };
}
