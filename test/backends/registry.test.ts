/**
 * The backend registry: one entry per backend type, each with its config
 * section, builder, description and same-place rule; the error names a
 * backend registers reach the engine's classification.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { FilesystemBlobDB } from '../../lib/backends/fs/index.js';
import { MemoryBlobDB } from '../../lib/backends/memory/index.js';
import {
  BACKEND_TYPES,
  BACKENDS,
  backendEntry,
  backendSchema,
  createBackend,
  describeBackend,
  normalizeBackend,
  sameLocation,
} from '../../lib/backends/registry.js';
import { S3BlobDB } from '../../lib/backends/s3/index.js';
import { knownErrors } from '../../lib/contract/error-knowledge.js';
import { ConfigError } from '../../lib/contract/errors.js';
import { isInfrastructureError, isTransientError } from '../../lib/engine/errors.js';

describe('backend registry', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'blobshift-registry-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('lists fs, s3 and memory, in the order messages name them, each under its own type', () => {
    expect(BACKEND_TYPES).to.deep.equal(['fs', 's3', 'memory']);
    for (const [type, entry] of Object.entries(BACKENDS)) {
      expect(entry.type).to.equal(type);
      expect(backendEntry(type)).to.equal(entry);
    }
    expect(backendEntry('azure')).to.equal(undefined);
    expect(backendEntry('toString')).to.equal(undefined);
  });

  it('parses each section with its own schema and normalizes it', () => {
    const fs = backendSchema.parse({ type: 'fs', root: 'blobs', fileMode: '0640' }) as { type: string };
    expect(normalizeBackend(fs, { baseDir: dir, path: 'old' })).to.deep.equal({
      type: 'fs',
      root: join(dir, 'blobs'),
      fileMode: 0o640,
    });
    const s3 = backendSchema.parse({ type: 's3', bucket: 'b', prefix: 'ok/' }) as { type: string };
    expect(normalizeBackend(s3, { baseDir: dir, path: 'new' })).to.deep.equal({
      type: 's3',
      bucket: 'b',
      prefix: 'ok/',
    });
    const bad = backendSchema.parse({ type: 's3', bucket: 'b', prefix: 'a/../b' }) as { type: string };
    expect(() => normalizeBackend(bad, { baseDir: dir, path: 'new' }))
      .to.throw(ConfigError)
      .with.property('path', 'new.prefix');
    expect(backendSchema.safeParse({ type: 'azure' }).success).to.equal(false);
  });

  it('builds, describes and compares backends through their entries', async () => {
    const fs = await createBackend({ type: 'fs', root: dir });
    const memory = await createBackend({ type: 'memory' });
    const s3 = await createBackend({ type: 's3', bucket: 'b', endpoint: 'http://127.0.0.1:1' });
    try {
      expect(fs).to.be.instanceOf(FilesystemBlobDB);
      expect(memory).to.be.instanceOf(MemoryBlobDB);
      expect(s3).to.be.instanceOf(S3BlobDB);
    } finally {
      await Promise.all([fs.close(), memory.close(), s3.close()]);
    }
    expect(describeBackend({ type: 'fs', root: '/srv/blobs' })).to.equal('fs:/srv/blobs');
    expect(describeBackend({ type: 'memory' })).to.equal('memory');
    expect(describeBackend({ type: 's3', bucket: 'b', prefix: 'p/', region: 'eu-west-1' })).to.equal(
      's3://b/p/ at AWS S3 (eu-west-1)',
    );
    expect(sameLocation({ type: 'fs', root: dir }, { type: 'fs', root: join(dir, 'sub') })).to.equal(true);
    expect(sameLocation({ type: 'memory' }, { type: 'memory' })).to.equal(false);
    expect(sameLocation({ type: 'fs', root: dir }, { type: 's3', bucket: 'b' })).to.equal(false);
  });

  it("registers each backend's error names with the engine", () => {
    expect(knownErrors().transientNames.has('SlowDown')).to.equal(true);
    expect(knownErrors().authNames.has('InvalidAccessKeyId')).to.equal(true);
    const slowDown = Object.assign(new Error('Please reduce your request rate.'), { name: 'SlowDown' });
    expect(isTransientError(slowDown)).to.equal(true);
    expect(isInfrastructureError(slowDown)).to.equal(false);
    const refused = Object.assign(new Error('The key id does not exist.'), { name: 'InvalidAccessKeyId' });
    expect(isTransientError(refused)).to.equal(false);
    expect(isInfrastructureError(refused)).to.equal(true);
  });
});
