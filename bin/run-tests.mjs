#!/usr/bin/env node
// The test command: unit tests always; integration and end-to-end tests (real PostgreSQL,
// real HTTPS) when running as root, as CI does, or when PGACCORD_INTEGRATION=1. Tests load the
// TypeScript through tsx, but what they spawn (bin/pgaccord.mjs) runs the compiled dist/, as
// shipped: so dist/ is rebuilt first whenever a source is newer than it.
import { spawnSync } from 'node:child_process';
import { readdirSync, existsSync, statSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const unitOnly = process.argv.includes('--unit');
const filters = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const integration = !unitOnly && (process.getuid?.() === 0 || process.env.PGACCORD_INTEGRATION === '1');

const suites = ['unit', ...(integration ? ['integration', 'e2e'] : [])];
const files = suites.flatMap((s) => {
  const dir = join(root, 'test', s);
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.test.ts')).sort().map((f) => join('test', s, f)) : [];
}).filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)));

if (!integration && !unitOnly) console.log('# not root and PGACCORD_INTEGRATION unset: running unit tests only');
if (files.length === 0) {
  console.error('no test files found');
  process.exit(1);
}
/** Newest modification time under the compiled directories, and of the build's inputs. */
function newest(paths, ext) {
  let t = 0;
  for (const p of paths) {
    if (!existsSync(p)) continue;
    const st = statSync(p);
    if (st.isDirectory()) t = Math.max(t, newest(readdirSync(p).map((f) => join(p, f)), ext));
    else if (p.endsWith(ext)) t = Math.max(t, st.mtimeMs);
  }
  return t;
}
const built = existsSync(join(root, 'dist', 'bin', 'main.js')) ? statSync(join(root, 'dist', 'bin', 'main.js')).mtimeMs : 0;
const sources = ['agent', 'coordinator', 'shared', 'bin', 'tsconfig.json', 'tsconfig.build.json'].map((p) => join(root, p));
if (built < Math.max(newest(sources, '.ts'), newest(sources.slice(-2), '.json'))) {
  console.log('# dist/ is missing or older than the sources: npm run build');
  const b = spawnSync('npm', ['run', '--silent', 'build'], { cwd: root, stdio: 'inherit' });
  // tsc still emits on a type error (CI's `tsc --noEmit` fails on it): test what it emitted.
  if (b.status !== 0 && !existsSync(join(root, 'dist', 'bin', 'main.js'))) process.exit(b.status ?? 1);
  if (b.status !== 0) console.log('# the build reported errors (see above): testing what it emitted');
}

const args = ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=spec', ...files];
const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
