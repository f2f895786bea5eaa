/** Filesystem fixtures: every file under a root, and temporary directories removed after the file's tests. */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Every file under `root` (relative paths with `/`). */
export async function walkFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string, rel: string) => {
    for (const d of await readdir(dir, { withFileTypes: true })) {
      const r = rel ? `${rel}/${d.name}` : d.name;
      if (d.isDirectory()) await walk(join(dir, d.name), r);
      else out.push(r);
    }
  };
  await walk(root, '');
  return out;
}

/**
 * A maker of fresh temporary directories named `<prefix>…`; registers a
 * root `after` hook that removes them all. Call it at the top of a test file.
 */
export function tempDirs(prefix: string): () => Promise<string> {
  const roots: string[] = [];
  after(async () => {
    await Promise.all(roots.splice(0).map((r) => rm(r, { recursive: true, force: true })));
  });
  return async () => {
    const dir = await mkdtemp(join(tmpdir(), prefix));
    roots.push(dir);
    return dir;
  };
}
