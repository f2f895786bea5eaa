/** @deprecated moved to lib/contract/types.ts; kept so imports of the old path keep working. */
export * from './contract/types.js';
