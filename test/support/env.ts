/**
 * Which real servers the test run may use. SQLite, the filesystem and an
 * in-process s3rver always run. MariaDB, PostgreSQL, Ceph RGW and Redis run
 * when their variable is set (CI sets all four):
 *   BLOBSHIFT_TEST_MYSQL  a knex connection URL, e.g. mysql://root@127.0.0.1:3306/test
 *   BLOBSHIFT_TEST_RGW    an S3 endpoint, e.g. http://127.0.0.1:7480 (keys TESTACCESSKEY/TESTSECRETKEY,
 *                         or BLOBSHIFT_TEST_RGW_KEY / BLOBSHIFT_TEST_RGW_SECRET)
 *   BLOBSHIFT_TEST_REDIS  a Redis URL, e.g. redis://127.0.0.1:6379
 *   BLOBSHIFT_TEST_PG     a PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/test
 * A suite whose server is not configured is not registered; `announce` says so
 * once in the output so a reader sees what did not run.
 */
import { randomBytes } from 'node:crypto';

process.env.AWS_EC2_METADATA_DISABLED = 'true';
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export const MYSQL_URL = process.env.BLOBSHIFT_TEST_MYSQL || undefined;
export const RGW_ENDPOINT = process.env.BLOBSHIFT_TEST_RGW || undefined;
export const RGW_CREDENTIALS = {
  accessKeyId: process.env.BLOBSHIFT_TEST_RGW_KEY || 'TESTACCESSKEY',
  secretAccessKey: process.env.BLOBSHIFT_TEST_RGW_SECRET || 'TESTSECRETKEY',
};
export const REDIS_URL = process.env.BLOBSHIFT_TEST_REDIS || undefined;
export const PG_URL = process.env.BLOBSHIFT_TEST_PG || undefined;

const announced = new Set<string>();
/** Prints once that a server's suites are not part of this run, and how to enable them. */
export function announce(variable: string, what: string): void {
  if (announced.has(variable)) return;
  announced.add(variable);
  process.stderr.write(`note: ${what} tests not registered; set ${variable} to run them\n`);
}

/** A short random name for buckets, tables and keys (lower-case, starts with a letter). */
export function uniqueName(prefix = 't'): string {
  return `${prefix}${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
}
