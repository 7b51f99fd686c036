// The batched agent-identity check (every agent request's first store query, coalesced) costs
// O(its batch), not O(the fleet) (issue 13): with a batch of tens of keys the planner hashed the
// whole agents table (a sequential scan of every agent, for each batch), so the store's CPU per
// agent grew with the number of agents. Planned here on a store of 8,000 agents, as analysed.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { Store } from '../../coordinator/store/store.ts';
import { VALID_IDENTITIES_SQL } from '../../coordinator/service/identities.ts';
import { throwawayStore } from '../helpers/pg.ts';

const { databaseUrl } = await throwawayStore();
const store = await Store.open({ connectionString: databaseUrl }, pino({ level: 'silent' }));
after(() => store.close());

const CLUSTERS = 2000;
const NODES = 4;

/** Every plan node of an EXPLAIN (FORMAT JSON), depth first. */
function planNodes(plan: Record<string, unknown>): Record<string, unknown>[] {
  return [plan, ...((plan.Plans as Record<string, unknown>[] | undefined) ?? []).flatMap(planNodes)];
}

test('a batch of agent identities is checked by index, not by a scan of every agent or certificate', async () => {
  await store.query(`INSERT INTO clusters (name, spec, spec_canonical, generation, created_at, updated_at, incarnation)
    SELECT 'c' || g, '{}', '{}', 1, now(), now(), 'i' FROM generate_series(1, ${CLUSTERS}) g`);
  await store.query(`INSERT INTO certificates (serial, cluster, node, slot, issuer, common_name, not_before, not_after, pem)
    SELECT 's' || g || '-' || n, 'c' || g, 'n' || n, 'identity', 'coordinator', 'pgaccord-agent', now(), now() + interval '30 days', repeat('x', 600)
      FROM generate_series(1, ${CLUSTERS}) g, generate_series(1, ${NODES}) n`);
  await store.query(`INSERT INTO agents (cluster, node, identity_serial, enrolled_at)
    SELECT 'c' || g, 'n' || n, 's' || g || '-' || n, now() FROM generate_series(1, ${CLUSTERS}) g, generate_series(1, ${NODES}) n`);
  await store.query('ANALYZE');
  for (const batch of [1, 10, 50, 200, 1000]) {
    const keys = Array.from({ length: batch }, (_, i) => ({ g: 1 + ((i * 7919) % CLUSTERS), n: 1 + (i % NODES) }));
    const params = [keys.map((k) => `c${k.g}`), keys.map((k) => `n${k.n}`), keys.map((k) => `s${k.g}-${k.n}`)];
    const [{ 'QUERY PLAN': [explained] }] = await store.query<{ 'QUERY PLAN': [{ Plan: Record<string, unknown> }] }>(`EXPLAIN (FORMAT JSON) ${VALID_IDENTITIES_SQL}`, params);
    const scans = planNodes(explained.Plan).filter((p) => p['Node Type'] === 'Seq Scan').map((p) => p['Relation Name']);
    assert.deepEqual(scans, [], `a batch of ${batch}: sequential scans of ${scans.join(', ')}`);
    const valid = await store.query<{ i: string; current: boolean }>(VALID_IDENTITIES_SQL, params);
    assert.equal(valid.length, batch, 'every key valid (distinct keys)');
    assert.ok(valid.every((r) => r.current), 'each one the current identity');
  }
});
