/** @deprecated moved to lib/config/index.ts; kept so imports of the old path keep working. */
export * from './config/index.js';
