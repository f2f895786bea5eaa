/**
 * Reproducible randomness for the tests that pick moments or keys at random:
 * the seed comes from BLOBSHIFT_TEST_SEED (or the clock) and failures print it.
 */

/** The seed of this run: BLOBSHIFT_TEST_SEED, or one from the clock. */
export const TEST_SEED = Number(process.env.BLOBSHIFT_TEST_SEED ?? Date.now() % 1_000_000);

/** A generator of numbers in [0, 1) from `seed` (mulberry32): the same seed, the same sequence. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
