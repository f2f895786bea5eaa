/** @deprecated moved to lib/engine/errors.ts; kept so imports of the old path keep working. */
export * from '../engine/errors.js';
