/**
 * The missing-blob log: JSON lines, UTF-8, one record per blob that a run
 * could not copy. A new file per attempt, created 0600 in a 0700 directory,
 * never overwritten:
 *   backfill-<run>-<UTC yyyymmddThhmmssZ>[-shard-i-of-n].jsonl
 *   {"id":42,"key":"3f2a…","type":"attachment","parentId":"case-17","error":"not found","at":"…"}
 */
import { createReadStream, type Stats } from 'node:fs';
import { type FileHandle, mkdir, open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { BlobShiftError, errorMessage, isErrnoException } from '../contract/errors.js';
import { keyProblem } from '../contract/keys.js';
import type { ShardSpec } from '../contract/meta.js';

export interface MissingRecord {
  id: number;
  key: string;
  type: string;
  parentId: string;
  /** `not found`, `too many retries`, or a short message of the last error. */
  error: string;
  /** ISO-8601 UTC time the record was written. */
  at: string;
}

export const NOT_FOUND = 'not found';
export const TOO_MANY_RETRIES = 'too many retries';

/** `20261121T100000Z` */
export function compactUtc(date: Date): string {
  return date
    .toISOString()
    .replace(/\.\d{3}Z$/, 'Z')
    .replace(/[-:]/g, '');
}

/** The file name of one attempt's log. */
export function missingLogName(prefix: string, run: string, date: Date, shard?: ShardSpec): string {
  const shardPart = shard && shard.count > 1 ? `-shard-${shard.index}-of-${shard.count}` : '';
  return `${prefix}-${run}-${compactUtc(date)}${shardPart}.jsonl`;
}

/** Creates `dir` (0700 when new) and returns it. */
export async function ensureLogDir(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return dir;
}

/**
 * Appends records to a new log file. Writes are buffered; `flush()` makes
 * everything written so far durable (fdatasync) — the engine flushes before it
 * saves a checkpoint that covers the records.
 */
export class MissingLogWriter {
  readonly path: string;
  #handle: FileHandle;
  #pending: string[] = [];
  #count = 0;
  #closed = false;

  private constructor(path: string, handle: FileHandle) {
    this.path = path;
    this.#handle = handle;
  }

  /**
   * Creates the attempt's file, never reusing a name: when a file of that name
   * exists (two attempts in one second), the timestamp moves on a second.
   */
  static async create(
    dir: string,
    opts: { prefix?: string; run: string; shard?: ShardSpec; now?: Date },
  ): Promise<MissingLogWriter> {
    await ensureLogDir(dir);
    let when = opts.now ?? new Date();
    for (let i = 0; i < 100; i++) {
      const path = join(dir, missingLogName(opts.prefix ?? 'backfill', opts.run, when, opts.shard));
      try {
        const handle = await open(path, 'wx', 0o600);
        return new MissingLogWriter(path, handle);
      } catch (err) {
        if (!isErrnoException(err, 'EEXIST')) {
          throw new BlobShiftError(`cannot create the missing-blob log in ${dir}: ${errorMessage(err)}`, {
            cause: err,
          });
        }
        when = new Date(when.getTime() + 1000);
      }
    }
    throw new BlobShiftError(`cannot find a free missing-blob log name in ${dir}`);
  }

  /** Records written so far. */
  get count(): number {
    return this.#count;
  }

  write(record: MissingRecord): void {
    if (this.#closed) throw new BlobShiftError(`missing-blob log ${this.path} is closed`);
    this.#pending.push(`${JSON.stringify(record)}\n`);
    this.#count++;
  }

  /** Writes what is buffered and syncs it to disk. */
  async flush(): Promise<void> {
    if (this.#pending.length === 0) return;
    const text = this.#pending.join('');
    this.#pending = [];
    await this.#handle.write(text);
    await this.#handle.datasync();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.flush();
    this.#closed = true;
    await this.#handle.close();
  }
}

export interface LogProblem {
  file: string;
  line: number;
  why: string;
  /** A torn last line (the writer was killed mid-line): a warning, not an error. */
  torn: boolean;
}

/** Why a parsed line is not a valid record, or undefined. */
export function recordProblem(value: unknown): string | undefined {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return 'not a JSON object';
  const r = value as Record<string, unknown>;
  if (typeof r.id !== 'number' || !Number.isSafeInteger(r.id) || r.id < 1)
    return '"id" must be a positive integer';
  if (typeof r.key !== 'string') return '"key" must be a string';
  const kp = keyProblem(r.key);
  if (kp !== undefined) return `"key" is not a valid key: ${kp}`;
  if (r.type !== undefined && typeof r.type !== 'string') return '"type" must be a string';
  if (r.parentId !== undefined && r.parentId !== null && typeof r.parentId !== 'string') {
    return '"parentId" must be a string';
  }
  if (r.error !== undefined && typeof r.error !== 'string') return '"error" must be a string';
  if (r.at !== undefined && typeof r.at !== 'string') return '"at" must be a string';
  return undefined;
}

const MAX_LINE_SHOWN = 60;

/**
 * Reads one log, calling `onRecord` for each valid record and `onProblem` for
 * each malformed line (`file:line: why`). An empty file is zero records. A
 * missing or unreadable file rejects with a BlobShiftError (the CLI's exit 2).
 * A torn last line (no newline at the end and not valid JSON) is reported as
 * a warning (`torn: true`).
 */
export async function readMissingLog(
  file: string,
  onRecord: (record: MissingRecord, line: number) => void | Promise<void>,
  onProblem: (problem: LogProblem) => void,
): Promise<{ records: number; problems: number }> {
  let info: Stats;
  try {
    info = await stat(file);
  } catch (err) {
    throw new BlobShiftError(
      `cannot read log ${file}: ${isErrnoException(err, 'ENOENT') ? 'no such file' : errorMessage(err)}`,
      {
        cause: err,
        code: 'E_LOG_FORMAT',
      },
    );
  }
  if (!info.isFile())
    throw new BlobShiftError(`cannot read log ${file}: not a regular file`, { code: 'E_LOG_FORMAT' });
  const endsWithNewline = info.size === 0 || (await lastByte(file, info.size)) === 0x0a;
  const stream = createReadStream(file);
  const openError = new Promise<never>((_, reject) => {
    stream.once('error', (err) =>
      reject(
        new BlobShiftError(`cannot read log ${file}: ${errorMessage(err)}`, {
          cause: err,
          code: 'E_LOG_FORMAT',
        }),
      ),
    );
  });
  openError.catch(() => {});
  const lines = splitLines(stream);
  let lineNo = 0;
  let records = 0;
  let problems = 0;
  let held: { text: string | number; line: number } | undefined;
  const handle = async (text: string | number, line: number, isLast: boolean) => {
    const reading = readLine(text, isLast && !endsWithNewline);
    if (reading.kind === 'blank') return;
    if (reading.kind === 'problem') {
      problems++;
      onProblem({ file, line, why: reading.why, torn: reading.torn });
      return;
    }
    records++;
    await onRecord(reading.record, line);
  };
  const consume = (async () => {
    for await (const text of lines) {
      lineNo++;
      if (held) await handle(held.text, held.line, false);
      held = { text, line: lineNo };
    }
    if (held) await handle(held.text, held.line, true);
  })();
  await Promise.race([consume, openError]);
  return { records, problems };
}

/** What the reader makes of one line: nothing (a blank line), a record, or a problem. */
type LineReading =
  | { kind: 'blank' }
  | { kind: 'record'; record: MissingRecord }
  | { kind: 'problem'; why: string; torn: boolean };

/**
 * Reads one line of a log (its byte count when it was too long to keep).
 * `tornIfInvalid`: the line is the last one and no newline ends the file, so
 * invalid JSON there is a torn write, not a malformed record.
 */
function readLine(text: string | number, tornIfInvalid: boolean): LineReading {
  if (typeof text === 'number') {
    return { kind: 'problem', why: `a line of ${text} bytes, longer than any record; skipped`, torn: false };
  }
  if (text.trim() === '') return { kind: 'blank' };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    const shown = text.length > MAX_LINE_SHOWN ? `${text.slice(0, MAX_LINE_SHOWN)}…` : text;
    return {
      kind: 'problem',
      why: tornIfInvalid
        ? 'torn last line (the writer stopped mid-line), ignored'
        : `not valid JSON: ${JSON.stringify(shown)}`,
      torn: tornIfInvalid,
    };
  }
  const why = recordProblem(value);
  if (why !== undefined) return { kind: 'problem', why, torn: false };
  return { kind: 'record', record: toRecord(value as Record<string, unknown>) };
}

/** A record that `recordProblem` accepted, its optional text fields defaulting to ''. */
function toRecord(r: Record<string, unknown>): MissingRecord {
  return {
    id: r.id as number,
    key: r.key as string,
    type: typeof r.type === 'string' ? r.type : '',
    parentId: typeof r.parentId === 'string' ? r.parentId : '',
    error: typeof r.error === 'string' ? r.error : '',
    at: typeof r.at === 'string' ? r.at : '',
  };
}

/** Longest line the reader keeps; a longer one is skipped as it streams by (bounded memory). */
export const MAX_LOG_LINE_BYTES = 1024 * 1024;

/**
 * The file's lines, split on "\n" only (as editors and `sed -n` count them; a
 * lone "\r" is not a line break), a "\r" before the "\n" dropped, decoded as
 * UTF-8. A line longer than {@link MAX_LOG_LINE_BYTES} comes as its byte count.
 */
async function* splitLines(input: AsyncIterable<Buffer | string>): AsyncGenerator<string | number> {
  let parts: Buffer[] = [];
  let kept = 0;
  let length = 0;
  const take = (): string | number => {
    const line = length > MAX_LOG_LINE_BYTES ? length : Buffer.concat(parts, kept).toString('utf8');
    parts = [];
    kept = 0;
    length = 0;
    return typeof line === 'string' && line.endsWith('\r') ? line.slice(0, -1) : line;
  };
  const add = (piece: Buffer) => {
    length += piece.length;
    if (length <= MAX_LOG_LINE_BYTES) {
      parts.push(piece);
      kept += piece.length;
    } else if (parts.length > 0) {
      parts = [];
      kept = 0;
    }
  };
  for await (const chunk of input) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    let start = 0;
    for (let nl = buf.indexOf(0x0a); nl !== -1; nl = buf.indexOf(0x0a, start)) {
      add(buf.subarray(start, nl));
      yield take();
      start = nl + 1;
    }
    if (start < buf.length) add(buf.subarray(start));
  }
  if (length > 0) yield take();
}

async function lastByte(file: string, size: number): Promise<number | undefined> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(1);
    await fh.read(buf, 0, 1, size - 1);
    return buf[0];
  } finally {
    await fh.close();
  }
}
