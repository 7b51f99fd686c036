// Pure defences of the apply engine against a desired state it must not carry out (issue 14):
// the roles it never alters and the settings allowlist, with every profile's own compiled
// output still accepted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileCluster, rolesNeedingPasswords } from '../../coordinator/cluster/compile.ts';
import { allowedSettings, PROFILES } from '../../shared/pgconf/profiles.ts';
import { scramVerifier } from '../../shared/crypto/scram.ts';
import type { AuthModel, ClusterSpec, NodeDesired, ProfileName, RoleDesired } from '../../shared/contract/schema.ts';
import { checkSettings, PlanError } from '../../shared/pgconf/plan.ts';
import { checkProtectedRoles } from '../../agent/apply/roles.ts';

const SPECS: Record<ProfileName, Omit<ClusterSpec, 'auth' | 'tls'>> = {
  streaming: { name: 's', profile: 'streaming', nodes: [{ name: 'p', host: '10.0.0.1', kind: 'primary' }, { name: 'r', host: '10.0.0.2', kind: 'standby' }] },
  pgd: { name: 'g', profile: 'pgd', database: 'bdrdb', nodes: [{ name: 'a', host: '10.0.0.1', kind: 'peer' }, { name: 'b', host: '10.0.0.2', kind: 'peer' }] },
  'pg-auto-failover': { name: 'f', profile: 'pg-auto-failover', nodes: [{ name: 'm', host: '10.0.0.1', kind: 'monitor' }, { name: 'n1', host: '10.0.0.2', kind: 'postgres' }, { name: 'n2', host: '10.0.0.3', kind: 'postgres' }] },
  'timescaledb-multinode': { name: 't', profile: 'timescaledb-multinode', roles: [{ name: 'app' }], nodes: [{ name: 'an', host: '10.0.0.1', kind: 'access' }, { name: 'dn', host: '10.0.0.2', kind: 'data' }] },
  patroni: { name: 'p', profile: 'patroni', nodes: [{ name: 'm1', host: '10.0.0.1', kind: 'member' }, { name: 'm2', host: '10.0.0.2', kind: 'member' }] },
};

function compileAll(profile: ProfileName, auth: AuthModel): NodeDesired[] {
  const spec = { ...SPECS[profile], auth, tls: { sslmode: 'verify-full' } } as ClusterSpec;
  const credentials = Object.fromEntries(rolesNeedingPasswords(spec).map((r) => [r, { password: `pw-${r}`, verifier: scramVerifier(`pw-${r}`, Buffer.alloc(16, 1)) }]));
  return [...compileCluster({ spec, generation: 1, credentials, caBundle: 'CA', crl: null }).values()];
}

const role = (name: string, extra: Partial<RoleDesired> = {}): RoleDesired => ({ name, login: true, replication: false, inRoles: [], verifier: null, ...extra });

test('every profile, every auth model: what the compiler sends passes the role and settings checks on the node', () => {
  // superusers as they are on such nodes: postgres, and the replicator pg_autoctl made
  const superusers = new Set(['postgres', 'pgautofailover_replicator']);
  for (const profile of Object.keys(PROFILES) as ProfileName[]) {
    for (const auth of ['cert', 'scram-sha-256'] as AuthModel[]) {
      for (const d of compileAll(profile, auth)) {
        assert.deepEqual(checkProtectedRoles(d, 'postgres', superusers), [], `${profile} ${auth} ${d.node}`);
        assert.doesNotThrow(() => checkSettings(d), `${profile} ${auth} ${d.node}`);
      }
    }
  }
});

test('roles the agent never alters: postgres, its own user, a superuser of the node, a role made SUPERUSER; named in the error', () => {
  const [d] = compileAll('streaming', 'cert');
  const cases: [RoleDesired, RegExp][] = [
    [role('postgres'), /role postgres is the bootstrap superuser/],
    [role('pgaccord_agent'), /role pgaccord_agent is the database user the agent connects as/],
    [role('dba'), /role dba is a superuser on this node/],
    [role('sneaky', { superuser: true }), /role sneaky would be made SUPERUSER/],
    // a profile's role claimed by another profile: no exemption
    [role('pgautofailover_replicator', { replication: true, superuser: true }), /pgautofailover_replicator would be made SUPERUSER/],
    // the bootstrap superuser as an "external" role with a verifier the coordinator knows
    [role('postgres', { external: true, verifier: 'SCRAM-SHA-256$4096:x$y:z' }), /role postgres is the bootstrap superuser/],
  ];
  for (const [r, message] of cases) {
    const problems = checkProtectedRoles({ ...d!, roles: [...d!.roles, r] }, 'pgaccord_agent', new Set(['postgres', 'dba']));
    assert.equal(problems.length, 1, `${r.name}: ${JSON.stringify(problems)}`);
    assert.equal(problems[0]!.code, 'E_ROLE_PROTECTED');
    assert.match(problems[0]!.message, message);
  }
});

test("a profile's exemptions hold only as the agent's own profile table defines them", () => {
  const ts = compileAll('timescaledb-multinode', 'scram-sha-256');
  const data = ts.find((d) => d.kind === 'data')!;
  const access = ts.find((d) => d.kind === 'access')!;
  const pg = data.roles.find((r) => r.name === 'postgres')!;
  assert.equal(pg.external, true);
  assert.deepEqual(checkProtectedRoles(data, 'postgres', new Set(['postgres'])), [], "TimescaleDB's data node: postgres gets its verifier");
  // the same role on a kind the profile does not give it, or no longer external
  assert.equal(checkProtectedRoles({ ...access, roles: [pg] }, 'postgres', new Set(['postgres']))[0]?.code, 'E_ROLE_PROTECTED');
  assert.equal(checkProtectedRoles({ ...data, roles: [{ ...pg, external: false }] }, 'postgres', new Set(['postgres']))[0]?.code, 'E_ROLE_PROTECTED');
  // a profile role that is not a superuser by the profile, but is one on the node
  const [p] = compileAll('streaming', 'cert');
  assert.match(checkProtectedRoles(p!, 'postgres', new Set(['postgres', 'replicator']))[0]?.message ?? '', /role replicator is a superuser on this node/);
});

test('settings allowlist: archive_command, shared_preload_libraries, ssl_passphrase_command and a client-layout setting refused by name', () => {
  const [d] = compileAll('timescaledb-multinode', 'cert');
  assert.ok(allowedSettings('timescaledb-multinode').has('timescaledb.ssl_dir'), "the profile's own");
  assert.ok(!allowedSettings('pgd').has('timescaledb.ssl_dir'), "another profile's is not");
  for (const [name, edit] of [
    ['archive_command', (x: NodeDesired) => void (x.settings.archive_command = 'id')],
    ['shared_preload_libraries', (x: NodeDesired) => void (x.settings.shared_preload_libraries = 'evil')],
    ['ssl_passphrase_command', (x: NodeDesired) => void (x.settings.ssl_passphrase_command = 'id')],
    ['archive_command', (x: NodeDesired) => void (x.clientLayout = { ...x.clientLayout!, settings: { ...x.clientLayout!.settings, archive_command: 'dir' } })],
  ] as const) {
    const x: NodeDesired = structuredClone(d!);
    edit(x);
    assert.throws(() => checkSettings(x), (e: unknown) => e instanceof PlanError && e.code === 'E_SETTING_REFUSED' && new RegExp(`\\b${name}\\b is not among`).test(e.message), name);
  }
});
