/** The `fs` backend's config section and registry entry. */
import { realpathSync } from 'node:fs';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { z } from 'zod';
import { mode, nonEmpty, strict } from '../../contract/config-schema.js';
import type { BackendEntry } from '../entry.js';
import { FilesystemBlobDB } from './index.js';

export type FsBackendConfig = { type: 'fs'; root: string; fileMode?: number; dirMode?: number };

const schema = strict({
  type: z.literal('fs'),
  root: nonEmpty,
  fileMode: mode.optional(),
  dirMode: mode.optional(),
});

function realOrResolved(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return resolve(p);
  }
}

function inside(parent: string, child: string): boolean {
  const rel = relative(parent, child);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
}

export const fsEntry: BackendEntry<FsBackendConfig> = {
  type: 'fs',
  schema,
  normalize(parsed, { baseDir }) {
    const b = parsed as z.output<typeof schema>;
    return {
      type: 'fs',
      root: resolve(baseDir, b.root),
      ...(b.fileMode !== undefined ? { fileMode: b.fileMode as number } : {}),
      ...(b.dirMode !== undefined ? { dirMode: b.dirMode as number } : {}),
    };
  },
  async create(cfg) {
    return new FilesystemBlobDB({
      root: cfg.root,
      ...(cfg.fileMode !== undefined ? { fileMode: cfg.fileMode } : {}),
      ...(cfg.dirMode !== undefined ? { dirMode: cfg.dirMode } : {}),
    });
  },
  describe: (cfg) => `fs:${cfg.root}`,
  /** The same or nested roots, symlinks resolved where the paths exist. */
  sameLocation(a, b) {
    const ra = realOrResolved(a.root);
    const rb = realOrResolved(b.root);
    return inside(ra, rb) || inside(rb, ra);
  },
};
