/** @deprecated moved to lib/contract/body.ts; kept so imports of the old path keep working. */
export * from './contract/body.js';
