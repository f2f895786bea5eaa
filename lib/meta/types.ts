/** @deprecated moved to lib/contract/meta.ts; kept so imports of the old path keep working. */
export * from '../contract/meta.js';
