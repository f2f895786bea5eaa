/**
 * `blobshift backfill --queue …` and `blobshift worker …`: the CLI around
 * `queuedBackfill` and `runWorker` (config, preflight, signals, progress,
 * summary). Loaded only when `--queue` is given or the worker runs.
 */

import { ConfigError } from '../contract/errors.js';
import type { MigrationNames } from '../queue/jobs.js';
import type { CommandContext } from './context.js';
import type { BackfillOptions, WorkerOptions } from './options.js';
import { EXIT } from './run.js';
import { trapSignals } from './signals.js';

/** The migration as a command's config describes it (what the job's id hashes). */
export function migrationNames(ctx: Pick<CommandContext, 'names'>): MigrationNames {
  return { meta: ctx.names.meta, old: ctx.names.old ?? 'old', new: ctx.names.new ?? 'new' };
}

/** The environment variable the Redis password may come from. */
export const REDIS_PASSWORD_ENV = 'BLOBSHIFT_REDIS_PASSWORD';

/**
 * Refused before anything is opened or probed: other hosts cannot share a
 * SQLite file. Resolves the queue's URL with its password: the URL from
 * `--queue URL` or the config's `queue.url`; the password from the URL, else
 * the config's `queue.password`, else `BLOBSHIFT_REDIS_PASSWORD`, so it need
 * never be on the command line. The password is registered for redaction.
 */
async function queueSetup(options: BackfillOptions | WorkerOptions, command: string): Promise<string> {
  const [{ loadConfig }, { registerSecret }] = await Promise.all([
    import('../config/index.js'),
    import('../contract/redact.js'),
  ]);
  const loaded = await loadConfig(options.config, { sqliteMustExist: true });
  if (loaded.config.meta.client === 'better-sqlite3') {
    throw new ConfigError(
      'meta',
      `${command} with --queue needs a metadata database every worker host can reach (MySQL/MariaDB or PostgreSQL); a SQLite file cannot be shared with other hosts: run the backfill without --queue`,
    );
  }
  const given = typeof options.queue === 'string' ? options.queue : undefined;
  const raw = given ?? loaded.config.queue?.url;
  if (raw === undefined) {
    throw new ConfigError(
      'queue.url',
      `${command} --queue needs the Redis URL: give it as --queue redis://HOST:PORT[/DB], or as queue.url in the config`,
    );
  }
  const url = new URL(raw);
  const password = loaded.config.queue?.password ?? process.env[REDIS_PASSWORD_ENV];
  if (url.password === '' && password !== undefined && password !== '') {
    registerSecret(password);
    url.password = encodeURIComponent(password);
  }
  return url.toString().replace(/\/$/, '');
}

/** `blobshift backfill --queue URL [--queue-name NAME]`: the producer. */
export async function producerCommand(options: BackfillOptions): Promise<number> {
  const [{ openContext }, { queuedBackfill }, { backfillReporter }] = await Promise.all([
    import('./context.js'),
    import('../queue/producer.js'),
    import('./backfill-reporter.js'),
  ]);
  const json = options.json === true;
  const shard = options.shard;
  const queueUrl = await queueSetup(options, 'backfill');
  const ctx = await openContext({
    config: options.config,
    requireOld: true,
    requireNew: true,
    write: options.dryRun !== true,
    logFormat: options.logFormat,
  });
  const { logger } = ctx;
  try {
    if (options.dryRun === true) {
      // A dry run writes nothing and needs no workers: the local engine answers it.
      const { backfill } = await import('../engine/backfill.js');
      const summary = await backfill({
        meta: ctx.meta,
        oldDb: ctx.oldDb!,
        newDb: ctx.newDb!,
        run: options.run,
        ...(shard ? { shard } : {}),
        types: options.types ?? [],
        chunkSize: options.chunkSize,
        dryRun: true,
      });
      return backfillReporter(logger, { json, progress: false }).finish(summary);
    }
    const signals = trapSignals(logger, {
      stopping:
        'no new chunks, queued ones are withdrawn, running ones finish, then the checkpoint is saved (again to stop waiting for them)',
      abandoning: 'not waiting for running chunks; the checkpoint is saved',
    });
    const report = backfillReporter(logger, { json, progress: options.progress !== false });
    try {
      logger.info('config', { file: ctx.loaded.file, config: ctx.printable });
      const summary = await queuedBackfill({
        meta: ctx.meta,
        newDb: ctx.newDb!,
        queueUrl,
        queueName: options.queueName,
        migration: migrationNames(ctx),
        run: options.run,
        ...(shard ? { shard } : {}),
        types: options.types ?? [],
        chunkSize: options.chunkSize,
        maxPendingChunks: options.concurrency,
        existence: options.existence,
        reset: options.reset === true,
        logDir: options.logDir,
        signal: signals.soft,
        hardSignal: signals.hard,
        logger,
        onStart: (info) => report.onStart(info),
        onProgress: (p) => report.onProgress(p),
      });
      return report.finish(summary);
    } finally {
      report.stop();
      signals.dispose();
    }
  } finally {
    await ctx.close();
  }
}

/** Milliseconds from an environment variable (an operator's knob), or undefined. */
function envMs(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 100 || n > 3_600_000) {
    throw new ConfigError('', `${name} must be a number of milliseconds from 100 to 3600000`);
  }
  return n;
}

/** `blobshift worker --queue URL [--queue-name NAME] [--concurrency N]`. */
export async function workerCommand(options: WorkerOptions): Promise<number> {
  const [{ openContext }, { runWorker }, { describeQueue, checkRedis, migrationId }, out] = await Promise.all(
    [import('./context.js'), import('../queue/worker.js'), import('../queue/jobs.js'), import('./output.js')],
  );
  const lockDurationMs = envMs('BLOBSHIFT_WORKER_LOCK_MS');
  const stalledIntervalMs = envMs('BLOBSHIFT_WORKER_STALL_CHECK_MS');
  const queueUrl = await queueSetup(options, 'worker');
  // No --log-format for a worker: its logs are text.
  const ctx = await openContext({ config: options.config, requireOld: true, requireNew: true, write: true });
  const { logger } = ctx;
  try {
    const queueName = options.queueName;
    await checkRedis(queueUrl, queueName);
    const migration = migrationNames(ctx);
    const signals = trapSignals(logger, {
      stopping: 'the chunks held finish (again to abandon them to other workers)',
      abandoning: 'abandoning the chunks held; another worker takes them over',
    });
    try {
      const started = Date.now();
      const summary = await runWorker({
        queueUrl,
        queueName,
        meta: ctx.meta,
        oldDb: ctx.oldDb!,
        newDb: ctx.newDb!,
        migration,
        concurrency: options.concurrency,
        ...(lockDurationMs !== undefined ? { lockDurationMs } : {}),
        ...(stalledIntervalMs !== undefined ? { stalledIntervalMs } : {}),
        signal: signals.soft,
        hardSignal: signals.hard,
        logger,
        onReady: () =>
          logger.info(
            `worker ready: taking chunks from ${describeQueue(queueUrl, queueName)} (migration ${migrationId(migration)})`,
          ),
        onChunk: (c) =>
          logger.info(`chunk done: ${c.rows} blobs`, {
            job: c.jobId,
            copied: c.counts.copied,
            present: c.counts.present,
            failed: c.counts.failed,
            notFound: c.counts.notFound,
          }),
      });
      const seconds = Math.round((Date.now() - started) / 100) / 10;
      const c = summary.counts;
      out.printLines([
        `worker: ${summary.status === 'refused' ? 'refused a job of another migration and stopped' : 'stopped'}`,
        ...(summary.reason ? [`  reason: ${summary.reason}`] : []),
        `  chunks:  ${summary.chunks}`,
        `  blobs:   ${c.total} (copied ${c.copied}, present ${c.present}, not found ${c.notFound}, failed ${c.failed})`,
        `  seconds: ${seconds}`,
      ]);
      if (summary.status === 'refused') return EXIT.USAGE;
      return EXIT.INTERRUPTED;
    } finally {
      signals.dispose();
    }
  } finally {
    await ctx.close();
  }
}
