/**
 * How the engine reads a metadata database that goes away: errors from real
 * servers whose connections are ended under a query must read as a lost
 * infrastructure (the run saves its checkpoint and exits 3, a rerun resumes)
 * and as worth a retry, never as a problem of one blob. PostgreSQL ends them
 * with `pg_terminate_backend` (SQLSTATE 57P01 for the query, then the pg
 * driver's own "Connection terminated unexpectedly", without a code, for
 * the next query on that connection); MariaDB with `KILL`. And a server
 * that does not answer: the error is thrown, and knex's own printout of it
 * never reaches stdout (where `--json` goes).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import type { Knex } from 'knex';
import { PreflightError } from '../../lib/contract/errors.js';
import { isInfrastructureError, isTransientError } from '../../lib/engine/errors.js';
import { createKnex, MetaDB } from '../../lib/meta/index.js';
import { runCli, writeConfig } from '../support/cli.js';
import { announce, MYSQL_URL, PG_URL, uniqueName } from '../support/env.js';
import { rejectionOf } from '../support/promises.js';
import { sleep } from '../support/time.js';

function expectConnectionLost(err: unknown, what: string): void {
  expect(err, what).to.be.instanceOf(Error);
  expect(isInfrastructureError(err), `${what}: ${(err as Error).message}`).to.equal(true);
  expect(isTransientError(err), `${what}: ${(err as Error).message}`).to.equal(true);
}

if (PG_URL) {
  const url = PG_URL;
  describe('metadata connection errors: PostgreSQL', function () {
    this.timeout(30_000);
    let admin: Knex;
    before(async () => {
      admin = await createKnex({ client: 'pg', connection: url, pool: { min: 0, max: 1 } });
    });
    after(async () => {
      await admin.destroy();
    });

    it('a connection ended mid-query, and the next query on it, read as a lost infrastructure', async () => {
      const name = uniqueName('victim');
      const victimUrl = new URL(url);
      victimUrl.searchParams.set('application_name', name);
      const victim = await createKnex({
        client: 'pg',
        connection: victimUrl.toString(),
        pool: { min: 0, max: 1 },
        // knex reports the lost connection as a warning; it is expected here.
        log: { warn() {}, error() {}, deprecate() {}, debug() {} },
      });
      try {
        await victim.raw('select 1');
        const sleeping = rejectionOf(victim.raw('select pg_sleep(5)'));
        for (let i = 0; i < 100; i++) {
          const r = (await admin.raw(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ? AND state = 'active'",
            [name],
          )) as { rows: { n: number }[] };
          if (r.rows[0]?.n) break;
          await sleep(20);
        }
        await admin.raw('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?', [
          name,
        ]);
        const midQuery = await sleeping;
        expect((midQuery as { code?: unknown }).code).to.equal('57P01');
        expectConnectionLost(midQuery, 'the query whose connection was ended');
        // The pool hands the dead connection out once more before it knows.
        const next = await victim.raw('select 1').then(
          () => undefined,
          (err: unknown) => err,
        );
        if (next !== undefined) expectConnectionLost(next, 'the next query on the ended connection');
        // And then it reconnects.
        expect(await victim.raw('select 1')).to.not.equal(undefined);
      } finally {
        await victim.destroy();
      }
    });

    it('a server that refuses connections reads as a lost infrastructure', async () => {
      const nowhere = new URL(url);
      nowhere.port = '1';
      const k = await createKnex({
        client: 'pg',
        connection: nowhere.toString(),
        acquireConnectionTimeout: 3000,
        log: { warn() {}, error() {}, deprecate() {}, debug() {} },
      });
      try {
        expectConnectionLost(await rejectionOf(k.raw('select 1')), 'connection refused');
      } finally {
        await k.destroy();
      }
    });
  });
} else {
  announce('BLOBSHIFT_TEST_PG', 'metadata connection errors on PostgreSQL');
}

if (MYSQL_URL) {
  const url = MYSQL_URL;
  describe('metadata connection errors: MariaDB', function () {
    this.timeout(30_000);

    it('a connection KILLed mid-query reads as a lost infrastructure', async () => {
      const admin = await createKnex({ client: 'mysql2', connection: url, pool: { min: 0, max: 1 } });
      const victim = await createKnex({ client: 'mysql2', connection: url, pool: { min: 0, max: 1 } });
      try {
        const [rows] = (await victim.raw('SELECT CONNECTION_ID() AS id')) as [{ id: number }[]];
        const id = Number(rows[0]?.id);
        const sleeping = rejectionOf(victim.raw('SELECT SLEEP(5)'));
        await sleep(200);
        await admin.raw(`KILL ${id}`);
        expectConnectionLost(await sleeping, 'the query whose connection was KILLed');
      } finally {
        await victim.destroy();
        await admin.destroy();
      }
    });
  });
}

describe('metadata connection errors: nothing on stdout', function () {
  this.timeout(60_000);
  const unreachable: [string, Knex.Config][] = [
    ['PostgreSQL', { client: 'pg', connection: 'postgres://app@127.0.0.1:1/test' }],
    ['MariaDB', { client: 'mysql2', connection: 'mysql://app@127.0.0.1:1/test' }],
  ];

  for (const [name, config] of unreachable) {
    it(`MetaDB.open of a ${name} server that does not answer writes nothing to stdout (the error is thrown)`, async () => {
      const written: string[] = [];
      const write = process.stdout.write;
      process.stdout.write = ((chunk: unknown, ...rest: unknown[]) => {
        written.push(String(chunk));
        return (write as (...a: unknown[]) => boolean).call(process.stdout, chunk, ...rest);
      }) as typeof process.stdout.write;
      let err: unknown;
      try {
        err = await rejectionOf(MetaDB.open({ ...config, acquireConnectionTimeout: 3000 }));
      } finally {
        process.stdout.write = write;
      }
      expect(err).to.be.instanceOf(PreflightError);
      expect((err as Error).message).to.include('ECONNREFUSED');
      expect(written.join('')).to.equal('');
    });

    it(`blobshift estimate --json on a ${name} server that does not answer: stdout empty, one line on stderr, exit 2`, async () => {
      const dir = await mkdtemp(join(tmpdir(), 'blobshift-conn-'));
      try {
        const cfg = await writeConfig(join(dir, 'c.json'), { meta: config });
        const r = await runCli(['estimate', '--json', '-c', cfg], { cwd: dir });
        expect(r.code, r.stderr).to.equal(2);
        expect(r.stdout).to.equal('');
        expect(r.stderr.trim().split('\n'), r.stderr).to.have.length(1);
        expect(r.stderr).to.include('ECONNREFUSED');
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  }
});
