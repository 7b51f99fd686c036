#!/usr/bin/env node
// The test command: unit tests always; integration and end-to-end tests (real PostgreSQL,
// real HTTPS) when running as root, as CI does, or when PGACCORD_INTEGRATION=1.
import { spawnSync } from 'node:child_process';
import { readdirSync, existsSync } from 'node:fs';
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
const args = ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=spec', ...files];
const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
