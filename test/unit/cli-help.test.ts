// Every command has a --help that explains it and exits 0; unknown input exits 2 with a message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

const pgaccord = (...args: string[]) => spawnSync(process.execPath, ['bin/pgaccord.mjs', ...args], { encoding: 'utf8', timeout: 30_000 });

test('every command answers --help with its usage and options', () => {
  const top = pgaccord('--help');
  assert.equal(top.status, 0);
  const commands = [...top.stdout.matchAll(/^ {2}([a-z]+) {2,}/gm)].map((m) => m[1]!);
  assert.deepEqual(commands, ['coordinator', 'agent', 'apply', 'status', 'token', 'cert', 'demo']);
  for (const c of commands) {
    const r = pgaccord(c, '--help');
    assert.equal(r.status, 0, `${c} --help: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^usage: pgaccord ${c}`), c);
    assert.ok(r.stdout.split('\n').length >= 6, `${c} --help is more than a usage line`);
  }
});

test('unknown commands and options are refused with exit 2 and a message', () => {
  const unknown = pgaccord('frobnicate');
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /unknown command "frobnicate"/);
  const badOption = pgaccord('demo', '--colour');
  assert.equal(badOption.status, 2);
  assert.match(badOption.stderr, /--colour/);
  const badTimeout = pgaccord('demo', '--timeout', 'soon');
  assert.equal(badTimeout.status, 2);
  assert.match(badTimeout.stderr, /--timeout must be a positive number/);
  const emptyTimeout = pgaccord('status', '--wait', '--timeout', '');
  assert.equal(emptyTimeout.status, 2);
  assert.match(emptyTimeout.stderr, /--timeout: "" is not a number of seconds/);
});
