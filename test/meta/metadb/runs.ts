/** MetaDB suite: run state. */
import { expect } from 'chai';
import type { RunState } from '../../../lib/contract/meta.js';
import type { MetaDBContext } from './context.js';
import { sampleRun } from './helpers.js';

/** Run state: saved, listed and deleted per name and shard. */
export function runStateTests(db: MetaDBContext): void {
  const { open } = db;
  it('round-trips run state', async () => {
    const meta = await open();
    expect(await meta.getRun('default', '')).to.equal(undefined);
    expect(await meta.listRuns()).to.deep.equal([]);
    const a = sampleRun('default', '');
    const b = sampleRun('default', '1/4');
    const c = sampleRun('alpha', '');
    await meta.saveRun(a);
    await meta.saveRun(b);
    await meta.saveRun(c);
    expect(await meta.getRun('default', '')).to.deep.equal(a);
    expect(await meta.getRun('default', '1/4')).to.deep.equal(b);
    const updated: RunState = {
      ...a,
      status: 'completed',
      lowWaterMark: 2 ** 40,
      counts: { ...a.counts, copied: 5, bytes: 2 ** 45 },
      logs: [...a.logs, 'backfill-default-20260102T000000Z.jsonl'],
      attempts: 2,
      exitCode: 0,
      finishedAt: new Date('2026-01-02T03:04:05.678Z'),
      extra: { done: [[1, 100]], note: 'ünï' },
    };
    await meta.saveRun(updated);
    expect(await meta.getRun('default', '')).to.deep.equal(updated);
    expect((await meta.listRuns()).map((r) => [r.name, r.shard])).to.deep.equal([
      ['alpha', ''],
      ['default', ''],
      ['default', '1/4'],
    ]);
    expect(await meta.deleteRun('default', '1/4')).to.equal(true);
    expect(await meta.deleteRun('default', '1/4')).to.equal(false);
    expect(await meta.getRun('default', '1/4')).to.equal(undefined);
  });
}
