/** @deprecated moved to lib/engine/preflight.ts; kept so imports of the old path keep working. */
export * from '../engine/preflight.js';
