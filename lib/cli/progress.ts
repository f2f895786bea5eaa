/**
 * Progress on stderr for long commands (backfill, check-blob-logs, verify).
 * On a TTY: a redrawn bar (done/total blobs, bytes, rate, ETA). Elsewhere
 * (logs, CI): a plain line every `intervalMs`, and one at the end:
 *   `progress: 1200/20000 blobs (6.0%), 4.7 MiB, 350 blobs/s, eta 48s`
 * Counts are finished blobs, as the caller reports them; the rate is measured
 * over the last 30 seconds, so a resumed run's earlier work does not inflate it.
 */
import cliProgress from 'cli-progress';
import { humanBytes, humanDuration } from './output.js';

export interface ProgressOptions {
  /** Blobs to do in all (0 or less: unknown). */
  total: number;
  /** Bytes to do in all, when known. */
  totalBytes?: number;
  /** False: a reporter that prints nothing (`--no-progress`). */
  enabled: boolean;
  /** Draw a bar (default: `stream.isTTY`). */
  isTTY?: boolean;
  /** Where to write (default `process.stderr`). */
  stream?: NodeJS.WritableStream;
  /** Plain mode: milliseconds between lines (default 10000). */
  intervalMs?: number;
  /** Blobs and bytes already done when the reporter starts (a resumed run). */
  done?: number;
  bytes?: number;
  /** Clock in milliseconds (tests). */
  now?: () => number;
}

export interface Progress {
  /** The cumulative count of finished blobs and bytes. */
  update(done: number, bytes: number): void;
  /** Changes the total (more rows appeared, or the estimate was refined). */
  setTotal(total: number): void;
  /** Stops the timer and prints the final state; further calls do nothing. */
  stop(): void;
}

/** A snapshot of the figures a progress line shows. */
export interface ProgressState {
  done: number;
  total: number;
  bytes: number;
  totalBytes: number | undefined;
  /** Blobs per second over the recent window. */
  rate: number;
  /** Seconds left at that rate; undefined when unknown. */
  etaSeconds: number | undefined;
}

const RATE_WINDOW_MS = 30_000;

/** Blobs per second over a sliding window of samples. */
class RateMeter {
  readonly #samples: { t: number; done: number }[] = [];

  constructor(t: number, done: number) {
    this.#samples.push({ t, done });
  }

  add(t: number, done: number): void {
    this.#samples.push({ t, done });
    // Keep one sample at or before the window's start so the window stays full.
    while (this.#samples.length > 2 && (this.#samples[1]?.t ?? t) <= t - RATE_WINDOW_MS)
      this.#samples.shift();
  }

  rate(t: number, done: number): number {
    const first = this.#samples[0];
    if (!first) return 0;
    const seconds = (t - first.t) / 1000;
    if (seconds <= 0) return 0;
    return Math.max(0, (done - first.done) / seconds);
  }
}

/** Formats a rate: one decimal below 10, whole numbers above. */
function showRate(rate: number): string {
  return rate < 10 ? rate.toFixed(1) : String(Math.round(rate));
}

/** The plain progress line for `state`. */
export function formatProgressLine(state: ProgressState): string {
  const parts: string[] = [];
  if (state.total > 0) {
    const pct = Math.min(100, (state.done / state.total) * 100);
    parts.push(`${state.done}/${state.total} blobs (${pct.toFixed(1)}%)`);
  } else {
    parts.push(`${state.done} blobs`);
  }
  parts.push(
    state.totalBytes !== undefined && state.totalBytes > 0
      ? `${humanBytes(state.bytes)} of ${humanBytes(state.totalBytes)}`
      : humanBytes(state.bytes),
  );
  parts.push(`${showRate(state.rate)} blobs/s`);
  if (state.total > 0)
    parts.push(`eta ${state.etaSeconds === undefined ? '?' : humanDuration(state.etaSeconds)}`);
  return `progress: ${parts.join(', ')}`;
}

const NOOP: Progress = { update() {}, setTotal() {}, stop() {} };

/** A progress reporter: a bar on a TTY, periodic lines elsewhere, nothing when disabled. */
export function createProgress(options: ProgressOptions): Progress {
  if (!options.enabled) return NOOP;
  const stream = options.stream ?? process.stderr;
  const now = options.now ?? Date.now;
  const isTTY = options.isTTY ?? (stream as { isTTY?: boolean }).isTTY === true;

  let total = Math.max(0, options.total);
  let done = options.done ?? 0;
  let bytes = options.bytes ?? 0;
  const meter = new RateMeter(now(), done);
  let stopped = false;

  const state = (): ProgressState => {
    const t = now();
    const rate = meter.rate(t, done);
    const left = Math.max(0, total - done);
    const etaSeconds = total > 0 && left === 0 ? 0 : rate > 0 && total > 0 ? left / rate : undefined;
    return { done, total, bytes, totalBytes: options.totalBytes, rate, etaSeconds };
  };

  if (isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream,
        format: (opts, params, payload: { text?: string }) => {
          const width = opts.barsize ?? 30;
          const filled = total > 0 ? Math.round(Math.min(1, params.progress) * width) : 0;
          const drawn = `${'█'.repeat(filled)}${'░'.repeat(width - filled)}`;
          return `${drawn} ${payload.text ?? ''}`;
        },
        hideCursor: true,
        clearOnComplete: false,
        barsize: 30,
        fps: 5,
      },
      cliProgress.Presets.shades_classic,
    );
    const text = (): string => formatProgressLine(state()).replace(/^progress: /, '');
    bar.start(Math.max(total, 1), Math.min(done, Math.max(total, 1)), { text: text() });
    return {
      update(d, b) {
        if (stopped) return;
        done = d;
        bytes = b;
        meter.add(now(), done);
        if (done > total && total > 0) {
          total = done;
          bar.setTotal(total);
        }
        bar.update(Math.min(done, Math.max(total, 1)), { text: text() });
      },
      setTotal(n) {
        if (stopped) return;
        total = Math.max(0, n);
        bar.setTotal(Math.max(total, 1));
        bar.update(Math.min(done, Math.max(total, 1)), { text: text() });
      },
      stop() {
        if (stopped) return;
        stopped = true;
        bar.update(Math.min(done, Math.max(total, 1)), { text: text() });
        bar.stop();
      },
    };
  }

  const print = (): void => {
    stream.write(`${formatProgressLine(state())}\n`);
  };
  const timer = setInterval(print, Math.max(10, options.intervalMs ?? 10_000));
  timer.unref();
  return {
    update(d, b) {
      if (stopped) return;
      done = d;
      bytes = b;
      meter.add(now(), done);
      if (done > total && total > 0) total = done;
    },
    setTotal(n) {
      if (!stopped) total = Math.max(0, n);
    },
    stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      print();
    },
  };
}
