/** @deprecated moved to lib/app/store.ts; kept so imports of the old path keep working. */
export * from './app/store.js';
