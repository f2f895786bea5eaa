/**
 * `blobshift/fs`: the filesystem backend alone. An app that stores its blobs
 * on disk imports this and loads neither the AWS SDK nor the engine.
 */
export { FilesystemBlobDB, type FilesystemBlobDBOptions } from './backends/fs/index.js';
