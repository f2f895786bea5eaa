/** @deprecated moved to lib/engine/cleanup.ts; kept so imports of the old path keep working. */
export * from '../engine/cleanup.js';
