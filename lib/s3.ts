/**
 * `blobshift/s3`: the S3 backend (AWS S3 and S3-compatible stores), its
 * options, the client factory it uses and its not-found guard.
 */
export {
  createS3Client,
  isS3NotFoundError,
  S3BlobDB,
  type S3BlobDBOptions,
  type S3ClientConfigLike,
  type S3ClientOptions,
} from './backends/s3/index.js';
