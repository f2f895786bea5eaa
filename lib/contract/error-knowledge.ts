/**
 * What the layers that talk to the outside world know about their native
 * errors, told to the engine without the engine importing them. A backend
 * or the metadata layer registers its names when its module loads; an error
 * of theirs can only reach the engine once that module has loaded (it built
 * the client that threw it), so the knowledge is always there when needed.
 *
 * The engine's own rules (`lib/engine/errors.ts`) read the union of all
 * registrations with their generic, driver-independent names.
 */

export interface ErrorKnowledge {
  /** Error `name`s a retry may fix (throttling, a busy server). */
  transientNames?: readonly string[];
  /**
   * Error `name`s of a timeout of the backend or database as a whole:
   * retried, and a run of them means the infrastructure is lost.
   */
  timeoutNames?: readonly string[];
  /**
   * Error `name`s saying the credentials are refused: never retried, and
   * the infrastructure refuses us.
   */
  authNames?: readonly string[];
  /**
   * Error `code`s of a connection that is gone or cannot be made: retried,
   * and a run of them means the infrastructure is lost.
   */
  connectionCodes?: readonly string[];
  /**
   * For an error that carries no `code`: the code it stands for (one of
   * `connectionCodes`), read from what the driver gives (its message), or
   * undefined when it is none of them.
   */
  codeOf?(err: Error): string | undefined;
}

/** The union of every registration; read by the engine. */
export interface KnownErrors {
  readonly transientNames: ReadonlySet<string>;
  readonly timeoutNames: ReadonlySet<string>;
  readonly authNames: ReadonlySet<string>;
  readonly connectionCodes: ReadonlySet<string>;
  readonly codeOf: readonly ((err: Error) => string | undefined)[];
}

const sources = new Map<string, ErrorKnowledge>();
const known = {
  transientNames: new Set<string>(),
  timeoutNames: new Set<string>(),
  authNames: new Set<string>(),
  connectionCodes: new Set<string>(),
  codeOf: [] as ((err: Error) => string | undefined)[],
};

/**
 * Adds what `source` (a backend type, `meta`) knows of its errors. Called
 * once when its module loads; a second call for the same source is ignored
 * (a module evaluated twice adds nothing new).
 */
export function registerErrorKnowledge(source: string, knowledge: ErrorKnowledge): void {
  if (sources.has(source)) return;
  sources.set(source, knowledge);
  for (const name of knowledge.transientNames ?? []) known.transientNames.add(name);
  for (const name of knowledge.timeoutNames ?? []) known.timeoutNames.add(name);
  for (const name of knowledge.authNames ?? []) known.authNames.add(name);
  for (const code of knowledge.connectionCodes ?? []) known.connectionCodes.add(code);
  if (knowledge.codeOf) known.codeOf.push(knowledge.codeOf);
}

/** Everything registered so far (live: later registrations show). */
export function knownErrors(): KnownErrors {
  return known;
}

/** The code a registered source reads from an error without one, if any. */
export function codeFromError(err: Error): string | undefined {
  for (const read of known.codeOf) {
    const code = read(err);
    if (code !== undefined) return code;
  }
  return undefined;
}
