/** @deprecated moved to lib/backends/fs/index.ts; kept so imports of the old path keep working. */
export * from './fs/index.js';
