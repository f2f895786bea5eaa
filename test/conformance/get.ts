/** Conformance: reading what is stored: stat, exists, size, getWithInfo, signed URLs, missing keys. */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { expect } from 'chai';
import { MigratingBlobDB } from '../../lib/app/migrating.js';
import { MemoryBlobDB } from '../../lib/backends/memory/index.js';
import { getWithInfo, readAll } from '../../lib/contract/body.js';
import { BlobNotFoundError, InvalidKeyError, NotSupportedError } from '../../lib/contract/errors.js';
import type { HttpMeta, SignedUrlOptions } from '../../lib/contract/types.js';
import { type BlobDBFactory, type ConformanceOptions, useBlobDB } from './context.js';
import { getBytes, rejectionOf } from './helpers.js';

/** `stat`, `exists` and `size`: content type and HTTP metadata round-trip, present and missing keys, keys that are only prefixes. */
export function statTests(factory: BlobDBFactory, options: ConformanceOptions = {}): void {
  describe('stat, exists, size', () => {
    const { bdb, k } = useBlobDB(factory, options);
    it('round-trips content type and HTTP metadata', async () => {
      const httpMeta: HttpMeta = {
        contentEncoding: 'gzip',
        cacheControl: 'public, max-age=3600',
        contentDisposition: 'attachment; filename="report 2026.pdf"',
        contentLanguage: 'fr',
        metadata: { origin: 'conformance', 'sha256-hint': 'abc123' },
      };
      const body = Buffer.from('pretend this is gzip');
      await bdb().put(k('meta'), body, { contentType: 'application/pdf', httpMeta });
      const st = await bdb().stat(k('meta'));
      expect(st.key).to.equal(k('meta'));
      expect(st.size).to.equal(body.length);
      expect(st.contentType).to.equal('application/pdf');
      expect(st.httpMeta?.contentEncoding).to.equal('gzip');
      expect(st.httpMeta?.cacheControl).to.equal('public, max-age=3600');
      expect(st.httpMeta?.contentDisposition).to.equal('attachment; filename="report 2026.pdf"');
      expect(st.httpMeta?.contentLanguage).to.equal('fr');
      expect(st.httpMeta?.metadata).to.deep.equal({ origin: 'conformance', 'sha256-hint': 'abc123' });
      if (st.lastModified !== undefined) {
        expect(st.lastModified).to.be.instanceOf(Date);
        expect(Number.isNaN(st.lastModified.getTime())).to.equal(false);
      }
      // The bytes are stored as given: no decoding because of contentEncoding.
      expect(await getBytes(bdb(), k('meta'))).to.deep.equal(body);
    });

    it('an overwrite without metadata drops the old metadata', async () => {
      await bdb().put(k('m2'), 'v1', {
        contentType: 'text/x-old',
        httpMeta: { cacheControl: 'max-age=1', metadata: { old: 'yes' } },
      });
      await bdb().put(k('m2'), 'v2 longer');
      const st = await bdb().stat(k('m2'));
      expect(st.size).to.equal(9);
      expect(st.contentType).to.not.equal('text/x-old');
      expect(st.httpMeta?.cacheControl).to.equal(undefined);
      expect(st.httpMeta?.metadata?.old).to.equal(undefined);
    });

    it('exists and size answer for present and missing keys', async () => {
      await bdb().put(k('here'), 'twelve bytes');
      expect(await bdb().exists(k('here'))).to.equal(true);
      expect(await bdb().size(k('here'))).to.equal(12);
      expect(await bdb().exists(k('not-here'))).to.equal(false);
    });

    it('a key that is only a prefix of others is not a blob', async () => {
      await bdb().put(k('dir/file'), 'x');
      expect(await bdb().exists(k('dir'))).to.equal(false);
      expect(await rejectionOf(bdb().get(k('dir')))).to.be.instanceOf(BlobNotFoundError);
      expect(await rejectionOf(bdb().stat(k('dir')))).to.be.instanceOf(BlobNotFoundError);
      expect(await bdb().delete(k('dir'))).to.equal(false);
      expect((await getBytes(bdb(), k('dir/file'))).toString()).to.equal('x');
    });

    it('a key below a blob is missing, not an error', async () => {
      await bdb().put(k('leaf'), 'x');
      expect(await bdb().exists(k('leaf/below'))).to.equal(false);
      const err = await rejectionOf(bdb().get(k('leaf/below')));
      expect(err).to.be.instanceOf(BlobNotFoundError);
      expect(await rejectionOf(bdb().size(k('leaf/below')))).to.be.instanceOf(BlobNotFoundError);
      expect(await bdb().delete(k('leaf/below'))).to.equal(false);
      expect(await bdb().exists(k('leaf'))).to.equal(true);
    });
  });
}

/** `getWithInfo`: stat and bytes in one step, not-found before a stream, an abandoned body. */
export function getWithInfoTests(factory: BlobDBFactory, options: ConformanceOptions = {}): void {
  describe('getWithInfo', () => {
    const { bdb, k } = useBlobDB(factory, options);
    it('gives what stat says and the bytes in one step, metadata included', async () => {
      const httpMeta: HttpMeta = { cacheControl: 'no-cache', metadata: { origin: 'conformance' } };
      const body = randomBytes(70_000);
      await bdb().put(k('gwi'), body, { contentType: 'image/png', httpMeta });
      const st = await bdb().stat(k('gwi'));
      const got = await getWithInfo(bdb(), k('gwi'));
      expect(got.info.key).to.equal(k('gwi'));
      expect(got.info.size).to.equal(body.length);
      expect(got.info.contentType).to.equal('image/png');
      expect(got.info.httpMeta?.cacheControl).to.equal('no-cache');
      expect(got.info.httpMeta?.metadata).to.deep.equal({ origin: 'conformance' });
      expect(got.info.size).to.equal(st.size);
      if (st.etag !== undefined) expect(got.info.etag).to.equal(st.etag);
      expect(await readAll(got.body)).to.deep.equal(body);
    });

    it('rejects BlobNotFoundError for a missing key before handing back a stream', async () => {
      let returned: unknown;
      const err = await getWithInfo(bdb(), k('gwi-missing')).then(
        (r) => {
          returned = r;
          r.body.destroy();
          return undefined;
        },
        (e: unknown) => e,
      );
      expect(returned, 'getWithInfo resolved for a missing key').to.equal(undefined);
      expect(err).to.be.instanceOf(BlobNotFoundError);
      expect((err as BlobNotFoundError).key).to.equal(k('gwi-missing'));
    });

    it('a body destroyed unread releases the blob (it can be deleted and read again)', async () => {
      await bdb().put(k('gwi-drop'), 'some bytes');
      const { body } = await getWithInfo(bdb(), k('gwi-drop'));
      body.destroy();
      const again = await getWithInfo(bdb(), k('gwi-drop'));
      expect((await readAll(again.body)).toString()).to.equal('some bytes');
      expect(await bdb().delete(k('gwi-drop'))).to.equal(true);
    });
  });
}

/** `getSignedUrl`: a URL a plain GET reads, or `NotSupportedError`. */
export function signedUrlTests(factory: BlobDBFactory, options: ConformanceOptions = {}): void {
  describe('getSignedUrl', () => {
    const { bdb, k } = useBlobDB(factory, options);
    it('gives a URL a plain GET without credentials reads, or rejects NotSupportedError; an invalid key is InvalidKeyError', async () => {
      const db = bdb();
      await db.put(k('signed/a b.txt'), 'signed bytes', { contentType: 'text/plain' });
      // Optional in the contract: a BlobDB without it (a wrapper of the app's
      // own) is one that cannot sign, as MigratingBlobDB over it says.
      const sign = db.getSignedUrl
        ? db.getSignedUrl.bind(db)
        : (key: string, opts?: SignedUrlOptions) =>
            new MigratingBlobDB(db, new MemoryBlobDB()).getSignedUrl(key, opts);
      const outcome = await sign(k('signed/a b.txt'), { expiresIn: 60 }).then(
        (url) => ({ url }),
        (error: unknown) => ({ error }),
      );
      if ('url' in outcome) {
        const res = await fetch(outcome.url);
        expect(res.status).to.equal(200);
        expect(await res.text()).to.equal('signed bytes');
      } else {
        expect(outcome.error).to.be.instanceOf(NotSupportedError);
        expect((outcome.error as Error).message).to.include('getWithInfo');
      }
      expect(await rejectionOf(sign('../escape'))).to.be.instanceOf(InvalidKeyError);
    });
  });
}

/** Missing keys: `get`, `stat` and `size` reject `BlobNotFoundError`, before any stream. */
export function missingKeyTests(factory: BlobDBFactory, options: ConformanceOptions = {}): void {
  describe('missing keys', () => {
    const { bdb, k } = useBlobDB(factory, options);
    for (const method of ['get', 'stat', 'size'] as const) {
      it(`${method} rejects BlobNotFoundError (instanceof and code) for a missing key`, async () => {
        const key = k(`missing/${method}`);
        const err = await rejectionOf(bdb()[method](key));
        expect(err).to.be.instanceOf(BlobNotFoundError);
        expect((err as BlobNotFoundError).code).to.equal('E_BLOB_NOT_FOUND');
        expect((err as BlobNotFoundError).key).to.equal(key);
      });
    }

    it('get rejects before returning a stream (no stream that fails later)', async () => {
      let returned: unknown;
      const err = await bdb()
        .get(k('nope'))
        .then(
          (s) => {
            returned = s;
            (s as Readable).destroy();
            return undefined;
          },
          (e: unknown) => e,
        );
      expect(returned, 'get resolved with a stream for a missing key').to.equal(undefined);
      expect(err).to.be.instanceOf(BlobNotFoundError);
    });

    it('get of a deleted key rejects BlobNotFoundError', async () => {
      await bdb().put(k('gone'), 'soon gone');
      await bdb().delete(k('gone'));
      const err = await rejectionOf(bdb().get(k('gone')));
      expect(err).to.be.instanceOf(BlobNotFoundError);
      expect((err as BlobNotFoundError).code).to.equal('E_BLOB_NOT_FOUND');
    });
  });
}
