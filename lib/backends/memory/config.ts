/** The `memory` backend's config section and registry entry: for tests only; nothing survives the process. */
import { z } from 'zod';
import { strict } from '../../contract/config-schema.js';
import type { BackendEntry } from '../entry.js';
import { MemoryBlobDB } from './index.js';

export type MemoryBackendConfig = { type: 'memory' };

export const memoryEntry: BackendEntry<MemoryBackendConfig> = {
  type: 'memory',
  schema: strict({ type: z.literal('memory') }),
  normalize: () => ({ type: 'memory' }),
  async create() {
    return new MemoryBlobDB();
  },
  describe: () => 'memory',
  /** Two memory backends are two places (each instance holds its own blobs). */
  sameLocation: () => false,
};
