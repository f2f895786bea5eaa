/**
 * What every topic of the MetaDB suite shares: the database it runs on, a
 * knex of its own for direct checks, and opening MetaDBs whose tables are
 * dropped after each test.
 */
import type { Knex } from 'knex';
import type { MetaOpenOptions } from '../../../lib/contract/meta.js';
import { createKnex, MetaDB } from '../../../lib/meta/index.js';
import { uniqueName } from '../../support/env.js';

/** A database the suite runs on. */
export interface Target {
  dialect: 'sqlite' | 'mysql' | 'pg';
  /** A knex config for the database the suite runs in. */
  config(): Knex.Config;
  /** A config for a fresh, empty database (dropped by `dropDatabase`). */
  freshDatabase(): Promise<{ config: Knex.Config; drop(): Promise<void> }>;
  setup(): Promise<void>;
  teardown(): Promise<void>;
}

/** The suite's database and helpers, for the topics' tests. */
export interface MetaDBContext {
  readonly target: Target;
  /** A knex on the target for direct checks (open while the tests run). */
  readonly raw: Knex;
  /** Opens a MetaDB (a fresh table unless `opts.table` names one), closed after the test. */
  open(opts?: MetaOpenOptions, knexOrConfig?: Knex | Knex.Config): Promise<MetaDB>;
  /** Registers blobshift's tables for `table` to be dropped after the test. */
  track(table: string): void;
  /** MetaDBs closed after the test (push any opened otherwise). */
  readonly opened: MetaDB[];
  /** Tables dropped after the test, in reverse order. */
  readonly tables: string[];
}

/**
 * Registers, in the calling describe block, the target's setup and a knex on
 * it before the tests and their teardown after them, and after each test the
 * MetaDBs closed and the tables dropped; returns the helpers.
 */
export function useMetaDB(target: Target): MetaDBContext {
  let raw: Knex | undefined;
  const opened: MetaDB[] = [];
  const tables: string[] = [];
  const knex = (): Knex => {
    if (!raw) throw new Error('the suite has not connected');
    return raw;
  };

  before(async () => {
    await target.setup();
    raw = await createKnex(target.config());
  });
  after(async () => {
    await raw?.destroy();
    await target.teardown();
  });
  afterEach(async () => {
    for (const m of opened.splice(0)) await m.close();
    for (const t of tables.splice(0).reverse()) await knex().schema.dropTableIfExists(t);
  });

  const track = (table: string): void => {
    tables.push(table, `${table}_runs`, `${table}_migrations`, `${table}_migrations_lock`);
  };
  return {
    target,
    get raw() {
      return knex();
    },
    async open(opts: MetaOpenOptions = {}, knexOrConfig?: Knex | Knex.Config): Promise<MetaDB> {
      const table = opts.table ?? uniqueName('bm');
      if (!opts.columns) track(table);
      const meta = await MetaDB.open(knexOrConfig ?? target.config(), { ...opts, table });
      opened.push(meta);
      return meta;
    },
    track,
    opened,
    tables,
  };
}
