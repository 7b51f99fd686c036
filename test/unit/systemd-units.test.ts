// The shipped units pass systemd's own checks, stay hardened, and wait for the daemons' own
// readiness and keep-alives (Type=notify, WatchdogSec=).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

// Exposure when readiness came in (issue 15): it may only go down.
const EXPOSURE = { 'pgaccord-agent.service': 1.7, 'pgaccord-coordinator.service': 1.5 };

for (const [unit, most] of Object.entries(EXPOSURE)) {
  test(`${unit}: systemd-analyze verify is clean and exposure stays at ${most} or lower`, async () => {
    const verify = await run('systemd-analyze', ['verify', `systemd/${unit}`]);
    assert.equal(`${verify.stdout}${verify.stderr}`.trim(), '');
    const security = await run('systemd-analyze', ['security', '--offline=true', `systemd/${unit}`]);
    const m = /Overall exposure level for \S+: ([\d.]+)/.exec(security.stdout);
    assert.ok(m, security.stdout.slice(-300));
    assert.ok(Number(m[1]) <= most, `${unit} exposure ${m[1]}, more than ${most}`);
  });

  test(`${unit}: Type=notify with a watchdog, notifications accepted from the systemd-notify helper`, async () => {
    const text = await readFile(`systemd/${unit}`, 'utf8');
    const value = (key: string) => [...text.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((x) => x[1]);
    assert.deepEqual(value('Type'), ['notify']);
    // shared/system/sd-notify.ts sends through systemd-notify(1), a child process: "main" would drop it.
    assert.deepEqual(value('NotifyAccess'), ['all']);
    assert.deepEqual(value('WatchdogSec'), ['60s']);
  });
}

test('pgaccord-agent.service: NODE_OPTIONS is one variable that node accepts: a small young generation, one V8 worker thread', async () => {
  const text = await readFile('systemd/pgaccord-agent.service', 'utf8');
  // systemd splits Environment= at spaces outside double quotes: two flags must be quoted as one.
  const assignments = [...text.matchAll(/^Environment=(.*)$/gm)].flatMap((l) => [...l[1]!.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!));
  assert.ok(assignments.every((a) => /^[A-Z_]+=/.test(a)), `not VAR=value: ${assignments.join(' | ')}`);
  const nodeOptions = assignments.filter((a) => a.startsWith('NODE_OPTIONS=')).map((a) => a.slice('NODE_OPTIONS='.length));
  assert.equal(nodeOptions.length, 1);
  // Each measured on an idle agent (bench/footprint.ts reads this line): see the unit's comment.
  assert.deepEqual(nodeOptions[0]!.split(' ').sort(), ['--max-semi-space-size=1', '--v8-pool-size=1']);
  // node refuses some V8 flags in NODE_OPTIONS (--no-opt, --lite-mode) and exits: not these.
  const r = spawnSync(process.execPath, ['-e', '0'], { env: { ...process.env, NODE_OPTIONS: nodeOptions[0] }, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
});
