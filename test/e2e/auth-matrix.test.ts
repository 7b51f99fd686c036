// End to end: a coordinator, three real PostgreSQL 15 nodes and three agent processes. For each
// auth model, every edge connects with the credentials the agent installed, the connections that
// must fail do fail, and switching models never restarts PostgreSQL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { demoSpec } from '../../bin/demo.ts';
import type { AuthModel, SslMode } from '../../shared/contract/schema.ts';
import { query } from '../helpers/pg.ts';
import { editConninfo, foreignClientCert, psql } from '../helpers/libpq.ts';
import { startLocalNodes } from '../helpers/local-nodes.ts';

interface Row { model: string; sslmode: string; case: string; expected: 'connects' | 'refused'; seen: string }

const MODELS: { auth: AuthModel; sslmode: SslMode }[] = [
  { auth: 'cert', sslmode: 'verify-full' },
  { auth: 'scram-sha-256', sslmode: 'require' },
  { auth: 'scram-sha-256', sslmode: 'verify-full' },
  { auth: 'cert', sslmode: 'verify-ca' },
  { auth: 'trust', sslmode: 'require' },
];
const WHO = "SELECT current_user || ' ssl=' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

test('auth matrix over a live three-node cluster, switching models without a restart', async (t) => {
  const { dir, cluster, ports } = await startLocalNodes();
  const nodes = [...cluster.nodes.values()];
  const startTimes = async () => Promise.all(nodes.map(async (n) => (await query<{ t: Date }>(n.pg, 'SELECT pg_postmaster_start_time() AS t'))[0]!.t.toISOString()));
  const before = await startTimes();
  const foreign = await foreignClientCert(join(dir, 'foreign'), 'pgd_replication');

  const rows: Row[] = [];
  const check = async (model: string, sslmode: string, name: string, expected: Row['expected'], conninfo: string, env: Record<string, string> = {}, refusal?: RegExp) => {
    const r = await psql(conninfo, WHO, env);
    const seen = r.ok ? `connects (${r.stdout})` : `refused: ${r.error.split('\n').at(-1)!.replace(/^.*? failed: /, '')}`;
    rows.push({ model, sslmode, case: name, expected, seen });
    if (expected === 'connects') assert.ok(r.ok, `${model}/${sslmode} ${name}: ${r.error}`);
    else {
      assert.equal(r.ok, false, `${model}/${sslmode} ${name} connected but must be refused`);
      if (refusal) assert.match(r.error, refusal, `${model}/${sslmode} ${name}`);
    }
  };

  let agentsStarted = false;
  for (const { auth, sslmode } of MODELS) {
    const spec = { ...demoSpec(ports), name: 'matrix', auth, tls: { sslmode, certLifetime: '30d' } };
    const applied = await cluster.apply(spec);
    assert.equal(applied.code, 0, applied.stderr);
    if (!agentsStarted) {
      for (const name of Object.keys(ports)) await cluster.startAgent('matrix', name);
      agentsStarted = true;
    }
    const status = await cluster.waitConverged('matrix', 120_000);
    assert.equal(status.auth, auth);
    assert.equal(status.insecure, auth === 'trust', 'trust is flagged insecure');
    // seed 004's three verification queries, run by each agent after its apply, reach `pgaccord status --json`
    for (const n of status.nodes) {
      const checks = new Map((n.checks ?? []).map((c) => [c.name, c]));
      assert.deepEqual([...checks.keys()], ['replication over SSL', 'authentication methods in pg_hba.conf', 'BDR node states'], `${n.node} reports the seed's checks`);
      assert.deepEqual(checks.get('BDR node states'), { ...checks.get('BDR node states')!, ok: true, rows: [], note: 'bdr not installed' });
      const methods = checks.get('authentication methods in pg_hba.conf')!;
      assert.equal(methods.ok, true);
      if (auth !== 'trust') assert.ok(methods.rows.some((r) => (r.user_name as string[]).includes('pgd_replication') && r.auth_method === auth), `${n.node}: the ${auth} rule of pgd_replication is among the rows: ${JSON.stringify(methods.rows)}`);
    }
    if (auth === 'cert') {
      const text = await cluster.cli(['status', 'matrix']);
      assert.equal(text.code, 0, text.stderr);
      for (const name of Object.keys(ports)) assert.match(text.stdout, new RegExp(`check ${name} BDR node states: ok \\(bdr not installed\\)`));
    }
    const probes = status.nodes.flatMap((n) => n.probes.map((p) => ({ from: n.node, ...p })));
    assert.equal(probes.length, 6, 'three nodes, each probing its two peers');
    for (const p of probes) {
      assert.ok(p.ok, `agent probe ${p.from} -> ${p.to} failed: ${p.error}`);
      assert.doesNotMatch(p.conninfo, /password=/);
      await check(auth, sslmode, `${p.from} -> ${p.to} with the status --json connection string`, 'connects', p.conninfo);
    }
    const edge = probes[0]!.conninfo;
    await check(auth, sslmode, 'plaintext where TLS is required', 'refused', editConninfo(edge, { sslmode: 'disable' }), {}, /pg_hba\.conf/);
    // ::1 is not the address any node connects from: no rule admits it
    await check(auth, sslmode, 'the role from an address it is not allowed (::1)', 'refused', editConninfo(edge, { host: '::1', sslmode: 'require' }), {}, /pg_hba\.conf/);
    if (auth === 'scram-sha-256') {
      await check(auth, sslmode, 'wrong password', 'refused', editConninfo(edge, { passfile: null }), { PGPASSWORD: 'not-the-password' }, /password authentication failed/);
      await check(auth, sslmode, 'no password at all', 'refused', editConninfo(edge, { passfile: null }), {}, /no password supplied/);
    }
    if (auth === 'cert') {
      await check(auth, sslmode, 'no client certificate', 'refused', editConninfo(edge, { sslcert: '/nonexistent.crt', sslkey: '/nonexistent.key' }), {}, /certificate/);
      await check(auth, sslmode, 'client certificate from another CA', 'refused', editConninfo(edge, { sslcert: foreign.cert, sslkey: foreign.key }));
    }
  }

  assert.deepEqual(await startTimes(), before, 'PostgreSQL was never restarted while switching models');
  const width = (k: keyof Row) => Math.max(k.length, ...rows.map((r) => r[k].length));
  const fmt = (r: Record<keyof Row, string>) => (Object.keys(r) as (keyof Row)[]).map((k) => r[k].padEnd(width(k))).join(' | ');
  t.diagnostic(fmt({ model: 'model', sslmode: 'sslmode', case: 'case', expected: 'expected', seen: 'seen' }));
  for (const r of rows) t.diagnostic(fmt(r));
  console.log(['', fmt({ model: 'model', sslmode: 'sslmode', case: 'case', expected: 'expected', seen: 'seen' }), ...rows.map(fmt), ''].join('\n'));
});
