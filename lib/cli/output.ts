/**
 * Printing helpers for the CLI. stdout carries summaries and `--json`; every
 * printed value passes through the redactor first.
 */
import { redact, redactString } from '../contract/redact.js';

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

export { humanBytes, humanDuration } from '../contract/format.js';
