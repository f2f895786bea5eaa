/**
 * The one BlobDB conformance suite. Every backend's test file calls
 * `describeBlobDB(name, factory, options)`; options switch off what a backend
 * cannot do, and each call site says why in a comment.
 *
 * The factory is called once per test and must return a fresh instance (the
 * suite closes it after the test). Every test writes under its own random
 * namespace (`keyPrefix` + a unique segment + `/`), so instances may share a
 * bucket or a root.
 *
 * The tests live by topic, one file each (put, overwrite, get, delete, keys,
 * list); each topic exports functions that register one describe block given
 * the same factory and options, so a backend may also run one topic alone.
 */
import type { BlobDBFactory, ConformanceOptions } from './context.js';
import { deleteTests } from './delete.js';
import { getWithInfoTests, missingKeyTests, signedUrlTests, statTests } from './get.js';
import { invalidKeyTests, keyConflictTests } from './keys.js';
import { listTests } from './list.js';
import { overwriteTests } from './overwrite.js';
import { failedStreamTests, putTests, sizeCheckTests } from './put.js';

export type { BlobDBFactory, ConformanceOptions } from './context.js';
export { byteSorted, getBytes, listInfos, listKeys, rejectionOf } from './helpers.js';

/** Registers the conformance tests for one backend. */
export function describeBlobDB(name: string, factory: BlobDBFactory, options: ConformanceOptions = {}): void {
  describe(`BlobDB conformance: ${name}`, function () {
    this.timeout(options.slow ? 180_000 : 60_000);
    for (const topic of [
      putTests,
      overwriteTests,
      sizeCheckTests,
      statTests,
      getWithInfoTests,
      signedUrlTests,
      missingKeyTests,
      deleteTests,
      invalidKeyTests,
      listTests,
      keyConflictTests,
      failedStreamTests,
    ]) {
      topic(factory, options);
    }
  });
}
