// The agent's probes against a real PostgreSQL 15 server, with the real libpq client (psql): a
// probe pass over many edges runs a few psql processes, not one per edge (a full mesh of ten
// nodes probes 90 edges per change, and starting psql was most of a probe's CPU), and each edge's
// verdict is still its own connection's: who can connect does, who cannot does not, with the
// server's (or libpq's) own message for that edge only, in the order of the edges.
import assert from 'node:assert/strict';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { probe, probeAll, resolvePsql } from '../../agent/probe/probes.ts';
import { freePort } from '../../shared/system/pgserver.ts';
import type { ClientConnection } from '../../shared/pgconf/types.ts';
import { query, throwawayPg } from '../helpers/pg.ts';

const pg = await throwawayPg({ listen: '127.0.0.1', port: await freePort() });
await writeFile(join(pg.dataDir, 'pg_hba.conf'), [
  'local all all trust',
  'host all postgres 127.0.0.1/32 trust',
  'host replication postgres 127.0.0.1/32 trust',
  'host all all 127.0.0.1/32 reject',
  '',
].join('\n'));
await query(pg, 'SELECT pg_reload_conf()');
await query(pg, 'CREATE ROLE outsider LOGIN');
const closedPort = await freePort();

// A psql that counts its runs, then is the real one.
const runs = join(pg.baseDir, 'psql-runs');
const wrapper = join(pg.baseDir, 'psql-counting');
await writeFile(runs, '');
await chmod(runs, 0o666);
await writeFile(wrapper, `#!/bin/sh\necho run >> ${runs}\nexec ${resolvePsql()} "$@"\n`);
await chmod(wrapper, 0o755);
const runCount = async () => (await readFile(runs, 'utf8')).split('\n').filter(Boolean).length;

const at = (user: string, port = pg.port, extra = '') => `host=127.0.0.1 port=${port} user=${user} dbname=postgres sslmode=disable${extra}`;
const conns: ClientConnection[] = [
  { to: 'refused-first', role: 'outsider', conninfo: at('outsider'), replication: false },
  { to: 'ok-1', role: 'postgres', conninfo: at('postgres'), replication: false },
  { to: 'closed-port', role: 'postgres', conninfo: at('postgres', closedPort), replication: false },
  { to: 'ok-replication', role: 'postgres', conninfo: at('postgres', pg.port, ' replication=database'), replication: true },
  { to: 'refused-later', role: 'outsider', conninfo: at('outsider'), replication: false },
  { to: 'no-such-role', role: 'ghost', conninfo: at('ghost'), replication: false },
  { to: 'ok-2', role: 'postgres', conninfo: at('postgres'), replication: false },
];
const expectOk = [false, true, false, true, false, false, true];

test('a probe pass over seven edges runs psql at most twice, each edge judged by its own connection', async () => {
  const before = await runCount();
  const results = await probeAll(conns, { osUser: pg.osUser, psql: wrapper, concurrency: 1 }, 'apply');
  const spawned = (await runCount()) - before;
  assert.deepEqual(results.map((r) => r.to), conns.map((c) => c.to), 'results in the order of the edges');
  assert.deepEqual(results.map((r) => r.ok), expectOk, JSON.stringify(results.map((r) => [r.to, r.ok, r.error])));
  for (const r of results) {
    assert.equal(r.reason, 'apply');
    if (r.ok) assert.equal(r.error, null);
  }
  assert.match(results[0]!.error!, /pg_hba\.conf rejects connection.*"outsider"/);
  assert.match(results[2]!.error!, /Connection refused/);
  assert.doesNotMatch(results[2]!.error!, /outsider/, 'an edge carries only its own error');
  assert.match(results[4]!.error!, /pg_hba\.conf rejects connection.*"outsider"/);
  assert.match(results[5]!.error!, /pg_hba\.conf rejects connection.*"ghost"/);
  // One run stops at the first edge (psql exits when its first connection fails); one does the rest.
  assert.ok(spawned <= 2, `psql ran ${spawned} times for ${conns.length} edges`);
});

test('every edge gets the verdict a probe of it alone gets, at any concurrency', async () => {
  const alone = await Promise.all(conns.map((c) => probe(c, { osUser: pg.osUser })));
  assert.deepEqual(alone.map((r) => r.ok), expectOk);
  for (const concurrency of [2, 4]) {
    const batch = await probeAll(conns, { osUser: pg.osUser, concurrency, edgesPerRun: 1 });
    assert.deepEqual(batch.map((r) => r.ok), expectOk, `concurrency ${concurrency}`);
    batch.forEach((r, i) => assert.equal(r.error === null, alone[i]!.error === null, `${r.to}: ${r.error} vs ${alone[i]!.error}`));
  }
});

// Each psql run costs a fork of the agent and psql's own start, about what an edge's connection
// costs: a ten-node mesh ran twenty of them per change where ten do, on a CPU-bound machine.
test('a pass over the nine edges of a ten-node mesh runs psql once at the default concurrency', async () => {
  const nine: ClientConnection[] = Array.from({ length: 9 }, (_, i) => ({ to: `node-${i + 2}`, role: 'postgres', conninfo: at('postgres'), replication: false }));
  const before = await runCount();
  const results = await probeAll(nine, { osUser: pg.osUser, psql: wrapper }, 'peer-applied');
  assert.deepEqual(results.map((r) => [r.to, r.ok]), nine.map((c) => [c.to, true]), JSON.stringify(results.map((r) => r.error)));
  assert.equal((await runCount()) - before, 1, 'psql runs for nine edges');
});
