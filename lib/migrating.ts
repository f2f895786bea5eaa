/** @deprecated moved to lib/app/migrating.ts; kept so imports of the old path keep working. */
export * from './app/migrating.js';
