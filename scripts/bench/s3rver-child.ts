/**
 * s3rver on 127.0.0.1 (a free port) serving the directory given as the only
 * argument; prints `port N` once listening, stops on SIGTERM. Run with
 * `--openssl-legacy-provider` (s3rver's listing tokens use DES).
 */
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';

const require = createRequire(import.meta.url);
const S3rver = require('s3rver') as new (
  o: Record<string, unknown>,
) => { run(): Promise<AddressInfo>; close(): Promise<void> };

const directory = process.argv[2];
if (!directory) throw new Error('usage: s3rver-child.ts DIRECTORY');
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory });
const address = await server.run();
process.stdout.write(`port ${address.port}\n`);
// Nothing to keep: the directory is thrown away (a graceful close can wait on keep-alive sockets).
process.on('SIGTERM', () => process.exit(0));
// Orphaned (the bench died): go too.
process.on('disconnect', () => process.exit(0));
setInterval(() => {
  if (process.ppid === 1) process.exit(0);
}, 1000).unref();
