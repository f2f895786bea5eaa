/** MetaDB suite: walks. */
import { expect } from 'chai';
import fc from 'fast-check';
import { ConfigError } from '../../../lib/contract/errors.js';
import type { NewBlobMeta } from '../../../lib/contract/meta.js';
import type { BlobMeta } from '../../../lib/contract/types.js';
import { MetaDB } from '../../../lib/meta/index.js';
import { uniqueName } from '../../support/env.js';
import type { MetaDBContext } from './context.js';
import { collect, TYPES, walkIds } from './helpers.js';

/** Walks: chunks in id order, resuming, type filters and shards, id ranges, estimates, the highest id. */
export function walkTests(db: MetaDBContext): void {
  const { target } = db;
  describe('walks', () => {
    let meta: MetaDB;
    let all: BlobMeta[];

    before(async () => {
      const table = uniqueName('bmw');
      meta = await MetaDB.open(target.config(), { table });
      const rows: NewBlobMeta[] = [];
      for (let i = 0; i < 437; i++) {
        rows.push({
          key: `walk/${i.toString(36)}/${uniqueName('k')}`,
          parentId: `p${i % 13}`,
          type: TYPES[(i * 7919) % 5 === 4 ? 0 : (i * 31) % 4] as string,
          contentLength: (i * 104729) % 100_000,
        });
      }
      expect(await meta.addMany(rows)).to.equal(437);
      // Delete a few to leave gaps in the id sequence.
      for (const r of rows.filter((_, i) => i % 17 === 3)) await meta.delete(r.key);
      all = (await collect(meta.walk({ chunkSize: 1000 }))).flat();
    });
    after(async () => {
      const table = meta.table;
      await meta.close();
      for (const t of [`${table}_runs`, table, `${table}_migrations`, `${table}_migrations_lock`]) {
        await db.raw.schema.dropTableIfExists(t);
      }
    });

    it('yields every row once, in ascending id order, in chunks of chunkSize', async () => {
      expect(all.length).to.equal(437 - 26);
      const chunks = await collect(meta.walk({ chunkSize: 50 }));
      expect(chunks.map((c) => c.length)).to.deep.equal([50, 50, 50, 50, 50, 50, 50, 50, 11]);
      const ids = chunks.flat().map((m) => m.id);
      expect(ids).to.deep.equal(all.map((m) => m.id));
      expect(ids).to.deep.equal([...ids].sort((a, b) => a - b));
      expect(new Set(ids).size).to.equal(ids.length);
    });

    it('resumes after an id', async () => {
      const mid = all[200] as BlobMeta;
      const rest = await walkIds(meta, { chunkSize: 33, afterId: mid.id });
      expect(rest).to.deep.equal(all.slice(201).map((m) => m.id));
      expect(
        await walkIds(meta, { chunkSize: 10, afterId: (all[all.length - 1] as BlobMeta).id }),
      ).to.deep.equal([]);
    });

    it('type filters and shards cover every matching row exactly once', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.subarray(TYPES.concat('nonexistent')),
          fc.integer({ min: 1, max: 7 }),
          fc.integer({ min: 1, max: 120 }),
          fc.integer({ min: 0, max: 400 }),
          async (types, count, chunkSize, skip) => {
            const afterId = skip === 0 ? 0 : (all[Math.min(skip, all.length - 1)] as BlobMeta).id;
            const expected = all
              .filter((m) => (types.length === 0 || types.includes(m.type)) && m.id > afterId)
              .map((m) => m.id);
            const union: number[] = [];
            for (let index = 0; index < count; index++) {
              const chunks = await collect(meta.walk({ chunkSize, types, shard: { index, count }, afterId }));
              for (const c of chunks) {
                expect(c.length).to.be.within(1, chunkSize);
                for (const m of c) {
                  expect(m.id % count).to.equal(index);
                  if (types.length > 0) expect(types).to.include(m.type);
                }
              }
              const ids = chunks.flat().map((m) => m.id);
              expect(ids).to.deep.equal([...ids].sort((a, b) => a - b));
              union.push(...ids);
            }
            expect(new Set(union).size).to.equal(union.length); // disjoint
            expect(union.sort((a, b) => a - b)).to.deep.equal(expected); // complete
          },
        ),
        { numRuns: 20 },
      );
    });

    it('merges per-type cursors into full chunks in id order', async () => {
      const types = ['image', 'attachment'];
      const chunks = await collect(meta.walk({ chunkSize: 16, types }));
      const expected = all.filter((m) => types.includes(m.type));
      expect(chunks.slice(0, -1).every((c) => c.length === 16)).to.equal(true);
      expect(chunks.flat()).to.deep.equal(expected);
      expect(await walkIds(meta, { chunkSize: 16, types: ['image', 'image', 'attachment'] })).to.deep.equal(
        expected.map((m) => m.id),
      );
    });

    it('walks id ranges (after exclusive, upTo inclusive)', async () => {
      const a = (all[40] as BlobMeta).id;
      const b = (all[90] as BlobMeta).id;
      expect(await walkIds(meta, { chunkSize: 7, idRange: { after: a, upTo: b } })).to.deep.equal(
        all.slice(41, 91).map((m) => m.id),
      );
      expect(
        await walkIds(meta, { chunkSize: 7, idRange: { after: a, upTo: b }, types: ['avatar', 'export'] }),
      ).to.deep.equal(
        all
          .slice(41, 91)
          .filter((m) => ['avatar', 'export'].includes(m.type))
          .map((m) => m.id),
      );
      // A resume point inside the range wins over the range's start.
      const c = (all[60] as BlobMeta).id;
      expect(await walkIds(meta, { chunkSize: 5, idRange: { after: a, upTo: b }, afterId: c })).to.deep.equal(
        all.slice(61, 91).map((m) => m.id),
      );
      expect(await walkIds(meta, { chunkSize: 5, idRange: { after: b, upTo: a } })).to.deep.equal([]);
    });

    it('refuses bad chunk sizes and shards', async () => {
      for (const opts of [
        { chunkSize: 0 },
        { chunkSize: 1.5 },
        { chunkSize: 10, shard: { index: 3, count: 3 } },
        { chunkSize: 10, shard: { index: -1, count: 3 } },
        { chunkSize: 10, shard: { index: 0, count: 0 } },
      ]) {
        const err = await collect(meta.walk(opts)).catch((e: unknown) => e);
        expect(err, JSON.stringify(opts)).to.be.instanceOf(ConfigError);
      }
    });

    it('estimates counts and bytes per type', async () => {
      const est = await meta.estimate();
      expect(est.count).to.equal(all.length);
      expect(est.bytes).to.equal(all.reduce((s, m) => s + m.contentLength, 0));
      for (const t of TYPES) {
        const rows = all.filter((m) => m.type === t);
        expect(est.byType[t], t).to.deep.equal({
          count: rows.length,
          bytes: rows.reduce((s, m) => s + m.contentLength, 0),
        });
      }
      const some = await meta.estimate({ types: ['image', 'avatar', 'nothing'] });
      const rows = all.filter((m) => m.type === 'image' || m.type === 'avatar');
      expect(some.count).to.equal(rows.length);
      expect(some.bytes).to.equal(rows.reduce((s, m) => s + m.contentLength, 0));
      expect(some.byType.nothing).to.deep.equal({ count: 0, bytes: 0 });
      expect(Object.keys(some.byType).sort()).to.deep.equal(['avatar', 'image', 'nothing']);
    });

    it('reports the highest id, within types', async () => {
      expect(await meta.maxId()).to.equal((all[all.length - 1] as BlobMeta).id);
      const images = all.filter((m) => m.type === 'image');
      expect(await meta.maxId({ types: ['image'] })).to.equal((images[images.length - 1] as BlobMeta).id);
      expect(await meta.maxId({ types: ['nothing'] })).to.equal(0);
    });
  });
}
