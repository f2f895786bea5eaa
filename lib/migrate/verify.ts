/** @deprecated moved to lib/engine/verify.ts; kept so imports of the old path keep working. */
export * from '../engine/verify.js';
