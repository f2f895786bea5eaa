/**
 * Retrying one request (a HEAD, a metadata query, a read) the way the copy
 * path retries a blob: transient errors only, exponential backoff with full
 * jitter, `AbortedError` as soon as the signal fires.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { AbortedError } from '../contract/errors.js';
import type { RetryPolicy } from './copy.js';
import { isTransientError } from './errors.js';

export async function withRetry<T>(
  fn: () => Promise<T>,
  policy: RetryPolicy,
  opts: { signal?: AbortSignal; what?: string; onRetry?: (err: unknown, attempt: number) => void } = {},
): Promise<T> {
  const what = opts.what ?? 'operation';
  for (let n = 1; ; n++) {
    if (opts.signal?.aborted) throw new AbortedError(`${what} interrupted`);
    try {
      return await fn();
    } catch (err) {
      if (opts.signal?.aborted) throw new AbortedError(`${what} interrupted`, { cause: err });
      if (!isTransientError(err) || n >= policy.attempts) throw err;
      opts.onRetry?.(err, n);
      const cap = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (n - 1));
      await sleep(Math.random() * cap, undefined, opts.signal ? { signal: opts.signal } : undefined).catch(
        () => {},
      );
    }
  }
}
