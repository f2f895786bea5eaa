import { expect } from 'chai';
import fc from 'fast-check';
import { InvalidKeyError } from '../lib/contract/errors.js';
import { compareKeys, isValidKey, keyProblem, validateKey, validatePrefix } from '../lib/contract/keys.js';
import { INVALID_KEYS } from './conformance/invalid-keys.js';

describe('keys', () => {
  it('accepts ordinary keys', () => {
    for (const k of [
      'a',
      'a/b',
      'a-b_c.d',
      'ü/日本/😀',
      'x'.repeat(255),
      `${'a/'.repeat(300)}b`.slice(0, 1024),
      '.hidden',
      'a/..b',
      'a/b.',
    ]) {
      expect(keyProblem(k), k).to.equal(undefined);
    }
  });

  for (const [name, key] of INVALID_KEYS) {
    it(`refuses ${name}`, () => {
      expect(isValidKey(key)).to.equal(false);
      const err = (() => {
        try {
          validateKey(key);
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      expect(err).to.be.instanceOf(InvalidKeyError);
      expect((err as InvalidKeyError).code).to.equal('E_INVALID_KEY');
    });
  }

  it('takes 1024 bytes and refuses 1025', () => {
    const k1024 = `${'a'.repeat(200)}/`.repeat(5) + 'b'.repeat(19);
    expect(Buffer.byteLength(k1024)).to.equal(1024);
    expect(isValidKey(k1024)).to.equal(true);
    expect(isValidKey(`${k1024}c`)).to.equal(false);
  });

  it('counts bytes, not characters, for the segment limit', () => {
    expect(isValidKey('é'.repeat(127))).to.equal(true); // 254 bytes
    expect(isValidKey('é'.repeat(128))).to.equal(false); // 256 bytes
  });

  it('validates prefixes', () => {
    for (const p of ['', 'a', 'a/', 'a/b', 'a/.', 'a/..', '.blob']) expect(validatePrefix(p)).to.equal(p);
    for (const p of ['/a', 'a//', 'a/../b', 'a\u0000'])
      expect(() => validatePrefix(p)).to.throw(InvalidKeyError);
  });

  describe('properties', () => {
    const segmentChar = fc.constantFrom(...Array.from('abcXYZ019-_.~+=éü日😀 '));
    const segment = fc
      .array(segmentChar, { minLength: 1, maxLength: 12 })
      .map((cs) => cs.join(''))
      .filter((s) => s !== '.' && s !== '..' && !s.startsWith('.blobshift-'));
    const validKey = fc.array(segment, { minLength: 1, maxLength: 6 }).map((ss) => ss.join('/'));

    it('every key built from valid segments is accepted', () => {
      fc.assert(fc.property(validKey, (k) => isValidKey(k)));
    });

    it('inserting a control character anywhere is refused', () => {
      fc.assert(
        fc.property(validKey, fc.nat(), fc.integer({ min: 0, max: 0x1f }), (k, at, cp) => {
          const i = at % (k.length + 1);
          return !isValidKey(k.slice(0, i) + String.fromCharCode(cp) + k.slice(i));
        }),
      );
    });

    it('a leading slash, an empty segment or a dot segment is refused', () => {
      fc.assert(
        fc.property(validKey, validKey, fc.constantFrom('/', '//', '/./', '/../'), (a, b, glue) => {
          return (
            !isValidKey(`/${a}`) &&
            !isValidKey(`${a}${glue === '/' ? '//' : glue}${b}`) &&
            !isValidKey(`${a}/`)
          );
        }),
      );
    });

    it('arbitrary strings never make the validator throw anything but InvalidKeyError', () => {
      fc.assert(
        fc.property(fc.string({ unit: 'binary', maxLength: 300 }), (s) => {
          try {
            validateKey(s);
            return isValidKey(s);
          } catch (e) {
            return e instanceof InvalidKeyError && !isValidKey(s);
          }
        }),
      );
    });

    it('compareKeys is UTF-8 byte order', () => {
      fc.assert(
        fc.property(
          fc.string({ unit: 'grapheme', maxLength: 20 }),
          fc.string({ unit: 'grapheme', maxLength: 20 }),
          (a, b) => {
            const want = Math.sign(Buffer.compare(Buffer.from(a), Buffer.from(b)));
            return Math.sign(compareKeys(a, b)) === want;
          },
        ),
      );
    });
  });
});
