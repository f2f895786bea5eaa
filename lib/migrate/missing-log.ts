/** @deprecated moved to lib/engine/missing-log.ts; kept so imports of the old path keep working. */
export * from '../engine/missing-log.js';
