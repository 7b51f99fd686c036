// The demo tells how to run `status` against its coordinator: with the command that started it
// (a checkout's launcher, run with node) or `pgaccord` (an installed copy on PATH).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { statusHint } from '../../bin/demo.ts';

test('an installed copy is told `pgaccord status`, a checkout its own launcher', () => {
  assert.equal(statusHint('/usr/local/bin/pgaccord', '/root'), 'pgaccord status demo');
  assert.equal(statusHint('/tmp/prefix/lib/node_modules/pgaccord/bin/pgaccord.mjs', '/tmp'), 'pgaccord status demo');
  assert.equal(statusHint('/work/main/bin/pgaccord.mjs', '/work/main'), 'node bin/pgaccord.mjs status demo');
  assert.equal(statusHint('/src/pgaccord/bin/pgaccord.mjs', '/tmp'), 'node /src/pgaccord/bin/pgaccord.mjs status demo');
  assert.equal(statusHint(undefined, '/'), 'pgaccord status demo');
});
