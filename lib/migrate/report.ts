/** @deprecated moved to lib/engine/report.ts; kept so imports of the old path keep working. */
export * from '../engine/report.js';
