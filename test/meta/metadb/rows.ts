/** MetaDB suite: rows and lookups. */
import { expect } from 'chai';
import { BlobShiftError } from '../../../lib/contract/errors.js';
import type { NewBlobMeta } from '../../../lib/contract/meta.js';
import { createKnex } from '../../../lib/meta/index.js';
import type { MetaDBContext } from './context.js';
import { collect, row, walkIds } from './helpers.js';

/** Rows: add, get, delete, upsert; keys distinct byte for byte; unicode. */
export function rowTests(db: MetaDBContext): void {
  const { target, open } = db;
  it('adds, gets and deletes rows, with ids as numbers and dates as Dates', async () => {
    const meta = await open();
    expect(meta.readOnly).to.equal(false);
    expect(meta.dialect).to.equal(target.dialect);
    const createdOn = new Date('2024-02-29T12:34:56.789Z');
    const expiresOn = new Date('2030-01-01T00:00:00.001Z');
    const added = await meta.add({
      key: 'cases/1/report.pdf',
      parentId: 'case-1',
      type: 'attachment',
      name: 'report.pdf',
      contentLength: 12345,
      contentType: 'application/pdf',
      sha256: 'a'.repeat(64),
      createdOn,
      expiresOn,
    });
    expect(added.id).to.be.a('number').and.greaterThan(0);
    const got = await meta.get('cases/1/report.pdf');
    expect(got).to.deep.equal({
      id: added.id,
      key: 'cases/1/report.pdf',
      parentId: 'case-1',
      type: 'attachment',
      name: 'report.pdf',
      contentLength: 12345,
      contentType: 'application/pdf',
      sha256: 'a'.repeat(64),
      createdOn,
      expiresOn,
    });
    expect(got?.createdOn).to.be.instanceOf(Date);
    const minimal = await meta.add(row('k2'));
    expect(minimal.id).to.be.greaterThan(added.id);
    const gotMinimal = await meta.get('k2');
    expect(gotMinimal?.name).to.equal('');
    expect(gotMinimal?.contentType).to.equal(null);
    expect(gotMinimal?.sha256).to.equal(null);
    expect(gotMinimal?.expiresOn).to.equal(null);
    expect(gotMinimal?.createdOn.getTime()).to.be.closeTo(Date.now(), 60_000);

    expect(await meta.get('missing')).to.equal(undefined);
    expect(await meta.delete('cases/1/report.pdf')).to.equal(true);
    expect(await meta.delete('cases/1/report.pdf')).to.equal(false);
    expect(await meta.get('cases/1/report.pdf')).to.equal(undefined);
    expect(await meta.get('k2')).to.deep.equal(gotMinimal);
  });

  it('refuses a second add of a key, invalid keys and bad rows', async () => {
    const meta = await open();
    await meta.add(row('dup'));
    const err = await meta.add(row('dup')).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(BlobShiftError);
    expect((err as Error).message).to.match(/already exists.*upsert/);
    for (const bad of ['', '/abs', 'a//b', 'a/../b', 'nul\u0000']) {
      const e = await meta.add(row(bad)).catch((x: unknown) => x);
      expect(e, JSON.stringify(bad)).to.have.property('code', 'E_INVALID_KEY');
    }
    const neg = await meta.add(row('neg', { contentLength: -1 })).catch((e: unknown) => e);
    expect(neg).to.be.instanceOf(BlobShiftError);
    const sha = await meta.add(row('sha', { sha256: 'XYZ' })).catch((e: unknown) => e);
    expect(sha).to.be.instanceOf(BlobShiftError);
    expect((await meta.estimate()).count).to.equal(1);
  });

  it('upserts by key, keeping the id and the creation date unless given', async () => {
    const meta = await open();
    const first = await meta.upsert(row('u/1', { contentLength: 5, sha256: '1'.repeat(64) }));
    await meta.add(row('u/2'));
    const second = await meta.upsert(
      row('u/1', {
        contentLength: 7,
        sha256: '2'.repeat(64),
        type: 'image',
        name: 'n',
        contentType: 'image/png',
      }),
    );
    expect(second.id).to.equal(first.id);
    expect(second.contentLength).to.equal(7);
    expect(second.sha256).to.equal('2'.repeat(64));
    expect(second.type).to.equal('image');
    expect(second.contentType).to.equal('image/png');
    expect(second.createdOn.getTime()).to.equal(first.createdOn.getTime());
    const when = new Date('2020-05-05T05:05:05.005Z');
    const third = await meta.upsert(row('u/1', { createdOn: when }));
    expect(third.id).to.equal(first.id);
    expect(third.createdOn.getTime()).to.equal(when.getTime());
    expect(await meta.get('u/1')).to.deep.equal(third);
    expect((await meta.estimate()).count).to.equal(2);
  });

  it('keeps keys that differ only in case or trailing space distinct', async () => {
    const meta = await open();
    const keys = ['a/File', 'a/file', 'a/FILE', 'a/file ', 'a/file  ', 'a/fïle', 'a/fi\u0308le'];
    const ids = new Map<string, number>();
    for (const [i, k] of keys.entries()) ids.set(k, (await meta.add(row(k, { contentLength: i }))).id);
    expect(new Set(ids.values()).size).to.equal(keys.length);
    for (const [i, k] of keys.entries()) {
      const got = await meta.get(k);
      expect(got?.key, JSON.stringify(k)).to.equal(k);
      expect(got?.contentLength).to.equal(i);
    }
    expect(await meta.get('a/fILE')).to.equal(undefined);
    expect(await meta.get('a/file   ')).to.equal(undefined);
    const ref = await meta.referenced(['a/file', 'a/file ', 'a/fIle', 'A/file']);
    expect([...ref].sort()).to.deep.equal(['a/file', 'a/file ']);
    await meta.upsert(row('a/file ', { contentLength: 99 }));
    expect((await meta.get('a/file'))?.contentLength).to.equal(1);
    expect((await meta.get('a/file '))?.contentLength).to.equal(99);
    expect(await meta.delete('a/FILE')).to.equal(true);
    expect((await meta.get('a/File'))?.key).to.equal('a/File');
  });

  it('round-trips unicode keys, names and types', async () => {
    const meta = await open();
    const items = [
      { key: 'ünïcødé/日本語/ファイル.txt', name: 'Résumé – 履歴書 😀.pdf', type: 'pièce-jointe' },
      { key: 'emoji/😀/🧪', name: '🧪'.repeat(50), type: '画像' },
      { key: 'rtl/שלום/مرحبا', name: 'שלום', type: 'attachment' },
    ];
    for (const it of items) await meta.add(row(it.key, { name: it.name, type: it.type }));
    for (const it of items) {
      const got = await meta.get(it.key);
      expect(got?.name).to.equal(it.name);
      expect(got?.type).to.equal(it.type);
    }
    const walked = (await collect(meta.walk({ chunkSize: 2, types: ['画像', 'pièce-jointe'] }))).flat();
    expect(walked.map((m) => m.key)).to.deep.equal([items[0]?.key, items[1]?.key]);
    expect(await meta.referenced(items.map((i) => i.key))).to.deep.equal(new Set(items.map((i) => i.key)));
    const est = await meta.estimate();
    expect(Object.keys(est.byType).sort()).to.deep.equal(['attachment', 'pièce-jointe', '画像'].sort());
  });
}

/** Lookups: referenced() in batches of 1000, 64-bit ids. */
export function lookupTests(db: MetaDBContext): void {
  const { target, open } = db;
  it('answers referenced() for more than 1000 keys with one query per 1000', async () => {
    const k = await createKnex(target.config());
    try {
      const meta = await open({}, k);
      const present: NewBlobMeta[] = [];
      for (let i = 0; i < 1300; i++) present.push(row(`ref/${i}`, { contentLength: i }));
      await meta.addMany(present);
      const asked: string[] = [];
      for (let i = 0; i < 2500; i++) asked.push(i % 2 === 0 ? `ref/${i}` : `absent/${i}`);
      asked.push('ref/0', 'ref/0'); // duplicates count once
      let queries = 0;
      const onQuery = (q: { sql: string }) => {
        if (/select/i.test(q.sql)) queries++;
      };
      k.on('query', onQuery);
      const found = await meta.referenced(asked);
      k.off('query', onQuery);
      expect(queries).to.equal(3);
      const expected = asked.filter((key) => key.startsWith('ref/') && Number(key.slice(4)) < 1300);
      expect(found).to.deep.equal(new Set(expected));
      expect(await meta.referenced([])).to.deep.equal(new Set());
      await meta.close(); // a passed-in knex stays open
      expect(await k.raw('select 1')).to.not.equal(undefined);
    } finally {
      await k.destroy();
    }
  });

  it('reads 64-bit ids beyond 2^32 as numbers', async () => {
    const meta = await open();
    const big = 2 ** 40 + 7;
    await db.raw(meta.table).insert({
      id: big,
      key: meta.dialect === 'mysql' ? Buffer.from('big') : 'big',
      parent_id: '',
      type: 'attachment',
      name: '',
      content_length: 2 ** 35,
      created_on: new Date(),
    });
    if (meta.dialect === 'pg') {
      // A PostgreSQL sequence does not follow an id inserted by hand (blobshift never does that).
      await db.raw.raw(`SELECT setval(pg_get_serial_sequence(?, 'id'), ?)`, [meta.table, big]);
    }
    const got = await meta.get('big');
    expect(got?.id).to.equal(big);
    expect(got?.contentLength).to.equal(2 ** 35);
    expect(await meta.maxId()).to.equal(big);
    const next = await meta.add(row('after-big'));
    expect(next.id).to.equal(big + 1);
    expect(await walkIds(meta, { chunkSize: 10, shard: { index: big % 5, count: 5 } })).to.deep.equal([big]);
    expect((await meta.estimate()).bytes).to.equal(2 ** 35 + 10);
  });
}
