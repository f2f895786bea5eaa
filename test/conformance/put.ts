/** Conformance: writing and reading blobs, the size check, and input streams that fail. */
import { PassThrough, Readable } from 'node:stream';
import { expect } from 'chai';
import { readAll } from '../../lib/contract/body.js';
import { BlobExistsError, BlobNotFoundError, SizeMismatchError } from '../../lib/contract/errors.js';
import { sleep } from '../support/time.js';
import { type BlobDBFactory, type ConformanceOptions, useBlobDB } from './context.js';
import {
  byteSorted,
  failingStream,
  getBytes,
  hashStream,
  keyOfBytes,
  listInfos,
  listKeys,
  MiB,
  patternStream,
  rejectionOf,
} from './helpers.js';

/** Put and get: every body type (Buffer, Uint8Array view, string, stream), empty and binary blobs, big streams, escaped and longest keys. */
export function putTests(factory: BlobDBFactory, options: ConformanceOptions = {}): void {
  describe('put and get', () => {
    const { bdb, ns, k, listRel, expectListed, slow, maxKeyBytes, maxSegmentBytes } = useBlobDB(
      factory,
      options,
    );
    it('stores a Buffer and reads it back', async () => {
      const body = Buffer.from('hello, blobs');
      const info = await bdb().put(k('buf'), body);
      expect(info.key).to.equal(k('buf'));
      expect(info.size).to.equal(body.length);
      expect(await getBytes(bdb(), k('buf'))).to.deep.equal(body);
    });

    it('stores a Uint8Array view (with a byte offset) as exactly its bytes', async () => {
      const backing = new Uint8Array(64).map((_, i) => i);
      const view = new Uint8Array(backing.buffer, 10, 20);
      const info = await bdb().put(k('u8'), view);
      expect(info.size).to.equal(20);
      expect(await getBytes(bdb(), k('u8'))).to.deep.equal(Buffer.from(backing.subarray(10, 30)));
    });

    it('stores a string as UTF-8', async () => {
      const text = 'héllo wörld 日本 😀';
      const info = await bdb().put(k('str'), text);
      expect(info.size).to.equal(Buffer.byteLength(text, 'utf8'));
      expect((await getBytes(bdb(), k('str'))).toString('utf8')).to.equal(text);
      expect(await bdb().size(k('str'))).to.equal(Buffer.byteLength(text, 'utf8'));
    });

    it('stores a stream body of several chunks', async () => {
      const chunks = [Buffer.from('one,'), Buffer.from('two,'), Buffer.alloc(100_000, 7), Buffer.from('end')];
      const info = await bdb().put(k('stream'), Readable.from(chunks));
      const whole = Buffer.concat(chunks);
      expect(info.size).to.equal(whole.length);
      expect(await getBytes(bdb(), k('stream'))).to.deep.equal(whole);
    });

    it('stores a stream written piecemeal through a PassThrough', async () => {
      const pass = new PassThrough();
      const put = bdb().put(k('pass'), pass);
      for (let i = 0; i < 5; i++) {
        pass.write(Buffer.from(`part ${i};`));
        await sleep(5);
      }
      pass.end();
      const info = await put;
      expect(info.size).to.equal(35);
      expect((await getBytes(bdb(), k('pass'))).toString()).to.equal('part 0;part 1;part 2;part 3;part 4;');
    });

    it(`streams a ${slow ? 6 : 20} MiB body of unknown length`, async () => {
      const total = (slow ? 6 : 20) * MiB + 123; // not a multiple of any part size
      const src = patternStream(total);
      const info = await bdb().put(k('big'), src.stream);
      expect(info.size).to.equal(total);
      expect(await bdb().size(k('big'))).to.equal(total);
      const read = await hashStream(await bdb().get(k('big')));
      expect(read.bytes).to.equal(total);
      expect(read.sha256).to.equal(src.sha256());
      expect(await bdb().delete(k('big'))).to.equal(true);
    });

    it('streams a 1 MiB body with a matching size given', async () => {
      const src = patternStream(MiB);
      const info = await bdb().put(k('sized'), src.stream, { size: MiB });
      expect(info.size).to.equal(MiB);
      const read = await hashStream(await bdb().get(k('sized')));
      expect(read.sha256).to.equal(src.sha256());
    });

    it('stores empty blobs from a string, a Buffer and an empty stream', async () => {
      await bdb().put(k('e1'), '');
      await bdb().put(k('e2'), Buffer.alloc(0), { size: 0 });
      await bdb().put(k('e3'), Readable.from([]));
      for (const key of [k('e1'), k('e2'), k('e3')]) {
        expect(await bdb().exists(key), key).to.equal(true);
        expect(await bdb().size(key), key).to.equal(0);
        expect((await bdb().stat(key)).size, key).to.equal(0);
        expect((await getBytes(bdb(), key)).length, key).to.equal(0);
      }
      const listed = await listInfos(bdb(), { prefix: ns() });
      expect(listed.map((i) => [i.key.slice(ns().length), i.size])).to.have.deep.members([
        ['e1', 0],
        ['e2', 0],
        ['e3', 0],
      ]);
    });

    it('keeps binary content exactly (all 256 byte values, Buffer and odd-sized stream chunks)', async () => {
      const all = Buffer.alloc(256 * 4);
      for (let i = 0; i < all.length; i++) all[i] = i % 256;
      await bdb().put(k('bin'), all);
      expect(await getBytes(bdb(), k('bin'))).to.deep.equal(all);
      const pieces: Buffer[] = [];
      for (let i = 0; i < all.length; i += 7) pieces.push(all.subarray(i, i + 7));
      await bdb().put(k('bin-stream'), Readable.from(pieces));
      expect(await getBytes(bdb(), k('bin-stream'))).to.deep.equal(all);
      // Bytes that are not valid UTF-8 must not be mangled by any text decoding.
      const notUtf8 = Buffer.from([0xff, 0xfe, 0x00, 0xc3, 0x28, 0xa0, 0xa1, 0xed, 0xa0, 0x80]);
      await bdb().put(k('not-utf8'), notUtf8);
      expect(await getBytes(bdb(), k('not-utf8'))).to.deep.equal(notUtf8);
    });

    it('returns a Readable from get, and the same bytes on every get', async () => {
      await bdb().put(k('twice'), 'same bytes');
      const s1 = await bdb().get(k('twice'));
      expect(s1).to.be.instanceOf(Readable);
      expect((await readAll(s1)).toString()).to.equal('same bytes');
      expect((await getBytes(bdb(), k('twice'))).toString()).to.equal('same bytes');
    });

    it('round-trips keys with characters that need escaping elsewhere', async () => {
      const names = [
        'sp ace',
        'plus+sign',
        'eq=amp&dollar$',
        'comma,semi;colon:at@',
        'percent%20literal',
        'question?hash#',
        'quote\'double"',
        'paren()bracket[]brace{}',
        'tilde~star*caret^pipe|',
        'angle<>back\\slash',
        'tick`excl!',
        'ünïcödé/日本語/😀',
        '.hidden',
        'dots..in..name',
      ];
      for (const [i, n] of names.entries()) await bdb().put(k(n), `body ${i}`);
      for (const [i, n] of names.entries()) {
        expect((await getBytes(bdb(), k(n))).toString(), n).to.equal(`body ${i}`);
        expect(await bdb().exists(k(n)), n).to.equal(true);
      }
      expectListed(await listRel(), byteSorted(names), 'escaped keys');
    });

    it(`stores the longest allowed key (${maxKeyBytes} bytes) and a ${maxSegmentBytes}-byte segment`, async () => {
      const longKey = keyOfBytes(ns(), maxKeyBytes, Math.min(200, maxSegmentBytes));
      expect(Buffer.byteLength(longKey)).to.equal(maxKeyBytes);
      await bdb().put(longKey, 'long', { contentType: 'text/plain' });
      expect((await getBytes(bdb(), longKey)).toString()).to.equal('long');
      expect((await bdb().stat(longKey)).contentType).to.equal('text/plain');
      const seg = k('s'.repeat(maxSegmentBytes));
      await bdb().put(seg, 'seg', { contentType: 'text/plain' });
      expect((await bdb().stat(seg)).size).to.equal(3);
      expect(await listKeys(bdb(), { prefix: ns() })).to.have.members([longKey, seg]);
    });
  });
}

/** The `size` option: a body shorter or longer than said is refused and stores nothing. */
export function sizeCheckTests(factory: BlobDBFactory, options: ConformanceOptions = {}): void {
  describe('size checks', () => {
    const { bdb, k, listRel } = useBlobDB(factory, options);
    for (const [what, body, size] of [
      ['a Buffer shorter than size', () => Buffer.alloc(10, 1), 11],
      ['a Buffer longer than size', () => Buffer.alloc(10, 1), 9],
      ['a string longer than size', () => 'ééé', 3],
      ['a stream shorter than size', () => Readable.from([Buffer.alloc(1000, 2)]), 2000],
      ['a stream longer than size', () => patternStream(MiB).stream, 1000],
    ] as const) {
      it(`refuses ${what} with SizeMismatchError and stores nothing`, async () => {
        const err = await rejectionOf(bdb().put(k('sz'), body(), { size }));
        expect(err).to.be.instanceOf(SizeMismatchError);
        expect((err as SizeMismatchError).code).to.equal('E_SIZE_MISMATCH');
        expect((err as SizeMismatchError).expected).to.equal(size);
        expect(await bdb().exists(k('sz'))).to.equal(false);
        expect(await listRel()).to.deep.equal([]);
      });
    }

    it('a wrong size leaves a previous blob under the key intact', async () => {
      await bdb().put(k('prev'), 'previous', { contentType: 'text/plain' });
      const short = await rejectionOf(bdb().put(k('prev'), Readable.from([Buffer.from('abc')]), { size: 4 }));
      expect(short).to.be.instanceOf(SizeMismatchError);
      const long = await rejectionOf(bdb().put(k('prev'), patternStream(300_000).stream, { size: 100 }));
      expect(long).to.be.instanceOf(SizeMismatchError);
      expect((await getBytes(bdb(), k('prev'))).toString()).to.equal('previous');
      expect((await bdb().stat(k('prev'))).contentType).to.equal('text/plain');
      expect(await listRel()).to.deep.equal(['prev']);
    });
  });
}

/** Failed input streams: the put rejects and leaves nothing behind, or the previous content. */
export function failedStreamTests(factory: BlobDBFactory, options: ConformanceOptions = {}): void {
  describe('failed input streams', () => {
    const { bdb, ns, k, listRel } = useBlobDB(factory, options);
    for (const [what, failAfter, withError] of [
      ['an input stream that errors mid-way', 64 * 1024, true],
      ['an input stream destroyed without an error', 64 * 1024, false],
      ['an input stream that errors after 6 MiB (past a multipart part)', 6 * MiB, true],
    ] as const) {
      it(`${what} rejects the put and leaves nothing behind`, async () => {
        const err = await rejectionOf(bdb().put(k('broken'), failingStream(failAfter, withError)));
        expect(err).to.be.instanceOf(Error);
        expect(err).to.not.be.instanceOf(BlobExistsError);
        expect(await bdb().exists(k('broken'))).to.equal(false);
        expect(await rejectionOf(bdb().get(k('broken')))).to.be.instanceOf(BlobNotFoundError);
        expect(await listKeys(bdb(), { prefix: ns() })).to.deep.equal([]);
      });
    }

    it('a failed input stream leaves the previous content in place', async () => {
      await bdb().put(k('stay'), 'previous content', { contentType: 'text/plain' });
      const err = await rejectionOf(
        bdb().put(k('stay'), failingStream(100_000, true), { contentType: 'x/y' }),
      );
      expect(err).to.be.instanceOf(Error);
      expect((await getBytes(bdb(), k('stay'))).toString()).to.equal('previous content');
      const st = await bdb().stat(k('stay'));
      expect(st.size).to.equal(16);
      expect(st.contentType).to.equal('text/plain');
      expect(await listRel()).to.deep.equal(['stay']);
    });
  });
}
