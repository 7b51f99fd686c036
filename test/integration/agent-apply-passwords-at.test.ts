// A password rotation's switch instant (NodeDesired.passwordsAt), on a real PostgreSQL 15: the
// apply stages and proves everything else, then switches the passfile and commits the new
// verifier together at the instant, not before; the wait shows as its own phase. Judged by
// causality, not by a time bound: every look that ended before the instant saw the old passfile
// and the old verifier; after the apply, both are new and the edge connects with them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { applyDesired } from '../../agent/apply/apply.ts';
import { TEMP_PREFIX } from '../../shared/system/atomic-file.ts';
import { agentFixture, psqlAs, ROLE, type AgentFixture } from '../helpers/agent-fixture.ts';
import { query } from '../helpers/pg.ts';
import { waitFor } from '../helpers/wait.ts';

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

// The two halves of an edge are on two nodes, each switching at the instant: the one that
// lands last sets the window. A client reads its passfile before it connects, and the server
// checks the verifier a TLS handshake later, so the passfile goes first and the verifier's
// COMMIT right after it: only a rename and the COMMIT are left for the instant, the new line
// written and synced under a temporary name before it. A synchronous standby that never
// answers holds the COMMIT, so the order is seen, not timed.
test('passwordsAt: the passfile line is staged before the instant, renamed at it, then the verifier committed', async () => {
  const certs = await f.issue('scram-sha-256');
  const first = await applyDesired(f.ctx, { desired: f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full', password: 'first of the held', generation: 10 }), certificates: certs });
  assert.equal(first.phase, 'converged', JSON.stringify(first.errors));
  const passfile = first.files.find((x) => x.path.endsWith('/client/passfile'))!.path;
  const old = await readFile(passfile, 'utf8');
  const staged = async () => {
    for (const name of (await readdir(dirname(passfile))).filter((n) => n.startsWith(TEMP_PREFIX))) {
      if ((await readFile(join(dirname(passfile), name), 'utf8').catch(() => '')).includes('second of the held')) return true;
    }
    return false;
  };
  await query(f.pg, `ALTER SYSTEM SET synchronous_standby_names = 'nobody'`);
  await query(f.pg, 'SELECT pg_reload_conf()');
  try {
    const at = Date.now() + 2000;
    const rotated = { ...f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full', password: 'second of the held', generation: 11 }), passwordsAt: new Date(at).toISOString() };
    const applying = applyDesired(f.ctx, { desired: rotated, certificates: certs });
    let seenStaged = false;
    while (Date.now() < at - 100 && !seenStaged) {
      seenStaged = await staged();
      if (!seenStaged) await new Promise((r) => setTimeout(r, 10));
    }
    if (seenStaged) assert.equal(await readFile(passfile, 'utf8'), old, 'staged, not in place, before the instant');
    assert.ok(seenStaged || Date.now() >= at, 'waited for the staged line or the instant');
    assert.ok(seenStaged, 'the new passfile line was written under a temporary name before the instant');
    await waitFor('the COMMIT of the new verifier held by the synchronous standby', async () => {
      const rows = await query<{ n: number }>(f.pg, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event = 'SyncRep'`);
      return rows[0]!.n > 0;
    }, 30_000, 20);
    assert.notEqual(await readFile(passfile, 'utf8'), old, 'the passfile is in place before the verifier is committed');
    await query(f.pg, 'ALTER SYSTEM RESET synchronous_standby_names');
    await query(f.pg, 'SELECT pg_reload_conf()');
    const r = await applying;
    assert.equal(r.phase, 'converged', JSON.stringify(r.errors));
    assert.equal(await psqlAs(f.pg, r.clientConnections[0]!.conninfo), ROLE, 'the edge connects with the new passfile line and verifier');
  } finally {
    await query(f.pg, 'ALTER SYSTEM RESET synchronous_standby_names');
    await query(f.pg, 'SELECT pg_reload_conf()');
  }
});
