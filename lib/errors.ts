/** @deprecated moved to lib/contract/errors.ts; kept so imports of the old path keep working. */
export * from './contract/errors.js';
