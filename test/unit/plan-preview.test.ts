// The plan endpoint's hba/ident text comes from the agent's own planner (previewNode), not from a
// second renderer: pinned here against what coordinator/service.ts renderNode rendered before it
// went (issue 10), for every profile and both auth models.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileCluster, rolesNeedingPasswords } from '../../coordinator/cluster/compile.ts';
import { validateSpec } from '../../coordinator/cluster/spec.ts';
import { scramVerifier } from '../../shared/crypto/scram.ts';
import { previewNode } from '../../shared/pgconf/preview.ts';
import { PROFILES } from '../../shared/pgconf/profiles.ts';
import { renderHbaBlock, renderIdentBlock } from '../../shared/pgconf/render.ts';
import type { AuthModel, ClusterSpec, NodeDesired, ProfileName } from '../../shared/contract/schema.ts';

/** coordinator/service.ts renderNode as of 31636a0, copied so this pin outlives it. */
function oldRenderNode(d: NodeDesired): { hba: string; ident: string } {
  const managedRoles = d.roles.filter((r) => r.external !== true).map((r) => r.name);
  return {
    hba: renderHbaBlock({ cluster: d.cluster, localRole: 'postgres', rules: d.hba, managedRoles }),
    ident: renderIdentBlock({ cluster: d.cluster, localRole: 'postgres', localOsUsers: ['postgres'], lines: d.ident }),
  };
}

const NODES: Record<ProfileName, [string, string][]> = {
  streaming: [['a', 'primary'], ['b', 'standby']],
  pgd: [['a', 'peer'], ['b', 'peer']],
  'pg-auto-failover': [['m', 'monitor'], ['a', 'postgres'], ['b', 'postgres']],
  patroni: [['a', 'member'], ['b', 'member'], ['c', 'member']],
  'timescaledb-multinode': [['an', 'access'], ['dn', 'data']],
};

function spec(profile: ProfileName, auth: AuthModel): ClusterSpec {
  return {
    name: 'pv',
    profile,
    auth,
    tls: { sslmode: 'verify-full' },
    nodes: NODES[profile].map(([name, kind], i) => ({ name, host: `db${i}.example.com`, address: `10.0.0.${i + 1}`, kind })),
    roles: [{ name: 'app_user' }],
    hba: [{ type: 'hostssl', database: 'app', user: 'app_user', address: '10.1.0.0/16', method: 'scram-sha-256' }],
  };
}

function compiled(profile: ProfileName, auth: AuthModel): NodeDesired[] {
  const s = spec(profile, auth);
  const v = validateSpec(s);
  assert.ok(v.ok, `${profile}/${auth}: ${JSON.stringify(v)}`);
  const credentials = Object.fromEntries(rolesNeedingPasswords(s).map((r) => [r, { password: `pw-${r}`, verifier: scramVerifier(`pw-${r}`, Buffer.alloc(16, 1)) }]));
  return [...compileCluster({ spec: s, generation: 1, credentials, caBundle: 'CA', crl: 'CRL' }).values()];
}

test('previewNode hba/ident: the blocks renderNode rendered, on every profile and auth model', () => {
  let compared = 0;
  for (const profile of Object.keys(PROFILES) as ProfileName[]) {
    for (const auth of ['cert', 'scram-sha-256'] as const) {
      for (const d of compiled(profile, auth)) {
        const preview = previewNode(d);
        const old = oldRenderNode(d);
        assert.equal(preview.ident, old.ident, `${profile}/${auth}/${d.node} ident`);
        // Patroni's replication and rewind users are external but rejected elsewhere (profiles.ts
        // rejectElsewhere): the agent writes them into the reject line, renderNode left them out.
        const rejected = (PROFILES[profile].roles ?? []).filter((r) => r.rejectElsewhere === true).map((r) => r.name);
        if (rejected.length === 0) {
          assert.equal(preview.hba, old.hba, `${profile}/${auth}/${d.node} hba`);
        } else {
          const managed = d.roles.filter((r) => r.external !== true || rejected.includes(r.name)).map((r) => r.name);
          assert.equal(preview.hba, renderHbaBlock({ cluster: d.cluster, localRole: 'postgres', rules: d.hba, managedRoles: managed }));
          assert.notEqual(preview.hba, old.hba, `${profile}: the preview now shows the agent's reject line`);
        }
        compared++;
      }
    }
  }
  assert.ok(compared >= 20, `compared ${compared} nodes`);
});

test('previewNode hba is the block the agent plans: the reject line names the Patroni users', () => {
  const d = compiled('patroni', 'cert')[0]!;
  assert.match(previewNode(d).hba, /host\s+all,replication\s+"app_user","replicator","rewind_user"\s+all\s+reject/);
});
