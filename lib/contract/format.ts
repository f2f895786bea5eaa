/**
 * How sizes and durations read in every command's output: one formatter
 * each, binary units for bytes (KiB, MiB, GiB: the units S3 part sizes and
 * memory figures use).
 */

const BYTE_UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'] as const;

/**
 * Bytes in binary units (1 KiB = 1024 B) with one decimal: `512 B`,
 * `1.2 KiB`, `4.7 MiB`. The one byte formatter of every command's output.
 */
export function humanBytes(n: number): string {
  if (!Number.isFinite(n)) return `${n} B`;
  const sign = n < 0 ? '-' : '';
  let value = Math.abs(n);
  if (value < 1024) return `${sign}${Math.round(value)} B`;
  let unit = 0;
  value /= 1024;
  // Move up a unit while the rounded value would print as 1024.0 or more.
  while (value >= 1023.95 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
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
