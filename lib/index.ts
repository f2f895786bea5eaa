// The public API. Backends that pull heavy dependencies (S3, knex) are
// exported here too; importing them loads those modules.
export * from './errors.js';
export * from './keys.js';
export type * from './meta/types.js';
export * from './redact.js';
export type * from './types.js';
