/**
 * The building blocks of the config file's schema, shared by lib/config and
 * by each backend's own section (`lib/backends/<type>/config.ts`): strict
 * objects whose unknown keys get a did-you-mean message, integers and
 * booleans that also come as strings (from environment variables), file
 * modes.
 */
import { z } from 'zod';

/**
 * Edit distance between two short strings: insertions, deletions,
 * substitutions and swaps of neighbours (`nwe` → `new` is 1), each costing 1.
 */
export function editDistance(a: string, b: string): number {
  const rows: number[][] = [];
  for (let i = 0; i <= a.length; i++) {
    const row: number[] = [i];
    for (let j = 1; j <= b.length; j++) {
      if (i === 0) {
        row.push(j);
        continue;
      }
      const above = rows[i - 1] as number[];
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min((above[j] as number) + 1, (row[j - 1] as number) + 1, (above[j - 1] as number) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d = Math.min(d, ((rows[i - 2] as number[])[j - 2] as number) + 1);
      }
      row.push(d);
    }
    rows.push(row);
  }
  return (rows[a.length] as number[])[b.length] as number;
}

/** The allowed word closest to `word`, when it is close enough to be a likely typo. */
export function didYouMean(word: string, allowed: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const candidate of allowed) {
    const d = candidate.toLowerCase() === word.toLowerCase() ? 0 : editDistance(word, candidate);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  const limit = word.length <= 3 ? 1 : Math.max(2, Math.floor(word.length / 3));
  return bestDistance <= limit ? best : undefined;
}

function unknownKeyMessage(key: string, allowed: readonly string[]): string {
  const guess = didYouMean(key, allowed);
  return (
    `unknown key "${key}"` +
    (guess !== undefined ? `; did you mean "${guess}"?` : '') +
    ` (allowed: ${allowed.join(', ')})`
  );
}

/** A strict object whose unknown keys get a did-you-mean message. */
export function strict<T extends z.ZodRawShape>(shape: T) {
  const allowed = Object.keys(shape);
  return z.strictObject(shape, {
    error: (iss) =>
      iss.code === 'unrecognized_keys' ? unknownKeyMessage(String(iss.keys[0]), allowed) : undefined,
  });
}

const intFromString = (v: unknown) => (typeof v === 'string' && /^-?\d+$/.test(v.trim()) ? Number(v) : v);
const boolFromString = (v: unknown) => (v === 'true' ? true : v === 'false' ? false : v);

/** An integer in `[min, max]`, or a string of one. */
export function int(min: number, max = Number.MAX_SAFE_INTEGER) {
  return z.preprocess(intFromString, z.number().int().min(min).max(max));
}

/** A boolean, or `"true"` / `"false"`. */
export const bool = z.preprocess(boolFromString, z.boolean());

export const nonEmpty = z.string().min(1, { error: 'must not be empty' });

/** `"0644"` (octal string) or a number of mode bits (0–0o777). */
export const mode = z.preprocess(
  (v) => {
    if (typeof v === 'string' && /^0?[0-7]{3}$/.test(v.trim())) return Number.parseInt(v.trim(), 8);
    return v;
  },
  z
    .number({ error: 'must be an octal string such as "0644"' })
    .int()
    .min(0)
    .max(0o777, { error: 'is not a file mode: write it as an octal string, e.g. "0644"' }),
);
