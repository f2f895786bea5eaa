/** @deprecated moved to lib/contract/keys.ts; kept so imports of the old path keep working. */
export * from './contract/keys.js';
