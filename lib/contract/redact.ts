/**
 * Secret redaction used by every printer and logger. Secrets are registered
 * once (the config loader registers credentials, passwords and URL
 * passwords it reads) and then scrubbed from any string or structure.
 */

const REDACTED = '[REDACTED]';
const secrets = new Set<string>();

/** Field names whose values are always secret, whatever they hold. */
const SECRET_FIELD =
  /^(accesskeyid|secretaccesskey|sessiontoken|password|passwd|pass|secret|token|apikey|api_key|authorization)$/i;

/** Registers a value to scrub from everything printed from now on. Short values (< 4 chars) are ignored. */
export function registerSecret(value: unknown): void {
  if (typeof value !== 'string' || value.length < 4) return;
  secrets.add(value);
  // Also the URL-encoded form, as it appears inside connection URLs.
  const encoded = encodeURIComponent(value);
  if (encoded !== value) secrets.add(encoded);
}

/** Forgets every registered secret (tests). */
export function clearSecrets(): void {
  secrets.clear();
}

/** Replaces `user:password@` in URLs with `user:[REDACTED]@`. */
function redactUrlPasswords(text: string): string {
  return text.replace(
    /([a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*):([^@/?#\s]+)@/gi,
    (_m, head: string) => `${head}:${REDACTED}@`,
  );
}

/** A copy of `text` with every registered secret and every URL password replaced. */
export function redactString(text: string): string {
  let out = redactUrlPasswords(text);
  for (const s of secrets) {
    if (out.includes(s)) out = out.split(s).join(REDACTED);
  }
  return out;
}

/**
 * A deep copy of `value` safe to print: secret-named fields replaced, URL
 * passwords and registered secrets scrubbed from strings, errors reduced to
 * their name, code and redacted message.
 */
export function redact<T>(value: T): T {
  return redactValue(value, new WeakSet()) as T;
}

function redactValue(value: unknown, seen: WeakSet<object>): unknown {
  if (typeof value === 'string') return redactString(value);
  if (value === null || typeof value !== 'object') return value;
  if (seen.has(value)) return '[Circular]';
  seen.add(value);
  if (value instanceof Date) return value;
  if (value instanceof Error) {
    const out: Record<string, unknown> = { name: value.name, message: redactString(value.message) };
    const code = (value as { code?: unknown }).code;
    if (code !== undefined) out.code = code;
    return out;
  }
  if (Array.isArray(value)) return value.map((v) => redactValue(v, seen));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (SECRET_FIELD.test(k) && v !== undefined && v !== null && v !== '') out[k] = REDACTED;
    else out[k] = redactValue(v, seen);
  }
  return out;
}
