// The shipped units pass systemd's own checks, and stay hardened.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

for (const unit of ['pgaccord-agent.service', 'pgaccord-coordinator.service']) {
  test(`${unit}: systemd-analyze verify is clean and exposure stays low`, async () => {
    const verify = await run('systemd-analyze', ['verify', `systemd/${unit}`]);
    assert.equal(`${verify.stdout}${verify.stderr}`.trim(), '');
    const security = await run('systemd-analyze', ['security', '--offline=true', `systemd/${unit}`]);
    const m = /Overall exposure level for \S+: ([\d.]+)/.exec(security.stdout);
    assert.ok(m, security.stdout.slice(-300));
    assert.ok(Number(m[1]) <= 2.5, `${unit} exposure ${m[1]} (was 1.7 or lower when written)`);
  });
}
