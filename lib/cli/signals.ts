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

export function trapSignals(logger: Pick<Logger, 'warn'>, what = 'in-flight work finishes'): StopSignals {
  const soft = new AbortController();
  const hard = new AbortController();
  let count = 0;
  const on = (name: string) => {
    count++;
    if (count === 1) {
      logger.warn(`${name}: stopping; ${what} (${name} again to abandon it)`);
      soft.abort();
    } else {
      logger.warn(`${name} again: abandoning in-flight work`);
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
