// The shipped alert rules: `promtool check rules` accepts them and `promtool test rules` passes
// their unit tests (docs/prometheus/pgaccord.rules.test.yml). promtool comes with Debian's
// `prometheus` package, which .ci/setup installs; in CI a missing promtool fails, elsewhere it skips.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PHASES } from '../../coordinator/http/metrics-fleet.ts';

const dir = join(import.meta.dirname, '..', '..', 'docs', 'prometheus');
const hasPromtool = spawnSync('promtool', ['--version']).status === 0;
const skip = hasPromtool || process.env.CI ? false : 'promtool not installed (Debian package prometheus)';

const promtool = (...args: string[]) => spawnSync('promtool', args, { cwd: dir, encoding: 'utf8', timeout: 120_000 });

test('promtool check rules accepts pgaccord.rules.yml', { skip }, () => {
  const r = promtool('check', 'rules', 'pgaccord.rules.yml');
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /SUCCESS: 7 rules found/);
});

test('promtool test rules: every alert fires when it should and stays quiet otherwise', { skip }, () => {
  const r = promtool('test', 'rules', 'pgaccord.rules.test.yml');
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /SUCCESS/);
});

test('the rules only use metrics the coordinator exports', () => {
  const rules = readFileSync(join(dir, 'pgaccord.rules.yml'), 'utf8');
  const source = readFileSync(join(import.meta.dirname, '..', '..', 'coordinator', 'http', 'metrics.ts'), 'utf8');
  const used = new Set(rules.match(/pgaccord_[a-z_]+/g));
  assert.ok(used.size >= 8);
  for (const m of used) assert.ok(source.includes(`'${m}'`), `${m} is exported by coordinator/http/metrics.ts`);
  // The phase the NotConverged alert selects is one the gauge always carries (0/1 per phase).
  assert.ok(PHASES.includes('failed'));
});
