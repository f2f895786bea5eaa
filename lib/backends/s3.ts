/** @deprecated moved to lib/backends/s3/index.ts; kept so imports of the old path keep working. */
export * from './s3/index.js';
