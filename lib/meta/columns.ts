/**
 * What an app's own table is made of, and the SQL that depends on it: which
 * id columns can be walked, how keys are grouped byte for byte, how sizes are
 * summed when the column is not an integer column. Used when `MetaDB.open`
 * maps a table with `columns`.
 */
import type { Knex } from 'knex';
import { ConfigError } from '../errors.js';
import type { Dialect } from './schema.js';

/** What `knex(table).columnInfo()` says of one column. */
export interface ColumnFacts {
  type: string;
  maxLength: unknown;
  nullable: boolean;
}

/** A column's SQL type as a person would write it: `VARCHAR(255)`, `BIGINT`, `no declared type`. */
export function describeType(facts: ColumnFacts): string {
  const type = facts.type.trim();
  if (type === '') return 'a column with no declared type';
  const len = facts.maxLength;
  const withLength =
    len !== null && len !== undefined && len !== '' && !/\(/.test(type) && /char|binary/i.test(type)
      ? `${type}(${String(len)})`
      : type;
  return withLength.toUpperCase();
}

/** SQLite's type affinity of a declared type (the rules of sqlite.org/datatype3.html, in order). */
export function sqliteAffinity(declared: string): 'INTEGER' | 'TEXT' | 'BLOB' | 'REAL' | 'NUMERIC' {
  const t = declared.toUpperCase();
  if (t.includes('INT')) return 'INTEGER';
  if (t.includes('CHAR') || t.includes('CLOB') || t.includes('TEXT')) return 'TEXT';
  if (t.includes('BLOB') || t.trim() === '') return 'BLOB';
  if (t.includes('REAL') || t.includes('FLOA') || t.includes('DOUB')) return 'REAL';
  return 'NUMERIC';
}

const MYSQL_INTEGER = /^(tinyint|smallint|mediumint|int|integer|bigint)( unsigned)?$/i;

/** True when values of this column type are integers by the column's own rule. */
export function isIntegerType(dialect: Dialect, type: string): boolean {
  if (dialect === 'mysql') return MYSQL_INTEGER.test(type.trim());
  return sqliteAffinity(type) === 'INTEGER';
}

function whyNotAnId(type: string): string {
  if (/char|text|clob|string/i.test(type)) {
    return 'text sorts as text, so "10" comes before "9" and paging by id would skip or repeat rows';
  }
  if (/uuid|guid/i.test(type)) return 'UUIDs have no order new rows follow, and ids are numbers throughout';
  if (/dec|num|real|float|doub/i.test(type)) return 'fractions and rounding make paging by id unsafe';
  return 'paging by id needs whole numbers in numeric order';
}

/** The statement that adds a walkable id column to `table`, for the message of a refused id column. */
function addIdColumnAdvice(dialect: Dialect, table: string): string {
  if (dialect === 'mysql') {
    return (
      `add one: ALTER TABLE \`${table}\` ADD COLUMN blobshift_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT UNIQUE, ` +
      'then set meta.columns.id to "blobshift_id"'
    );
  }
  return (
    'add one: SQLite cannot add such a column in place, so rebuild the table with an INTEGER PRIMARY KEY ' +
    'column (create the new table, INSERT … SELECT the rows into it, swap the names) and map that column'
  );
}

function refuseId(dialect: Dialect, table: string, column: string, shownType: string, why: string): never {
  throw new ConfigError(
    'meta.columns.id',
    `column "${column}" of table ${table} is ${shownType}, not an integer column: ${why}. ` +
      `Map an integer auto-increment column as meta.columns.id, or ${addIdColumnAdvice(dialect, table)}`,
  );
}

/**
 * Refuses (`ConfigError` on `meta.columns.id`) an id column that is not of an
 * integer type: text holding numbers, UUIDs, decimals, floats. On SQLite a
 * column of INTEGER affinity passes, TEXT, REAL and BLOB affinity are
 * refused, and where values decide (NUMERIC affinity, no declared type, and
 * INTEGER columns, which can hold stray text) one probe looks for a value
 * that is not an integer.
 */
export async function checkIdColumn(
  knex: Knex,
  dialect: Dialect,
  table: string,
  column: string,
  facts: ColumnFacts,
): Promise<void> {
  const shownType = describeType(facts);
  if (dialect !== 'sqlite') {
    if (!isIntegerType(dialect, facts.type))
      refuseId(dialect, table, column, shownType, whyNotAnId(facts.type));
    return;
  }
  const affinity = sqliteAffinity(facts.type);
  if (affinity === 'TEXT' || affinity === 'REAL' || (affinity === 'BLOB' && facts.type.trim() !== '')) {
    refuseId(dialect, table, column, shownType, whyNotAnId(`${facts.type} ${affinity}`));
  }
  const bad = (await knex(table)
    .select({ value: column, kind: knex.raw('typeof(??)', [column]) })
    // Whole numbers stored as REAL (what a driver binds into a column with no
    // declared type) order and page as integers do.
    .whereRaw(
      "typeof(??) NOT IN ('integer', 'null') AND NOT (typeof(??) = 'real' AND ?? = CAST(?? AS INTEGER))",
      [column, column, column, column],
    )
    .limit(1)) as { value: unknown; kind: string }[];
  const first = bad[0];
  if (first !== undefined) {
    const value =
      typeof first.value === 'string' ? JSON.stringify(first.value.slice(0, 40)) : String(first.value);
    refuseId(
      dialect,
      table,
      column,
      `${shownType} holding a ${first.kind} value (${value})`,
      whyNotAnId(first.kind),
    );
  }
}

/**
 * A SQL expression (one `??` for the key column) that groups keys byte for
 * byte: MySQL's collations fold case and ignore trailing spaces even in
 * `_bin`, so the bytes are compared; SQLite compares with BINARY.
 */
export function exactKeyExpr(dialect: Dialect): string {
  if (dialect === 'mysql') return 'CAST(?? AS BINARY)';
  return '?? COLLATE BINARY';
}

/** How far `estimate` may trust a size column: blobshift's own, an integer type, or anything. */
export type SizeColumnKind = 'own' | 'integer' | 'any';

/**
 * The sum of a size column's usable values as a raw SQL expression, the
 * values a walk reads as sizes: blobshift's own column as it is (its rows are
 * checked on the way in); else only values from 0 to 2^53 - 1, and in a
 * column that is not of an integer type (or any SQLite column, which keeps
 * whatever it is given) only text of digits and whole numbers.
 */
export function sizeSum(knex: Knex, dialect: Dialect, column: string, kind: SizeColumnKind): Knex.Raw {
  const max = Number.MAX_SAFE_INTEGER;
  if (kind === 'own') return knex.raw('SUM(??)', [column]);
  const c = (n: number) => Array.from({ length: n }, () => column);
  if (dialect === 'mysql') {
    if (kind === 'integer') return knex.raw(`SUM(CASE WHEN ?? BETWEEN 0 AND ${max} THEN ?? END)`, c(2));
    return knex.raw(
      "SUM(CASE WHEN CAST(?? AS CHAR) REGEXP '^[0-9]{1,16}$' " +
        `AND CAST(?? AS DECIMAL(65, 0)) <= ${max} THEN CAST(?? AS DECIMAL(65, 0)) END)`,
      c(3),
    );
  }
  return knex.raw(
    `SUM(CASE WHEN typeof(??) = 'integer' AND ?? BETWEEN 0 AND ${max} THEN ?? ` +
      `WHEN typeof(??) = 'real' AND ?? BETWEEN 0 AND ${max} AND ?? = CAST(?? AS INTEGER) THEN CAST(?? AS INTEGER) ` +
      `WHEN typeof(??) = 'text' AND length(??) BETWEEN 1 AND 16 AND ?? NOT GLOB '*[^0-9]*' ` +
      `AND CAST(?? AS INTEGER) <= ${max} THEN CAST(?? AS INTEGER) END)`,
    c(13),
  );
}
