/**
 * `blobshift/queue`: a backfill spread over worker processes on many hosts
 * through a Redis queue (BullMQ, which loads with this module). The producer
 * walks the metadata and queues chunks (`queuedBackfill`); each worker takes
 * chunks and copies them through the same copy path as a local backfill
 * (`runWorker`). `blobshift backfill --queue` and `blobshift worker` run them.
 */

export type { ChunkJobData, ChunkJobResult, JobRow, MigrationNames } from './queue/jobs.js';
export { type QueuedBackfillOptions, queuedBackfill } from './queue/producer.js';
export { runWorker, type WorkerOptions, type WorkerSummary } from './queue/worker.js';
