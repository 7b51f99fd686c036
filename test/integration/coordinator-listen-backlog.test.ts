// The coordinator's HTTPS listener queues as many established connections as the kernel allows
// (net.core.somaxconn), not Node's default of 511: a fleet reconnecting at once (a coordinator
// restart, 10,000 agents) overflowed 511, the kernel dropped the SYNs and each agent waited out
// TCP's 1, 3, 7, 15 s retransmits (issue 13: first desired states p50 25 s at 2,500 agents).
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { startHarness, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
before(async () => {
  h = await startHarness();
});
after(async () => {
  await h?.close();
});

/** A listening TCP socket's backlog: ss shows it as Send-Q. */
function backlogOf(port: number): number {
  const out = execFileSync('ss', ['-ltnH', `sport = :${port}`], { encoding: 'utf8' }).trim().split('\n').filter(Boolean);
  assert.equal(out.length, 1, `one listening socket on port ${port}: ${out.join(' | ')}`);
  const [state, , sendQ] = out[0]!.split(/\s+/);
  assert.equal(state, 'LISTEN');
  return Number(sendQ);
}

test('the HTTPS listener asks for the kernel\'s largest accept queue (net.core.somaxconn), not Node\'s 511', () => {
  const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8').trim());
  assert.ok(somaxconn > 511, `this test needs net.core.somaxconn above 511 to tell the two apart (it is ${somaxconn})`);
  assert.equal(backlogOf(h.coord.port), Math.min(somaxconn, 65535));
});
