/**
 * Printing helpers for the CLI. stdout carries summaries and `--json`; every
 * printed value passes through the redactor first.
 */
import { redact, redactString } from '../redact.js';

/** Writes `value` as one pretty-printed JSON document (redacted) and a newline to `stream` (default stdout). */
export function printJson(value: unknown, stream: NodeJS.WritableStream = process.stdout): void {
  const text = JSON.stringify(
    redact(value),
    (_key, v: unknown) => (typeof v === 'bigint' ? v.toString() : v),
    2,
  );
  stream.write(`${text ?? 'null'}\n`);
}

/** Writes lines of text (redacted) to `stream` (default stdout), each ending in a newline. */
export function printLines(
  lines: string | readonly string[],
  stream: NodeJS.WritableStream = process.stdout,
): void {
  const all = typeof lines === 'string' ? [lines] : lines;
  if (all.length === 0) return;
  stream.write(`${all.map((l) => redactString(l)).join('\n')}\n`);
}

const BYTE_UNITS = ['kB', 'MB', 'GB', 'TB', 'PB', 'EB'] as const;

/** Bytes in decimal units with one decimal: `512 B`, `1.2 kB`, `4.7 MB`. */
export function humanBytes(n: number): string {
  if (!Number.isFinite(n)) return `${n} B`;
  const sign = n < 0 ? '-' : '';
  let value = Math.abs(n);
  if (value < 1000) return `${sign}${Math.round(value)} B`;
  let unit = 0;
  value /= 1000;
  // Move up a unit while the rounded value would print as 1000.0 or more.
  while (value >= 999.95 && unit < BYTE_UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${sign}${value.toFixed(1)} ${BYTE_UNITS[unit]}`;
}

/** Seconds as a short duration: `0.4s`, `48s`, `2m05s`, `1h01m`, `3d04h`. */
export function humanDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  if (seconds < 0) return `-${humanDuration(-seconds)}`;
  if (seconds < 10 && !Number.isInteger(seconds)) {
    const tenths = Math.round(seconds * 10) / 10;
    if (tenths < 10) return `${tenths.toFixed(1)}s`;
  }
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const pad = (v: number): string => String(v).padStart(2, '0');
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor((s % 86400) / 3600))}h`;
}
