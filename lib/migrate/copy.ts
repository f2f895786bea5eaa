/** @deprecated moved to lib/engine/copy.ts; kept so imports of the old path keep working. */
export * from '../engine/copy.js';
