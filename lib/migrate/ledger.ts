/** @deprecated moved to lib/engine/ledger.ts; kept so imports of the old path keep working. */
export * from '../engine/ledger.js';
