import { expect } from 'chai';
import { MemoryBlobDB } from '../../lib/backends/memory/index.js';
import { PreflightError } from '../../lib/contract/errors.js';
import { PROBE_PREFIX, preflight } from '../../lib/engine/preflight.js';
import { WrappedBlobDB } from '../support/wrap.js';

async function probesIn(db: MemoryBlobDB): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of db.list({ prefix: PROBE_PREFIX })) keys.push(info.key);
  return keys;
}

/** A new backend whose write probes another process sweeps right after they land, `times` times. */
function sweptBy(inner: MemoryBlobDB, times: number): WrappedBlobDB {
  let left = times;
  return new WrappedBlobDB(inner, {
    afterPut: async (key) => {
      if (key.startsWith(PROBE_PREFIX) && left > 0) {
        left--;
        await inner.delete(key);
      }
    },
  });
}

describe('preflight write probe', () => {
  it('writes a probe, finds old and new distinct, and leaves no probe behind', async () => {
    const oldDb = new MemoryBlobDB();
    const inner = new MemoryBlobDB();
    const newDb = new WrappedBlobDB(inner);
    await preflight({ oldDb, newDb, write: true });
    expect(newDb.putKeys.filter((k) => k.startsWith(PROBE_PREFIX))).to.have.length(1);
    expect(await probesIn(inner)).to.deep.equal([]);
  });

  it('refuses old = new: the probe written to new shows up in old', async () => {
    const same = new MemoryBlobDB();
    const err = await preflight({ oldDb: same, newDb: same, write: true }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(PreflightError);
    expect(String(err)).to.match(/same place/);
    expect(await probesIn(same)).to.deep.equal([]);
  });

  it('a probe swept by another process before old is asked proves nothing: it probes again', async () => {
    const oldDb = new MemoryBlobDB();
    const inner = new MemoryBlobDB();
    const newDb = sweptBy(inner, 1);
    await preflight({ oldDb, newDb, write: true });
    expect(newDb.putKeys.filter((k) => k.startsWith(PROBE_PREFIX))).to.have.length(2);
    expect(await probesIn(inner)).to.deep.equal([]);
  });

  it('still refuses old = new when another process swept the first probe', async () => {
    const same = new MemoryBlobDB();
    const err = await preflight({ oldDb: same, newDb: sweptBy(same, 1), write: true }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(String(err)).to.match(/same place/);
  });

  it('gives up with a clear error when every probe vanishes', async () => {
    const err = await preflight({
      oldDb: new MemoryBlobDB(),
      newDb: sweptBy(new MemoryBlobDB(), 100),
      write: true,
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(PreflightError);
    expect(String(err)).to.match(/vanished 3 times/);
  });
});
