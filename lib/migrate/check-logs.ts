/** @deprecated moved to lib/engine/check-logs.ts; kept so imports of the old path keep working. */
export * from '../engine/check-logs.js';
