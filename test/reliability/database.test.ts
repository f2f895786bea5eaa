/**
 * The database going away: a backfill through the real CLI on MariaDB or
 * PostgreSQL metadata while the test kills the CLI's connections mid-run, a
 * few times (MariaDB `KILL`, PostgreSQL `pg_terminate_backend`). Each run
 * either completes (exit 0) or stops with exit 3 after saving its
 * checkpoint; rerunning until exit 0 ends with every referenced blob in the
 * new backend byte-identical and the counts adding up.
 *
 * On MariaDB the CLI connects as a user of its own, created for the test, so
 * the killer finds the CLI's connections (and no one else's on a shared
 * server) by that user and the database; on PostgreSQL the CLI's URL names
 * its connections (`application_name`) and the killer picks them by that
 * name. The test's own connections are never killed.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import type { Knex } from 'knex';
import mysql from 'mysql2/promise';
import { createKnex, MetaDB } from '../../lib/meta/index.js';
import {
  backfillArgs,
  bucketShas,
  type CliResult,
  fileSha,
  listBucket,
  type SeededBlob,
  seedOldFs,
  startCli,
  writeConfig,
} from '../support/cli.js';
import { dropOwnTables } from '../support/databases.js';
import { announce, MYSQL_URL, PG_URL, uniqueName } from '../support/env.js';
import { walkFiles } from '../support/fs.js';
import { createBucket, S3RVER_CREDENTIALS, startS3rver } from '../support/s3rver.js';
import { sleep } from '../support/time.js';

/** Enough for a run of several seconds at `--max-rate 300` (s3rver shares the test's core: fewer). */
const FS_BLOBS = 2000;
const S3_BLOBS = 1200;
/** Kill rounds over the whole test (each round kills every CLI connection it finds). */
const KILL_ROUNDS = 4;
const MAX_RERUNS = 5;
/** The CLI's line once the run is set up (state saved, estimate and snapshot taken) and copying. */
const STARTED = /backfill run "default", attempt \d+/;

interface Summary {
  status: string;
  total: number;
  copied: number;
  present: number;
  notFound: number;
  failed: number;
  lowWaterMark: number;
  attempts: number;
  seconds: number;
}

/** Kills the CLI's database connections, and only those. */
interface Killer {
  /** The URL the CLI connects with. */
  readonly cliUrl: string;
  killed: number;
  rounds: number;
  /** Kills every CLI connection; resolves how many went. */
  round(): Promise<number>;
  close(): Promise<void>;
}

/**
 * A MariaDB user for the CLI alone and a separate admin connection that KILLs
 * that user's connections. Where the test's account may not create users, the
 * CLI uses the test's URL and the killer picks connections by database,
 * sparing its own.
 */
class MysqlKiller implements Killer {
  readonly cliUrl: string;
  readonly #admin: mysql.Connection;
  readonly #user: string | undefined;
  readonly #database: string;
  #ownId = 0;
  killed = 0;
  rounds = 0;

  private constructor(admin: mysql.Connection, cliUrl: string, user: string | undefined, database: string) {
    this.#admin = admin;
    this.cliUrl = cliUrl;
    this.#user = user;
    this.#database = database;
  }

  static async open(url: string): Promise<MysqlKiller> {
    const admin = await mysql.createConnection(url);
    const u = new URL(url);
    const database = decodeURIComponent(u.pathname.replace(/^\//, '')) || 'test';
    const user = uniqueName('bsk');
    let killer: MysqlKiller;
    try {
      await admin.query('CREATE USER ?@? IDENTIFIED BY ?', [user, '%', 'killme']);
      await admin.query(`GRANT ALL PRIVILEGES ON \`${database.replace(/`/g, '``')}\`.* TO ?@?`, [user, '%']);
      const cli = new URL(url);
      cli.username = user;
      cli.password = 'killme';
      killer = new MysqlKiller(admin, cli.toString(), user, database);
    } catch {
      killer = new MysqlKiller(admin, url, undefined, database);
    }
    const [rows] = await admin.query('SELECT CONNECTION_ID() AS id');
    killer.#ownId = Number((rows as { id: number }[])[0]?.id);
    return killer;
  }

  /** The CLI's connections now. */
  async targets(): Promise<number[]> {
    const [rows] = await this.#admin.query(
      this.#user
        ? 'SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> ? AND USER = ?'
        : 'SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> ?',
      this.#user ? [this.#database, this.#ownId, this.#user] : [this.#database, this.#ownId],
    );
    return (rows as { id: number }[]).map((r) => Number(r.id));
  }

  /** KILLs every CLI connection; resolves how many went. */
  async round(): Promise<number> {
    let n = 0;
    for (const id of await this.targets()) {
      try {
        await this.#admin.query(`KILL ${Number(id)}`);
        n++;
      } catch {
        // Already gone (ER_NO_SUCH_THREAD).
      }
    }
    if (n > 0) {
      this.rounds++;
      this.killed += n;
    }
    return n;
  }

  async close(): Promise<void> {
    try {
      if (this.#user) await this.#admin.query('DROP USER IF EXISTS ?@?', [this.#user, '%']);
    } finally {
      await this.#admin.end();
    }
  }
}

/**
 * PostgreSQL: the CLI's URL names its connections with a unique
 * `application_name`; an admin connection ends them with
 * `pg_terminate_backend` (the server closes them, as a failover or a DBA
 * would).
 */
class PgKiller implements Killer {
  readonly cliUrl: string;
  readonly #admin: Knex;
  readonly #name: string;
  killed = 0;
  rounds = 0;

  private constructor(admin: Knex, cliUrl: string, name: string) {
    this.#admin = admin;
    this.cliUrl = cliUrl;
    this.#name = name;
  }

  static async open(url: string): Promise<PgKiller> {
    const name = uniqueName('bsk');
    const cli = new URL(url);
    cli.searchParams.set('application_name', name);
    const admin = await createKnex({ client: 'pg', connection: url, pool: { min: 0, max: 1 } });
    return new PgKiller(admin, cli.toString(), name);
  }

  async round(): Promise<number> {
    const r = (await this.#admin.raw(
      'SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity WHERE application_name = ? AND pid <> pg_backend_pid()',
      [this.#name],
    )) as { rows: { ended: boolean }[] };
    const n = r.rows.filter((x) => x.ended).length;
    if (n > 0) {
      this.rounds++;
      this.killed += n;
    }
    return n;
  }

  async close(): Promise<void> {
    await this.#admin.destroy();
  }
}

/** What differs between the databases: the `meta` client, its killer. */
interface Database {
  name: string;
  client: 'mysql2' | 'pg';
  url: string;
  killer(): Promise<Killer>;
}

interface Target {
  config: Record<string, unknown>;
  /** key → sha256 of every blob in the new backend. */
  contents(): Promise<Map<string, string>>;
}

async function killAndRerun(
  db: Database,
  count: number,
  target: (dir: string) => Promise<Target>,
): Promise<string> {
  const { url, client } = db;
  const dir = await mkdtemp(join(tmpdir(), 'blobshift-db-'));
  const table = uniqueName('bs_');
  const killer = await db.killer();
  try {
    const meta = await MetaDB.open({ client, connection: url }, { table });
    let blobs: SeededBlob[];
    try {
      blobs = await seedOldFs(meta, join(dir, 'old'), count, { sizeOf: (i) => 100 + ((i * 7919) % 1900) });
    } finally {
      await meta.close();
    }
    const side = await target(dir);
    const config = await writeConfig(join(dir, 'blobshift.config.json'), {
      meta: { client, connection: '$META_URL', table },
      old: { type: 'fs', root: './old' },
      new: side.config,
    });
    const args = backfillArgs(
      config,
      join(dir, 'logs'),
      '--concurrency',
      '4',
      '--chunk-size',
      '100',
      '--max-rate',
      '300',
      '--no-progress',
      '--json',
    );
    const env = { META_URL: killer.cliUrl };
    const exits: string[] = [];
    let last: CliResult | undefined;
    let summary: Summary | undefined;
    for (let attempt = 0; attempt <= MAX_RERUNS; attempt++) {
      const running = startCli(args, { env, cwd: dir, timeoutMs: 80_000 });
      let finished = false;
      const killing = (async () => {
        // Mid-run: once the run has started copying (its start line is out),
        // then a round every ~0.9 s while kills remain.
        for (let waited = 0; !finished && !STARTED.test(running.stderr) && waited < 60_000; waited += 50) {
          await sleep(50);
        }
        await sleep(300);
        while (!finished && killer.rounds < KILL_ROUNDS) {
          await killer.round();
          await sleep(900);
        }
      })();
      last = await running.done;
      finished = true;
      await killing;
      exits.push(String(last.code));
      const why = `attempt ${attempt + 1}, exits ${exits.join(',')}, ${killer.rounds} kill rounds: ${last.stderr.slice(-2000)}`;
      expect(last.code, why).to.be.oneOf([0, 3]);
      summary = JSON.parse(last.stdout) as Summary;
      if (last.code === 0) break;
      expect(summary.status, why).to.equal('infrastructure');
      // The checkpoint is in the database: the run's state row stands, not completed.
      const check = await MetaDB.open({ client, connection: url }, { table, create: false });
      try {
        const state = await check.getRun('default', '');
        expect(state, `${why}: no checkpoint saved`).to.not.equal(undefined);
        expect(state?.status, why).to.not.equal('completed');
        expect(state?.attempts, why).to.equal(attempt + 1);
      } finally {
        await check.close();
      }
    }
    const why = `exits ${exits.join(',')}, ${killer.rounds} kill rounds (${killer.killed} connections)`;
    expect(last?.code, `${why}: ${last?.stderr.slice(-2000)}`).to.equal(0);
    expect(killer.rounds, `${why}: the run ended before the kills`).to.be.at.least(2);
    if (!summary) throw new Error('no summary');
    expect(summary.status, why).to.equal('completed');
    expect(summary.failed + summary.notFound, why).to.equal(0);
    expect(summary.total, why).to.equal(blobs.length);
    expect(summary.copied + summary.present, `${why}: copied + present`).to.equal(blobs.length);

    const found = await side.contents();
    const lost = blobs.filter((b) => !found.has(b.key)).map((b) => b.key);
    const wrong = blobs.filter((b) => found.has(b.key) && found.get(b.key) !== b.sha256).map((b) => b.key);
    expect(lost, `${why}: blobs lost`).to.deep.equal([]);
    expect(wrong, `${why}: blobs not byte-identical`).to.deep.equal([]);
    return `${why}; ${summary.seconds} s of copying; copied ${summary.copied} + present ${summary.present} = ${blobs.length}, lost 0`;
  } finally {
    await killer.close().catch(() => {});
    await dropOwnTables({ client, connection: url }, table).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

function filesTarget(dir: string): Target {
  const newRoot = join(dir, 'new');
  return {
    config: { type: 'fs', root: './new' },
    async contents() {
      const out = new Map<string, string>();
      for (const f of await walkFiles(newRoot).catch(() => [] as string[])) {
        if (f.split('/').some((s) => s.startsWith('.blobshift-'))) continue;
        out.set(f, (await fileSha(join(newRoot, f))) ?? '');
      }
      return out;
    },
  };
}

/**
 * The kill tests on one database: files → files always; files → s3rver
 * where `withS3` (MariaDB; PostgreSQL runs the files case, which makes more
 * of its connections per second, to keep the suite's time down).
 */
function describeKills(db: Database, how: string, withS3: boolean): void {
  describe(`reliability: ${db.name} connections ${how} mid-backfill`, function () {
    this.timeout(180_000);

    it(`filesystem → filesystem, ${FS_BLOBS} blobs, ${KILL_ROUNDS} kill rounds: each run exits 0 or 3 with a checkpoint, reruns complete, all there byte-identical, copied + present = blobs`, async function () {
      const result = await killAndRerun(db, FS_BLOBS, async (dir) => filesTarget(dir));
      if (this.test) this.test.title += ` [${result}]`;
    });

    if (!withS3) return;
    it(`filesystem → s3rver, ${S3_BLOBS} blobs, ${KILL_ROUNDS} kill rounds: each run exits 0 or 3 with a checkpoint, reruns complete, all there byte-identical, copied + present = blobs`, async function () {
      const s3 = await startS3rver();
      const admin = s3.client();
      try {
        const bucket = await createBucket(admin);
        const result = await killAndRerun(db, S3_BLOBS, async () => ({
          config: {
            type: 's3',
            bucket,
            endpoint: s3.endpoint,
            region: 'us-east-1',
            forcePathStyle: true,
            credentials: { ...S3RVER_CREDENTIALS },
            requestChecksumCalculation: 'WHEN_REQUIRED',
            responseChecksumValidation: 'WHEN_REQUIRED',
          },
          async contents() {
            const listed = await listBucket(admin, bucket);
            return bucketShas(admin, bucket, [...listed.keys()]);
          },
        }));
        if (this.test) this.test.title += ` [${result}]`;
      } finally {
        admin.destroy();
        await s3.stop();
      }
    });
  });
}

if (MYSQL_URL) {
  const url = MYSQL_URL;
  describeKills(
    { name: 'MariaDB', client: 'mysql2', url, killer: () => MysqlKiller.open(url) },
    'KILLed',
    true,
  );
} else {
  announce('BLOBSHIFT_TEST_MYSQL', 'MariaDB (reliability: database going away)');
}

if (PG_URL) {
  const url = PG_URL;
  describeKills(
    { name: 'PostgreSQL', client: 'pg', url, killer: () => PgKiller.open(url) },
    'ended by pg_terminate_backend',
    false,
  );
} else {
  announce('BLOBSHIFT_TEST_PG', 'PostgreSQL (reliability: database going away)');
}
