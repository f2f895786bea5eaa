/** @deprecated moved to lib/contract/redact.ts; kept so imports of the old path keep working. */
export * from './contract/redact.js';
