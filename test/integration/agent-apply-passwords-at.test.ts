// A password rotation's switch instant (NodeDesired.passwordsAt), on a real PostgreSQL 15: the
// apply stages and proves everything else, then switches the passfile and commits the new
// verifier together at the instant, not before; the wait shows as its own phase. Judged by
// causality, not by a time bound: every look that ended before the instant saw the old passfile
// and the old verifier; after the apply, both are new and the edge connects with them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { applyDesired } from '../../agent/apply/apply.ts';
import { agentFixture, psqlAs, ROLE, type AgentFixture } from '../helpers/agent-fixture.ts';
import { query } from '../helpers/pg.ts';

const f: AgentFixture = await agentFixture();

test('passwordsAt: passfile and verifier switch together at the instant, after the rest is staged and proved', async () => {
  const certs = await f.issue('scram-sha-256');
  const first = await applyDesired(f.ctx, { desired: f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full', password: 'the old password', generation: 1 }), certificates: certs });
  assert.equal(first.phase, 'converged', JSON.stringify(first.errors));
  const passfile = first.files.find((x) => x.path.endsWith('/client/passfile'))!.path;
  const look = async () => ({
    passfile: await readFile(passfile, 'utf8'),
    verifier: (await query<{ v: string }>(f.pg, `SELECT rolpassword AS v FROM pg_authid WHERE rolname = $1`, [ROLE]))[0]!.v,
    endedAt: Date.now(),
  });
  const before = await look();

  const at = Date.now() + 1500;
  const rotated = { ...f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full', password: 'the new password', generation: 2 }), passwordsAt: new Date(at).toISOString() };
  const looks: Awaited<ReturnType<typeof look>>[] = [];
  let done = false;
  const applying = applyDesired(f.ctx, { desired: rotated, certificates: certs }).finally(() => (done = true));
  while (!done) {
    looks.push(await look());
    await new Promise((r) => setTimeout(r, 50));
  }
  const r = await applying;
  assert.equal(r.phase, 'converged', JSON.stringify(r.errors));
  assert.ok(Date.now() >= at, 'the apply ended after the instant');
  const early = looks.filter((l) => l.endedAt < at);
  assert.ok(early.length > 0, 'looked before the instant');
  for (const l of early) {
    assert.equal(l.passfile, before.passfile, 'the passfile is the old one before the instant');
    assert.equal(l.verifier, before.verifier, 'the verifier is the old one before the instant');
  }
  const after = await look();
  assert.notEqual(after.passfile, before.passfile);
  assert.notEqual(after.verifier, before.verifier);
  assert.equal(typeof r.phases?.wait, 'number', `the wait is a phase of its own: ${JSON.stringify(r.phases)}`);
  assert.equal(await psqlAs(f.pg, r.clientConnections[0]!.conninfo), ROLE, 'the edge connects with the new passfile line and verifier');

  // Past the instant (a late node): at once, same result.
  const late = { ...f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full', password: 'a third password', generation: 3 }), passwordsAt: new Date(Date.now() - 60_000).toISOString() };
  const r3 = await applyDesired(f.ctx, { desired: late, certificates: certs });
  assert.equal(r3.phase, 'converged', JSON.stringify(r3.errors));
  assert.equal(await psqlAs(f.pg, r3.clientConnections[0]!.conninfo), ROLE);
  assert.notEqual((await look()).passfile, after.passfile);
});
