/**
 * s3rver, unlike AWS and Ceph RGW, writes a PUT into place as its bytes
 * arrive and keeps what it got when the client dies mid-request: a SIGKILL in
 * the middle of a PutObject can leave a shorter (even empty) object under the
 * key. blobshift never counts such an object as present and never overwrites
 * it (it may be the app's): the run logs it "size mismatch in the new backend"
 * and exits 1. The kill tests on s3rver accept exactly that, and nothing else.
 */
import { expect } from 'chai';
import { readAll } from '../../lib/contract/body.js';
import type { BlobDB } from '../../lib/contract/types.js';
import { readMissingLog } from '../../lib/engine/missing-log.js';

const LEFTOVER =
  /^size mismatch in the new backend: it holds (\d+) bytes, the metadata says (\d+); not overwritten$/;

/**
 * The keys the run logged as failed, checked to be s3rver's truncated
 * leftovers: every record is a size mismatch in new, and the object there is
 * a strict prefix of the source's bytes. Resolves those keys.
 */
export async function truncatedLeftovers(logs: string[], oldDb: BlobDB, newDb: BlobDB): Promise<Set<string>> {
  const keys = new Set<string>();
  for (const log of logs) {
    await readMissingLog(
      log,
      async (record) => {
        const m = LEFTOVER.exec(record.error);
        expect(
          m,
          `${record.key}: only s3rver's truncated leftovers may fail, not "${record.error}"`,
        ).to.not.equal(null);
        const source = await readAll(await oldDb.get(record.key));
        const inNew = await readAll(await newDb.get(record.key));
        expect(inNew.length, `${record.key}: shorter than the source`).to.be.lessThan(source.length);
        expect(
          source.subarray(0, inNew.length).equals(inNew),
          `${record.key}: a prefix of the source`,
        ).to.equal(true);
        keys.add(record.key);
      },
      () => {},
    );
  }
  return keys;
}
