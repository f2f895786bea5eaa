/** `blobshift/memory`: the in-memory backend alone (tests, examples). */
export { MemoryBlobDB, type MemoryBlobDBOptions } from './backends/memory/index.js';
