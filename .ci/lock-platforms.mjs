// Adds lock entries for platform-specific optional packages (biome, msgpackr-extract) that a registry
// mirror without those platforms leaves out of package-lock.json; without them `npm ci` refuses the lock.
// Run after `npm install` changes the lock: node .ci/lock-platforms.mjs
import { readFileSync, writeFileSync } from 'node:fs';

const lock = JSON.parse(readFileSync('package-lock.json', 'utf8'));
const pk = lock.packages;
const osMap = { android: 'android', darwin: 'darwin', linux: 'linux', win32: 'win32', freebsd: 'freebsd' };
let added = 0;
for (const [path, info] of Object.entries(pk)) {
  for (const [name, spec] of Object.entries(info.optionalDependencies ?? {})) {
    const base = path ? `${path}/node_modules/${name}` : `node_modules/${name}`;
    const hoisted = `node_modules/${name}`;
    if (pk[base] || pk[hoisted]) continue;
    const m = /-(android|darwin|linux|win32|freebsd)-(x64|arm64|arm|ia32)(-musl)?$/.exec(name);
    if (!m) {
      console.error('skip', name);
      continue;
    }
    const entry = { version: spec.replace(/^[\^~=]/, ''), optional: true, os: [osMap[m[1]]], cpu: [m[2]] };
    if (m[3]) entry.libc = ['musl'];
    else if (m[1] === 'linux') entry.libc = ['glibc'];
    pk[hoisted] = entry;
    added++;
    console.log('added', hoisted, JSON.stringify(entry));
  }
}
const sorted = {};
for (const k of Object.keys(pk).sort((a, b) => (a === '' ? -1 : b === '' ? 1 : a < b ? -1 : a > b ? 1 : 0)))
  sorted[k] = pk[k];
lock.packages = sorted;
writeFileSync('package-lock.json', JSON.stringify(lock, null, 2) + '\n');
console.log('added', added);
