/** @deprecated moved to lib/engine/hash.ts; kept so imports of the old path keep working. */
export * from '../engine/hash.js';
