/**
 * The module paths from before lib/ was split into layers still resolve:
 * each is a deprecated one-line re-export of the module's new home, and a
 * name imported through it is the very same object as through the new path.
 */
import { expect } from 'chai';
import * as app from '../lib/app/migrating.js';
import * as store from '../lib/app/store.js';
import * as fs from '../lib/backends/fs/index.js';
import * as oldFs from '../lib/backends/fs.js';
import * as memory from '../lib/backends/memory/index.js';
import * as oldMemory from '../lib/backends/memory.js';
import * as s3 from '../lib/backends/s3/index.js';
import * as oldS3 from '../lib/backends/s3.js';
import * as oldBody from '../lib/body.js';
import * as log from '../lib/cli/log.js';
import * as config from '../lib/config/index.js';
import * as oldConfig from '../lib/config.js';
import * as body from '../lib/contract/body.js';
import * as errors from '../lib/contract/errors.js';
import * as format from '../lib/contract/format.js';
import * as keys from '../lib/contract/keys.js';
import type { WalkOptions } from '../lib/contract/meta.js';
import * as redact from '../lib/contract/redact.js';
import type { BlobDB } from '../lib/contract/types.js';
import * as backfill from '../lib/engine/backfill.js';
import * as checkLogs from '../lib/engine/check-logs.js';
import * as cleanup from '../lib/engine/cleanup.js';
import * as copy from '../lib/engine/copy.js';
import * as engineErrors from '../lib/engine/errors.js';
import * as hash from '../lib/engine/hash.js';
import * as ledger from '../lib/engine/ledger.js';
import * as missingLog from '../lib/engine/missing-log.js';
import * as preflight from '../lib/engine/preflight.js';
import * as presentIndex from '../lib/engine/present-index.js';
import * as report from '../lib/engine/report.js';
import * as verify from '../lib/engine/verify.js';
import * as oldErrors from '../lib/errors.js';
import * as oldFormat from '../lib/format.js';
import * as oldKeys from '../lib/keys.js';
import * as oldLog from '../lib/log.js';
import type { WalkOptions as OldWalkOptions } from '../lib/meta/types.js';
import * as oldBackfill from '../lib/migrate/backfill.js';
import * as oldCheckLogs from '../lib/migrate/check-logs.js';
import * as oldCleanup from '../lib/migrate/cleanup.js';
import * as oldCopy from '../lib/migrate/copy.js';
import * as oldMigrateErrors from '../lib/migrate/errors.js';
import * as oldHash from '../lib/migrate/hash.js';
import * as oldLedger from '../lib/migrate/ledger.js';
import * as oldMissingLog from '../lib/migrate/missing-log.js';
import * as oldPreflight from '../lib/migrate/preflight.js';
import * as oldPresentIndex from '../lib/migrate/present-index.js';
import * as oldReport from '../lib/migrate/report.js';
import * as oldVerify from '../lib/migrate/verify.js';
import * as oldApp from '../lib/migrating.js';
import * as oldRedact from '../lib/redact.js';
import * as oldStore from '../lib/store.js';
import type { BlobDB as OldBlobDB } from '../lib/types.js';

describe('the module paths from before the layers (deprecated re-exports)', () => {
  const pairs: [string, unknown, unknown][] = [
    ['lib/errors.ts BlobNotFoundError', oldErrors.BlobNotFoundError, errors.BlobNotFoundError],
    ['lib/keys.ts validateKey', oldKeys.validateKey, keys.validateKey],
    ['lib/migrating.ts MigratingBlobDB', oldApp.MigratingBlobDB, app.MigratingBlobDB],
    ['lib/store.ts BlobStore', oldStore.BlobStore, store.BlobStore],
    ['lib/config.ts loadConfig', oldConfig.loadConfig, config.loadConfig],
    ['lib/backends/fs.ts FilesystemBlobDB', oldFs.FilesystemBlobDB, fs.FilesystemBlobDB],
    ['lib/backends/s3.ts S3BlobDB', oldS3.S3BlobDB, s3.S3BlobDB],
    ['lib/backends/memory.ts MemoryBlobDB', oldMemory.MemoryBlobDB, memory.MemoryBlobDB],
    ['lib/migrate/backfill.ts backfill', oldBackfill.backfill, backfill.backfill],
    ['lib/migrate/check-logs.ts checkBlobLogs', oldCheckLogs.checkBlobLogs, checkLogs.checkBlobLogs],
    ['lib/migrate/verify.ts verify', oldVerify.verify, verify.verify],
    ['lib/migrate/cleanup.ts cleanupOld', oldCleanup.cleanupOld, cleanup.cleanupOld],
    ['lib/migrate/missing-log.ts readMissingLog', oldMissingLog.readMissingLog, missingLog.readMissingLog],
    ['lib/migrate/present-index.ts PresentIndex', oldPresentIndex.PresentIndex, presentIndex.PresentIndex],
    ['lib/migrate/copy.ts copyBlob', oldCopy.copyBlob, copy.copyBlob],
    ['lib/body.ts readAll', oldBody.readAll, body.readAll],
    ['lib/format.ts humanBytes', oldFormat.humanBytes, format.humanBytes],
    ['lib/log.ts createLogger', oldLog.createLogger, log.createLogger],
    ['lib/redact.ts redact', oldRedact.redact, redact.redact],
    [
      'lib/migrate/errors.ts isTransientError',
      oldMigrateErrors.isTransientError,
      engineErrors.isTransientError,
    ],
    ['lib/migrate/hash.ts hashBlob', oldHash.hashBlob, hash.hashBlob],
    ['lib/migrate/ledger.ts requireCleanVerify', oldLedger.requireCleanVerify, ledger.requireCleanVerify],
    ['lib/migrate/preflight.ts preflight', oldPreflight.preflight, preflight.preflight],
    [
      'lib/migrate/report.ts formatBackfillSummary',
      oldReport.formatBackfillSummary,
      report.formatBackfillSummary,
    ],
  ];
  for (const [what, old, now] of pairs) {
    it(`${what} is the same as at its new path`, () => {
      expect(old, what).to.be.a('function');
      expect(old, what).to.equal(now);
    });
  }

  it('lib/types.ts gives the same BlobDB type', () => {
    const db = new memory.MemoryBlobDB();
    // Type-level: each is assignable to the other.
    const viaOld: OldBlobDB = db;
    const viaNew: BlobDB = viaOld;
    expect(viaNew).to.equal(db);
  });

  it('lib/meta/types.ts gives the same WalkOptions type', () => {
    const walk: WalkOptions = { chunkSize: 10 };
    const viaOld: OldWalkOptions = walk;
    const viaNew: WalkOptions = viaOld;
    expect(viaNew).to.equal(walk);
  });
});
