/** @deprecated moved to lib/cli/log.ts; kept so imports of the old path keep working. */
export * from './cli/log.js';
