import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import {
  LIMITS,
  parseChunkSize,
  parseConcurrency,
  parseExistence,
  parseIntFlag,
  parseLogFormat,
  parseName,
  parsePath,
  parseQueueUrl,
  parseRate,
  parseRunName,
  parseShard,
  parseTypes,
  UsageError,
  urlPassword,
} from '../lib/cli/args.js';
import { createLogger } from '../lib/cli/log.js';
import { humanBytes, humanDuration, printJson, printLines } from '../lib/cli/output.js';
import { createProgress, formatProgressLine } from '../lib/cli/progress.js';
import { EXIT, exitCodeFor, reportError, runCommand } from '../lib/cli/run.js';
import {
  AbortedError,
  BackendError,
  ConfigError,
  LogFormatError,
  PreflightError,
  RunStateError,
} from '../lib/contract/errors.js';
import { clearSecrets, registerSecret } from '../lib/contract/redact.js';
import { COMMANDS, type CommandName, runCli } from '../scripts/cli.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };

/** A writable that keeps what was written. */
class Sink extends Writable {
  chunks: string[] = [];
  isTTY = false;
  columns = 120;
  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.chunks.push(chunk.toString());
    cb();
  }
  get text(): string {
    return this.chunks.join('');
  }
  get lines(): string[] {
    return this.text.split('\n').filter((l) => l !== '');
  }
}

interface Spawned {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the real CLI from source as a child process. */
function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Spawned> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1', ...env };
  if (!('BLOBSHIFT_DEBUG' in env)) delete childEnv.BLOBSHIFT_DEBUG;
  return new Promise((done, fail) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', join(ROOT, 'scripts', 'cli.ts'), ...args],
      { cwd: ROOT, env: childEnv, timeout: 20_000, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') {
          fail(err);
          return;
        }
        done({ code: err ? (err.code as number) : 0, stdout, stderr });
      },
    );
  });
}

function expectOneLineNoStack(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l !== '');
  expect(lines, `stderr: ${stderr}`).to.have.length(1);
  expect(stderr).not.to.match(/^\s+at /m);
  return lines[0]!;
}

describe('blobshift CLI (child process)', function () {
  this.timeout(30_000);

  it('--help lists every subcommand and the exit codes on stdout, exit 0', async () => {
    const r = await cli(['--help']);
    expect(r.code).to.equal(0);
    for (const name of COMMANDS) expect(r.stdout).to.match(new RegExp(`^\\s+${name}\\b`, 'm'));
    expect(r.stdout).to.include('Exit codes:');
    expect(r.stdout).to.match(/^\s+130\s+interrupted/m);
    expect(r.stderr).to.equal('');
  });

  it('--version prints the package version', async () => {
    const r = await cli(['--version']);
    expect(r.code).to.equal(0);
    expect(r.stdout.trim()).to.equal(PKG.version);
  });

  it("a subcommand's --help lists its flags from the contract", async () => {
    const r = await cli(['backfill', '--help']);
    expect(r.code).to.equal(0);
    for (const flag of [
      '--config',
      '--run',
      '--log-dir',
      '--chunk-size',
      '--concurrency',
      '--types',
      '--shard',
      '--existence',
      '--max-rate',
      '--reset',
      '--dry-run',
      '--json',
      '--no-progress',
      '--log-format',
      '--queue ',
      '--queue-name',
    ]) {
      expect(r.stdout).to.include(flag);
    }
  });

  it('an unknown command exits 2 with one line naming it', async () => {
    const r = await cli(['frobnicate']);
    expect(r.code).to.equal(2);
    expect(expectOneLineNoStack(r.stderr)).to.include("unknown command 'frobnicate'");
    expect(r.stdout).to.equal('');
  });

  it('an unknown flag exits 2 with one line naming it and the command', async () => {
    const r = await cli(['backfill', '--frobnicate']);
    expect(r.code).to.equal(2);
    const line = expectOneLineNoStack(r.stderr);
    expect(line).to.include("unknown option '--frobnicate'");
    expect(line).to.match(/^blobshift backfill: /);
  });

  it('no command: the help on stderr and exit 2', async () => {
    const r = await cli([]);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.include('Commands:');
    expect(r.stderr).to.include('no command given');
  });

  const badValues: [string[], string, string][] = [
    [['backfill', '--shard', '3/3'], '--shard', '"3/3"'],
    [['backfill', '--concurrency', '0'], '--concurrency', '"0"'],
    [['backfill', '--chunk-size', 'lots'], '--chunk-size', '"lots"'],
    [['backfill', '--existence', 'foo'], '--existence', '"foo"'],
    [['backfill', '--log-format', 'xml'], '--log-format', '"xml"'],
    [['verify', '--types', 'a,,b'], '--types', '"a,,b"'],
    [['status', '--run', '../etc'], '--run', '"../etc"'],
    [['check-blob-logs', '--concurrency', '1.5', 'x.jsonl'], '--concurrency', '"1.5"'],
  ];
  for (const [args, flag, shown] of badValues) {
    it(`${args.join(' ')} exits 2 naming ${flag} and the value`, async () => {
      const r = await cli(args);
      expect(r.code).to.equal(2);
      const line = expectOneLineNoStack(r.stderr);
      expect(line).to.include(flag);
      expect(line).to.include(shown);
    });
  }

  it('a --queue password never shows in the error line', async () => {
    const r = await cli(['backfill', '--queue', 'redis://user:pa55-w0rd-x@127.0.0.1:6379/zz']);
    expect(r.code).to.equal(2);
    const line = expectOneLineNoStack(r.stderr);
    expect(line).to.include('--queue');
    expect(r.stderr + r.stdout).not.to.include('pa55-w0rd-x');
  });

  it('a mistyped flag holding a URL password does not echo the password', async () => {
    const r = await cli(['backfill', '--queu=redis://:pa55-w0rd-y@127.0.0.1:6379']);
    expect(r.code).to.equal(2);
    expectOneLineNoStack(r.stderr);
    expect(r.stderr).not.to.include('pa55-w0rd-y');
  });
});

describe('scripts/cli.ts startup', () => {
  it('loads only commander, node built-ins and the small CLI helpers up front', () => {
    // Follow the static imports from cli.ts through the repository's own modules.
    const seen = new Set<string>();
    const bare = new Set<string>();
    const visit = (file: string): void => {
      if (seen.has(file)) return;
      seen.add(file);
      const source = readFileSync(file, 'utf8');
      for (const m of source.matchAll(/^\s*import\s+(?!type\b)[^'"]*?from\s+'([^']+)'/gm)) {
        const spec = m[1]!;
        if (spec.startsWith('.')) visit(resolve(dirname(file), spec.replace(/\.js$/, '.ts')));
        else bare.add(spec);
      }
    };
    visit(join(ROOT, 'scripts', 'cli.ts'));
    const packages = [...bare].filter((s) => !s.startsWith('node:'));
    expect(packages).to.deep.equal(['commander']);
    const files = [...seen].map((f) => f.slice(ROOT.length + 1));
    expect(files).to.include.members(['scripts/cli.ts', 'lib/cli/args.ts', 'lib/cli/run.ts']);
    // Nothing of the engine, the backends, the metadata layer or the other subcommands.
    for (const f of files) {
      expect(f).to.match(
        /^(scripts\/cli\.ts|lib\/cli\/(args|run|signals)\.ts|lib\/contract\/(errors|redact|keys)\.ts)$/,
      );
    }
  });

  it('every subcommand module exports main(options, args)', async () => {
    for (const name of COMMANDS) {
      const mod = (await import(`../scripts/${name}.js`)) as { main?: unknown };
      expect(mod.main, name).to.be.a('function');
    }
  });
});

describe('runCli (in process)', () => {
  interface Call {
    name: CommandName;
    options: Record<string, unknown>;
    args: string[];
  }
  async function run(
    argv: string[],
    result = 0,
  ): Promise<{ code: number; calls: Call[]; out: Sink; err: Sink }> {
    const calls: Call[] = [];
    const out = new Sink();
    const err = new Sink();
    const code = await runCli(argv, {
      stdout: out,
      stderr: err,
      dispatch: async (name, options, args) => {
        calls.push({ name, options, args });
        return result;
      },
    });
    return { code, calls, out, err };
  }

  it('passes every backfill flag, parsed, to the subcommand', async () => {
    const r = await run([
      'backfill',
      '-c',
      'conf.json',
      '--run',
      'night-1',
      '--log-dir',
      'logs',
      '--chunk-size',
      '500',
      '--concurrency',
      '8',
      '--types',
      'a, b,a',
      '--shard',
      '1/3',
      '--existence',
      'head',
      '--max-rate',
      '2.5',
      '--reset',
      '--dry-run',
      '--json',
      '--no-progress',
      '--log-format',
      'json',
      '--queue',
      'redis://127.0.0.1:6379/2',
      '--queue-name',
      'q1',
    ]);
    expect(r.code).to.equal(0);
    expect(r.calls).to.have.length(1);
    expect(r.calls[0]!.name).to.equal('backfill');
    expect(r.calls[0]!.options).to.deep.equal({
      config: 'conf.json',
      run: 'night-1',
      logDir: 'logs',
      chunkSize: 500,
      concurrency: 8,
      types: ['a', 'b'],
      shard: { index: 1, count: 3 },
      existence: 'head',
      maxRate: 2.5,
      reset: true,
      dryRun: true,
      json: true,
      progress: false,
      logFormat: 'json',
      queue: 'redis://127.0.0.1:6379/2',
      queueName: 'q1',
    });
    expect(r.calls[0]!.args).to.deep.equal([]);
  });

  it('fills the documented defaults', async () => {
    const r = await run(['backfill']);
    expect(r.calls[0]!.options).to.deep.equal({
      config: './blobshift.config.json',
      run: 'default',
      logDir: './blobshift-logs',
      chunkSize: 1000,
      concurrency: 16,
      existence: 'list',
      progress: true,
      logFormat: 'text',
      queueName: 'blobshift',
    });
  });

  it('passes check-blob-logs its log files as args', async () => {
    const r = await run(['check-blob-logs', '--migrate', 'a.jsonl', 'b.jsonl']);
    expect(r.calls[0]!.name).to.equal('check-blob-logs');
    expect(r.calls[0]!.args).to.deep.equal(['a.jsonl', 'b.jsonl']);
    expect(r.calls[0]!.options.migrate).to.equal(true);
  });

  it('parses each remaining subcommand', async () => {
    expect((await run(['worker', '--queue', 'rediss://h:6380'])).calls[0]!.options).to.include({
      queue: 'rediss://h:6380',
      queueName: 'blobshift',
      concurrency: 16,
    });
    expect((await run(['verify', '--checksum', '--types', 'x'])).calls[0]!.options).to.deep.include({
      checksum: true,
      types: ['x'],
    });
    expect((await run(['estimate', '--json'])).calls[0]!.options).to.include({ json: true });
    expect((await run(['status', '--run', 'r1'])).calls[0]!.options).to.include({ run: 'r1' });
    expect((await run(['cleanup-old', '--yes', '--dry-run'])).calls[0]!.options).to.include({
      yes: true,
      dryRun: true,
    });
  });

  it('refuses flags a subcommand does not have', async () => {
    const r = await run(['estimate', '--shard', '0/2']);
    expect(r.code).to.equal(2);
    expect(r.calls).to.have.length(0);
    expect(r.err.text).to.include("unknown option '--shard'");
  });

  it('cleanup-old without --yes exits 2 and runs nothing', async () => {
    const r = await run(['cleanup-old']);
    expect(r.code).to.equal(2);
    expect(r.calls).to.have.length(0);
    expect(r.err.lines).to.have.length(1);
    expect(r.err.text).to.include('--yes');
  });

  it("worker without --queue is dispatched: the URL may come from the config's queue.url", async () => {
    const r = await run(['worker']);
    expect(r.code).to.equal(0);
    expect(r.calls).to.have.length(1);
    expect(r.calls[0]?.options.queue).to.equal(undefined);
    const bare = await run(['backfill', '--queue']);
    expect(bare.calls[0]?.options.queue).to.equal(true, '--queue without a value: the config says where');
  });

  it("returns the subcommand's exit code", async () => {
    for (const code of [0, 1, 2, 3, 130]) expect((await run(['estimate'], code)).code).to.equal(code);
  });

  it('maps an out-of-range code from a subcommand to 1', async () => {
    expect((await run(['estimate'], 300)).code).to.equal(1);
  });

  it('prints help and version on the given stdout', async () => {
    const help = await run(['--help']);
    expect(help.code).to.equal(0);
    expect(help.out.text).to.include('cleanup-old');
    const version = await run(['-V']);
    expect(version.out.text.trim()).to.equal(PKG.version);
  });

  it('registers a --queue password as a secret', async () => {
    clearSecrets();
    try {
      await run(['worker', '--queue', 'redis://:s%40uce-pw-77@127.0.0.1:6379']);
      const sink = new Sink();
      reportError(new Error('auth failed with s@uce-pw-77'), { stderr: sink, env: {} });
      expect(sink.text).not.to.include('s@uce-pw-77');
      expect(sink.text).to.include('[REDACTED]');
    } finally {
      clearSecrets();
    }
  });
});

describe('lib/cli/args', () => {
  function usage(fn: () => unknown, ...parts: string[]): UsageError {
    let caught: unknown;
    try {
      fn();
    } catch (err) {
      caught = err;
    }
    expect(caught).to.be.instanceOf(UsageError);
    const err = caught as UsageError;
    expect(err.code).to.equal('E_USAGE');
    for (const p of parts) expect(err.message).to.include(p);
    return err;
  }

  it('parseShard accepts 0 ≤ I < N', () => {
    expect(parseShard('0/1')).to.deep.equal({ index: 0, count: 1 });
    expect(parseShard('2/3')).to.deep.equal({ index: 2, count: 3 });
    expect(parseShard('9999/10000')).to.deep.equal({ index: 9999, count: 10000 });
  });

  it('parseShard refuses everything else, naming the flag and the value', () => {
    for (const v of [
      '3/3',
      '4/3',
      '0/0',
      '-1/3',
      '1/-3',
      '1.5/3',
      '1/3.0',
      'a/b',
      '1',
      '1/',
      '/3',
      '1/2/3',
      '',
      '0/10001',
    ]) {
      const err = usage(() => parseShard(v), '--shard', JSON.stringify(v));
      expect(err.flag).to.equal('--shard');
    }
  });

  it('parseIntFlag takes plain decimal integers within bounds', () => {
    expect(parseIntFlag('1', { flag: '--x', max: 5 })).to.equal(1);
    expect(parseIntFlag('05', { flag: '--x', max: 5 })).to.equal(5);
    expect(parseIntFlag('0', { flag: '--x', min: 0, max: 5 })).to.equal(0);
    for (const v of [
      '0',
      '6',
      '-1',
      '1.5',
      '1e2',
      '0x10',
      ' 3',
      '3 ',
      '',
      'lots',
      '+3',
      '99999999999999999999',
    ]) {
      usage(() => parseIntFlag(v, { flag: '--x', max: 5 }), '--x');
    }
  });

  it('parseConcurrency and parseChunkSize enforce their limits', () => {
    expect(parseConcurrency('1024')).to.equal(LIMITS.concurrency);
    usage(() => parseConcurrency('1025'), '--concurrency', '"1025"');
    usage(() => parseConcurrency('0'), '--concurrency');
    expect(parseChunkSize('100000')).to.equal(LIMITS.chunkSize);
    usage(() => parseChunkSize('100001'), '--chunk-size');
    usage(() => parseChunkSize('lots'), '--chunk-size', '"lots"');
  });

  it('parseRate takes a positive number', () => {
    expect(parseRate('250')).to.equal(250);
    expect(parseRate('0.5')).to.equal(0.5);
    for (const v of ['0', '0.0', '-1', 'fast', '1e3', 'Infinity', 'NaN', '', '.5', '2000000']) {
      usage(() => parseRate(v), '--max-rate');
    }
  });

  it('parseExistence and parseLogFormat take their choices only', () => {
    expect(parseExistence('list')).to.equal('list');
    expect(parseExistence('head')).to.equal('head');
    usage(() => parseExistence('HEAD'), '--existence', 'list, head');
    expect(parseLogFormat('json')).to.equal('json');
    expect(parseLogFormat('text')).to.equal('text');
    usage(() => parseLogFormat('yaml'), '--log-format', '"yaml"');
  });

  it('parseTypes splits a comma list, trims, drops duplicates', () => {
    expect(parseTypes('attachment')).to.deep.equal(['attachment']);
    expect(parseTypes('a, b ,a,c')).to.deep.equal(['a', 'b', 'c']);
    for (const v of ['', ',', 'a,', ',a', 'a,,b', 'a, ,b', 'a\u0001b', 'x'.repeat(256)]) {
      usage(() => parseTypes(v), '--types');
    }
  });

  it('parseRunName and parseName take safe names only', () => {
    expect(parseRunName('default')).to.equal('default');
    expect(parseRunName('night_1.v-2')).to.equal('night_1.v-2');
    expect(parseRunName('x'.repeat(64))).to.have.length(64);
    for (const v of ['', '.', '..', 'a/b', '../x', 'a b', 'x'.repeat(65), 'é', 'a:b']) {
      usage(() => parseRunName(v), '--run');
    }
    usage(() => parseName('a b', '--queue-name'), '--queue-name');
  });

  it('parseQueueUrl takes redis:// and rediss:// URLs', () => {
    for (const v of [
      'redis://127.0.0.1:6379',
      'redis://localhost',
      'rediss://h:6380/3',
      'redis://user:pw@h:1/0',
      'redis://:pw@h',
    ]) {
      expect(parseQueueUrl(v)).to.equal(v);
    }
  });

  it('parseQueueUrl refuses other URLs and never shows a password', () => {
    for (const v of [
      'http://h:6379',
      'h:6379',
      '127.0.0.1:6379',
      'redis://',
      'redis://h/db',
      'redis://h?x=1',
      'redis://:hunter2hunter2@h/x',
      'redis//:hunter2hunter2@h',
      '',
    ]) {
      const err = usage(() => parseQueueUrl(v), '--queue');
      expect(err.message).not.to.include('hunter2hunter2');
    }
  });

  it('urlPassword decodes the password of a URL', () => {
    expect(urlPassword('redis://:p%40ss@h')).to.equal('p@ss');
    expect(urlPassword('redis://u:pw@h')).to.equal('pw');
    expect(urlPassword('redis://h')).to.equal(undefined);
    expect(urlPassword('not a url')).to.equal(undefined);
  });

  it('parsePath refuses empty paths and control characters', () => {
    expect(parsePath('./x.json', '--config')).to.equal('./x.json');
    usage(() => parsePath('', '--config'), '--config');
    usage(() => parsePath('a\nb', '--log-dir'), '--log-dir');
  });
});

describe('lib/cli/run', () => {
  it('maps errors to exit codes', () => {
    expect(exitCodeFor(new UsageError('x'))).to.equal(EXIT.USAGE);
    expect(exitCodeFor(new ConfigError('new.bucket', 'missing'))).to.equal(EXIT.USAGE);
    expect(exitCodeFor(new LogFormatError('f.jsonl', 3, 'not JSON'))).to.equal(EXIT.USAGE);
    expect(exitCodeFor(new PreflightError('new', 'bucket missing'))).to.equal(EXIT.USAGE);
    expect(exitCodeFor(new RunStateError('types changed'))).to.equal(EXIT.USAGE);
    expect(exitCodeFor(new AbortedError())).to.equal(EXIT.INTERRUPTED);
    expect(exitCodeFor(new BackendError('boom'))).to.equal(EXIT.INCOMPLETE);
    expect(exitCodeFor(new TypeError('bug'))).to.equal(EXIT.INCOMPLETE);
    expect(exitCodeFor('a string')).to.equal(EXIT.INCOMPLETE);
  });

  it('runCommand returns what the function returns', async () => {
    expect(await runCommand(async () => 3)).to.equal(3);
  });

  it('a user error: exit 2, one redacted line, no stack', async () => {
    registerSecret('sekr1t-value');
    try {
      const err = new Sink();
      const code = await runCommand(
        async () => {
          throw new ConfigError('new.credentials', 'rejected sekr1t-value\nsee the docs', {
            cause: new Error('inner'),
          });
        },
        { stderr: err, env: {} },
      );
      expect(code).to.equal(2);
      expect(err.lines).to.deep.equal([
        'blobshift: config new.credentials: rejected [REDACTED] see the docs',
      ]);
    } finally {
      clearSecrets();
    }
  });

  it('an unexpected error: exit 1, one line, no stack unless BLOBSHIFT_DEBUG=1', async () => {
    const fail = async (): Promise<number> => {
      throw new Error('connect ECONNREFUSED mysql://root:dbpa55word@127.0.0.1:3306/x');
    };
    const quiet = new Sink();
    expect(await runCommand(fail, { stderr: quiet, env: {} })).to.equal(1);
    expect(quiet.lines).to.have.length(1);
    expect(quiet.text).to.include('unexpected error: connect ECONNREFUSED');
    expect(quiet.text).to.include('BLOBSHIFT_DEBUG=1');
    expect(quiet.text).not.to.include('dbpa55word');

    const loud = new Sink();
    expect(await runCommand(fail, { stderr: loud, env: { BLOBSHIFT_DEBUG: '1' } })).to.equal(1);
    expect(loud.text).to.match(/^\s+at /m);
    expect(loud.text).not.to.include('dbpa55word');
  });
});

describe('lib/log', () => {
  const SECRET = 'Zx9-secret-AKIA-0042';
  const clock = () => new Date('2026-11-22T10:00:00.000Z');
  const tick = () => new Promise((r) => setImmediate(r));

  beforeEach(() => registerSecret(SECRET));
  afterEach(() => clearSecrets());

  function logAll(format: 'text' | 'json', sink: Sink): void {
    const log = createLogger({ format, stream: sink, now: clock, level: 'debug' });
    log.warn(`copy failed using ${SECRET}`, {
      key: 'a/b',
      attempt: 2,
      url: 'mysql://app:dbpa55word@127.0.0.1/db',
      credentials: { accessKeyId: 'AK', secretAccessKey: 'also-secret-x' },
      error: new Error(`denied: ${SECRET}`),
      note: `token ${SECRET} inside`,
    });
    log.info('plain message');
    log.debug('debug %s', SECRET);
    log.error(`at the end ${SECRET}`);
  }

  it('text: timestamp, padded level, message, key=value fields', async () => {
    const sink = new Sink();
    const log = createLogger({ format: 'text', stream: sink, now: clock });
    log.warn('blob failed', { key: 'a/b', attempt: 2, reason: 'two words' });
    log.info('done');
    await tick();
    expect(sink.lines).to.deep.equal([
      '2026-11-22T10:00:00.000Z warn  blob failed key=a/b attempt=2 reason="two words"',
      '2026-11-22T10:00:00.000Z info  done',
    ]);
  });

  it('json: one object per line with timestamp, level, message and the fields', async () => {
    const sink = new Sink();
    const log = createLogger({ format: 'json', stream: sink, now: clock });
    log.warn('blob failed', { key: 'a/b', attempt: 2 });
    await tick();
    expect(sink.lines).to.have.length(1);
    expect(JSON.parse(sink.lines[0]!)).to.deep.equal({
      timestamp: '2026-11-22T10:00:00.000Z',
      level: 'warn',
      message: 'blob failed',
      key: 'a/b',
      attempt: 2,
    });
  });

  for (const format of ['text', 'json'] as const) {
    it(`${format}: a registered secret, a URL password and secret fields never appear`, async () => {
      const sink = new Sink();
      logAll(format, sink);
      await tick();
      expect(sink.lines).to.have.length(4);
      expect(sink.text).not.to.include(SECRET);
      expect(sink.text).not.to.include('dbpa55word');
      expect(sink.text).not.to.include('also-secret-x');
      expect(sink.text).to.include('[REDACTED]');
      expect(sink.text).to.include('a/b');
      if (format === 'json') for (const line of sink.lines) expect(() => JSON.parse(line)).not.to.throw();
    });
  }

  it('honours the level and silent', async () => {
    const sink = new Sink();
    const log = createLogger({ stream: sink, level: 'warn', now: clock });
    log.info('hidden');
    log.debug('hidden');
    log.warn('shown');
    const quiet = new Sink();
    createLogger({ stream: quiet, silent: true }).error('nothing');
    await tick();
    expect(sink.lines).to.have.length(1);
    expect(sink.text).to.include('shown');
    expect(quiet.text).to.equal('');
  });
});

describe('lib/cli/progress', () => {
  it('formats the plain line', () => {
    expect(
      formatProgressLine({
        done: 1200,
        total: 20000,
        bytes: 4_700_000,
        totalBytes: undefined,
        rate: 350,
        etaSeconds: 48,
      }),
    ).to.equal('progress: 1200/20000 blobs (6.0%), 4.5 MiB, 350 blobs/s, eta 48s');
    expect(
      formatProgressLine({
        done: 7,
        total: 0,
        bytes: 0,
        totalBytes: undefined,
        rate: 0,
        etaSeconds: undefined,
      }),
    ).to.equal('progress: 7 blobs, 0 B, 0.0 blobs/s');
    expect(
      formatProgressLine({
        done: 1,
        total: 4,
        bytes: 1500,
        totalBytes: 6000,
        rate: 0,
        etaSeconds: undefined,
      }),
    ).to.equal('progress: 1/4 blobs (25.0%), 1.5 KiB of 5.9 KiB, 0.0 blobs/s, eta ?');
  });

  it('off a TTY: periodic lines, then a final one at stop', async () => {
    const sink = new Sink();
    let t = 0;
    const p = createProgress({ total: 20000, enabled: true, stream: sink, intervalMs: 20, now: () => t });
    t = 4000;
    p.update(1200, 4_700_000);
    await new Promise((r) => setTimeout(r, 75));
    const periodic = sink.lines.length;
    expect(periodic).to.be.at.least(2);
    p.stop();
    expect(sink.lines).to.have.length(periodic + 1);
    // 1200 blobs in 4 s: 300 blobs/s; 18800 left: 62.7 s.
    expect(sink.lines.at(-1)).to.equal('progress: 1200/20000 blobs (6.0%), 4.5 MiB, 300 blobs/s, eta 1m03s');
    p.update(5000, 0);
    p.stop();
    await new Promise((r) => setTimeout(r, 50));
    expect(sink.lines).to.have.length(periodic + 1);
  });

  it('measures the rate from its starting point (a resumed run)', () => {
    const sink = new Sink();
    let t = 0;
    const p = createProgress({ total: 1000, enabled: true, stream: sink, done: 900, now: () => t });
    t = 10_000;
    p.update(950, 0);
    p.stop();
    expect(sink.lines).to.deep.equal(['progress: 950/1000 blobs (95.0%), 0 B, 5.0 blobs/s, eta 10s']);
  });

  it('setTotal changes the total; finishing shows eta 0s', () => {
    const sink = new Sink();
    let t = 0;
    const p = createProgress({ total: 10, enabled: true, stream: sink, now: () => t });
    p.setTotal(40);
    t = 2000;
    p.update(40, 2048);
    p.stop();
    expect(sink.lines).to.deep.equal(['progress: 40/40 blobs (100.0%), 2.0 KiB, 20 blobs/s, eta 0s']);
  });

  it('disabled: writes nothing', async () => {
    const sink = new Sink();
    const p = createProgress({ total: 10, enabled: false, stream: sink, intervalMs: 10 });
    p.update(5, 100);
    await new Promise((r) => setTimeout(r, 40));
    p.stop();
    expect(sink.text).to.equal('');
  });

  it('on a TTY: draws a bar with the counts', () => {
    const sink = new Sink();
    sink.isTTY = true;
    let t = 0;
    const p = createProgress({ total: 100, enabled: true, stream: sink, now: () => t });
    t = 1000;
    p.update(50, 1_000_000);
    p.stop();
    expect(sink.text).to.include('50/100 blobs (50.0%), 976.6 KiB, 50 blobs/s, eta 1s');
    expect(sink.text).to.include('█');
  });
});

describe('lib/cli/output', () => {
  it('humanBytes uses binary units (the one byte formatter) with one decimal', () => {
    expect(humanBytes(0)).to.equal('0 B');
    expect(humanBytes(1023)).to.equal('1023 B');
    expect(humanBytes(1024)).to.equal('1.0 KiB');
    expect(humanBytes(1500)).to.equal('1.5 KiB');
    expect(humanBytes(4.7 * 1024 ** 2)).to.equal('4.7 MiB');
    expect(humanBytes(1024 ** 2 - 20)).to.equal('1.0 MiB');
    expect(humanBytes(8 * 1024 ** 3)).to.equal('8.0 GiB');
    expect(humanBytes(2 * 1024 ** 5)).to.equal('2.0 PiB');
  });

  it('humanDuration is short and readable', () => {
    expect(humanDuration(0)).to.equal('0s');
    expect(humanDuration(0.42)).to.equal('0.4s');
    expect(humanDuration(48)).to.equal('48s');
    expect(humanDuration(62.7)).to.equal('1m03s');
    expect(humanDuration(3700)).to.equal('1h01m');
    expect(humanDuration(90_000)).to.equal('1d01h');
    expect(humanDuration(Number.POSITIVE_INFINITY)).to.equal('?');
  });

  it('printJson writes one redacted JSON document', () => {
    registerSecret('json-secret-123');
    try {
      const sink = new Sink();
      printJson({ copied: 3, note: 'used json-secret-123', password: 'pw', db: 'mysql://u:p4ss@h/d' }, sink);
      const parsed = JSON.parse(sink.text) as Record<string, unknown>;
      expect(parsed).to.deep.equal({
        copied: 3,
        note: 'used [REDACTED]',
        password: '[REDACTED]',
        db: 'mysql://u:[REDACTED]@h/d',
      });
      expect(sink.text.endsWith('\n')).to.equal(true);
    } finally {
      clearSecrets();
    }
  });

  it('printLines redacts each line', () => {
    const sink = new Sink();
    printLines(['queue redis://:qpass1234@h', 'done'], sink);
    expect(sink.text).to.equal('queue redis://:[REDACTED]@h\ndone\n');
  });
});
