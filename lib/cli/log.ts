/**
 * The CLI's logger: winston, writing to stderr (stdout is for summaries and
 * `--json`). Every message and every field passes through the redactor
 * before it is formatted, so registered secrets and URL passwords never
 * reach a log line.
 *
 * Text:  `2026-11-22T10:00:00.000Z warn  blob failed key=a/b attempt=2`
 * JSON:  `{"timestamp":"…","level":"warn","message":"blob failed","key":"a/b","attempt":2}`
 */
import { format as utilFormat } from 'node:util';
import winston from 'winston';
import { redact, redactString } from '../contract/redact.js';

export type LogFormat = 'text' | 'json';
export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export interface LoggerOptions {
  /** `text` (default) or `json` lines. */
  format?: LogFormat;
  /** The lowest level written (default `info`). */
  level?: LogLevel;
  /** Where lines go (default `process.stderr`). */
  stream?: NodeJS.WritableStream;
  /** Write nothing. */
  silent?: boolean;
  /** The clock for timestamps (tests). */
  now?: () => Date;
}

/** The logger methods library code may rely on; winston's `Logger` fits. */
export interface Logger {
  error(message: string, fields?: Record<string, unknown>): unknown;
  warn(message: string, fields?: Record<string, unknown>): unknown;
  info(message: string, fields?: Record<string, unknown>): unknown;
  debug(message: string, fields?: Record<string, unknown>): unknown;
}

const LEVELS: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

// winston keeps these under symbols; the public `triple-beam` names them.
const MESSAGE = Symbol.for('message');
const SPLAT = Symbol.for('splat');

/** Fields winston sets itself, printed in fixed places rather than as `key=value`. */
const RESERVED = new Set(['level', 'message', 'timestamp']);

type Info = winston.Logform.TransformableInfo & { [key: string | symbol]: unknown };

/** Replaces the message and every string-keyed field with its redacted form, in place. */
function redactInfo(info: Info): Info {
  // A message logged as an Error, or a format string with arguments, becomes text first.
  const raw = info.message;
  let message = raw instanceof Error ? raw.message : typeof raw === 'string' ? raw : utilFormat('%o', raw);
  const splat = info[SPLAT];
  if (Array.isArray(splat) && splat.length > 0 && /%[sdifjoO]/.test(message)) {
    message = utilFormat(message, ...splat);
  }
  const fields: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(info)) {
    if (key !== 'message' && key !== 'level') fields[key] = value;
  }
  const clean = redact(fields);
  for (const key of Object.keys(fields)) delete info[key];
  Object.assign(info, clean);
  info.message = redactString(message);
  return info;
}

/** A value in `key=value` text form: bare when it is a plain token, JSON otherwise. */
function textValue(value: unknown): string {
  if (typeof value === 'string') return /^[^\s="\\]+$/.test(value) ? value : JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean' || value === null) return String(value);
  if (value === undefined) return 'undefined';
  if (value instanceof Date) return value.toISOString();
  if (typeof value === 'bigint') return value.toString();
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

function fieldsOf(info: Info): [string, unknown][] {
  return Object.entries(info).filter(([key]) => !RESERVED.has(key));
}

function textLine(info: Info): string {
  const level = String(info.level).padEnd(5);
  const fields = fieldsOf(info)
    .map(([key, value]) => `${key}=${textValue(value)}`)
    .join(' ');
  return `${String(info.timestamp)} ${level} ${String(info.message)}${fields ? ` ${fields}` : ''}`;
}

function jsonLine(info: Info): string {
  const out: Record<string, unknown> = {
    timestamp: info.timestamp,
    level: info.level,
    message: info.message,
  };
  for (const [key, value] of fieldsOf(info)) out[key] = value;
  return JSON.stringify(out, (_key, value: unknown) =>
    typeof value === 'bigint' ? value.toString() : value,
  );
}

/**
 * A winston logger on `stream` (default stderr) that redacts every message
 * and field. `logger.warn('blob failed', { key, error })` — an `Error` field
 * is reduced to its name, code and (redacted) message.
 */
export function createLogger(options: LoggerOptions = {}): winston.Logger {
  const now = options.now ?? (() => new Date());
  const shape = options.format === 'json' ? jsonLine : textLine;
  const line = winston.format((info) => {
    const clean = redactInfo(info as Info);
    clean.timestamp = now().toISOString();
    clean[MESSAGE] = shape(clean);
    return clean;
  });
  return winston.createLogger({
    levels: LEVELS,
    level: options.level ?? 'info',
    silent: options.silent ?? false,
    exitOnError: false,
    format: line(),
    transports: [new winston.transports.Stream({ stream: options.stream ?? process.stderr, eol: '\n' })],
  });
}

/** A logger that writes nothing. */
export const silentLogger: Logger = { error() {}, warn() {}, info() {}, debug() {} };
