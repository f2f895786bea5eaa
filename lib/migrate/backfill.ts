/** @deprecated moved to lib/engine/backfill.ts; kept so imports of the old path keep working. */
export * from '../engine/backfill.js';
