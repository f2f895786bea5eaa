/** @deprecated moved to lib/engine/present-index.ts; kept so imports of the old path keep working. */
export * from '../engine/present-index.js';
