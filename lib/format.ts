/** @deprecated moved to lib/contract/format.ts; kept so imports of the old path keep working. */
export * from './contract/format.js';
