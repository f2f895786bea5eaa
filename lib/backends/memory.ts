/** @deprecated moved to lib/backends/memory/index.ts; kept so imports of the old path keep working. */
export * from './memory/index.js';
