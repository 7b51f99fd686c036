import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateSpec, parseSpecText } from '../../coordinator/cluster/spec.ts';
import { parseDuration } from '../../coordinator/cluster/duration.ts';

export const GOOD = {
  name: 'sales',
  profile: 'pgd',
  auth: 'cert',
  tls: { sslmode: 'verify-full', certLifetime: '90d' },
  nodes: [
    { name: 'node-1', host: 'db1.example.com', address: '10.0.0.11', port: 5432, kind: 'peer' },
    { name: 'node-2', host: 'db2.example.com', address: '10.0.0.12', port: 5432, kind: 'peer' },
  ],
  roles: [{ name: 'testrole' }],
  hba: [{ type: 'hostssl', database: 'app', user: 'app_user', address: '10.1.0.0/16', method: 'scram-sha-256' }],
};

function refused(mutate: (s: any) => void, field: RegExp | string): void {
  const spec = structuredClone(GOOD) as any;
  mutate(spec);
  const r = validateSpec(spec);
  assert.equal(r.ok, false, `expected refusal for ${JSON.stringify(spec).slice(0, 200)}`);
  if (!r.ok) {
    const fields = r.errors.map((e) => e.field);
    const hit = fields.some((f) => (typeof field === 'string' ? f === field : field.test(f)));
    assert.ok(hit, `expected an error naming ${field}, got ${JSON.stringify(r.errors)}`);
  }
}

test('the SPEC example is accepted', () => {
  const r = validateSpec(GOOD);
  assert.equal(r.ok, true, JSON.stringify(r));
});

test('bad specs are refused with the field named', () => {
  refused((s) => (s.name = 'Sales'), 'name');
  refused((s) => (s.nodes[0].name = 'a\nb'), 'nodes[0].name');
  refused((s) => (s.roles[0].name = 'x"y'), 'roles[0].name');
  refused((s) => (s.roles[0].name = 'a,b'), 'roles[0].name');
  refused((s) => (s.roles[0].name = 'all'), 'roles[0].name');
  refused((s) => (s.roles[0].name = 'pg_monitor'), 'roles[0].name');
  refused((s) => (s.roles[0].name = '+grp'), 'roles[0].name');
  refused((s) => (s.hba[0].user = 'a#b'), 'hba[0].user');
  refused((s) => (s.hba[0].database = '@file'), 'hba[0].database');
  refused((s) => (s.hba[0].database = 'x\nhost all all 0.0.0.0/0 trust'), 'hba[0].database');
  refused((s) => (s.hba[0].address = '10.0.0.0/33'), 'hba[0].address');
  refused((s) => (s.hba[0].address = 'samenet'), 'hba[0].address');
  refused((s) => (s.hba[0].method = 'password'), 'hba[0].method');
  refused((s) => (s.nodes[0].port = 70000), 'nodes[0].port');
  refused((s) => (s.nodes[0].port = '5432'), 'nodes[0].port');
  refused((s) => (s.nodes[0].kind = 'primary'), 'nodes[0].kind');
  refused((s) => (s.nodes[0].address = '10.0.0.300'), 'nodes[0].address');
  refused((s) => (s.nodes[1].name = 'node-1'), 'nodes[1].name');
  refused((s) => (s.tls.sslmode = 'require'), 'tls.sslmode');
  refused((s) => (s.tls.certLifetime = '90 days'), 'tls.certLifetime');
  refused((s) => (s.tls.certLifetime = '30s'), 'tls.certLifetime');
  refused((s) => (s.extra = 1), /^extra$|^\(document\)$/);
  refused((s) => (s.nodes[0].colour = 'red'), /nodes\[0\]/);
  refused((s) => (s.profile = 'galera'), 'profile');
  refused((s) => (s.nodes = []), 'nodes');
});

test('unknown fields are named in the error', () => {
  const r = validateSpec({ ...GOOD, extra: true });
  assert.equal(r.ok, false);
  if (!r.ok) assert.ok(r.errors.some((e) => e.field === 'extra'), JSON.stringify(r.errors));
});

test('operator rules may use the keywords all and replication', () => {
  const spec = structuredClone(GOOD) as any;
  spec.hba = [{ type: 'hostssl', database: ['all', 'replication'], user: 'all', address: '10.0.0.0/8', method: 'cert' }];
  assert.equal(validateSpec(spec).ok, true);
});

test('profile node-kind counts are enforced', () => {
  const r = validateSpec({ ...GOOD, profile: 'streaming', auth: 'scram-sha-256', nodes: [
    { name: 'a', host: '10.0.0.1', kind: 'standby' }, { name: 'b', host: '10.0.0.2', kind: 'standby' },
  ] });
  assert.equal(r.ok, false);
  if (!r.ok) assert.match(r.errors.map((e) => e.message).join(';'), /kind "primary"/);
});

test('YAML and JSON both parse; syntax errors are reported, duplicate keys refused', () => {
  assert.equal(parseSpecText('{"name": "x"}').ok, true);
  assert.equal(parseSpecText('name: x\nprofile: pgd\n').ok, true);
  assert.equal(parseSpecText('name: [x\n').ok, false);
  assert.equal(parseSpecText('name: x\nname: y\n').ok, false);
});

test('durations', () => {
  assert.equal(parseDuration('90d'), 90 * 86400);
  assert.equal(parseDuration('2m'), 120);
  assert.equal(parseDuration('1h30m'), 5400);
  assert.equal(parseDuration('1y'), 365 * 86400);
  assert.equal(parseDuration('90'), null);
  assert.equal(parseDuration('-1d'), null);
  assert.equal(parseDuration(''), null);
});

test('roles pgaccord must not manage are refused by name: the bootstrap superuser postgres, pg_* (issue 14 item 7)', () => {
  for (const name of ['postgres', 'pg_monitor', 'pg_read_all_data', 'pg_']) {
    const spec = structuredClone(GOOD) as any;
    spec.roles = [{ name: 'testrole' }, { name }];
    const r = validateSpec(spec);
    assert.equal(r.ok, false, `${name} accepted`);
    if (!r.ok) assert.ok(r.errors.some((e) => e.field === 'roles[1].name' && e.message.includes(`"${name}"`)), `${name}: ${JSON.stringify(r.errors)}`);
  }
  // postgres is refused in every profile, before the profile-owned check (timescaledb lists it as external).
  const ts = { ...structuredClone(GOOD), profile: 'timescaledb-multinode', auth: 'scram-sha-256', tls: { sslmode: 'verify-full' },
    nodes: [{ name: 'an', host: '10.0.0.1', kind: 'access' }, { name: 'dn', host: '10.0.0.2', kind: 'data' }], roles: [{ name: 'postgres' }], hba: [] } as any;
  const r = validateSpec(ts);
  assert.equal(r.ok, false);
  if (!r.ok) assert.match(r.errors.find((e) => e.field === 'roles[0].name')?.message ?? '', /bootstrap superuser/);
});

test('IPv6 zone IDs (%) are refused in node hosts, node addresses and operator HBA addresses (issue 14 item 9)', () => {
  const zoned = (field: string, mutate: (s: any) => void) => {
    const spec = structuredClone(GOOD) as any;
    mutate(spec);
    const r = validateSpec(spec);
    assert.equal(r.ok, false, `${field} with a zone ID accepted`);
    if (!r.ok) {
      const e = r.errors.find((x) => x.field === field);
      assert.ok(e, `no error naming ${field}: ${JSON.stringify(r.errors)}`);
      assert.match(e!.message, /zone/);
    }
  };
  zoned('nodes[0].address', (s) => (s.nodes[0].address = 'fe80::1%eth0'));
  zoned('nodes[0].host', (s) => { s.nodes[0].host = 'fe80::1%eth0'; delete s.nodes[0].address; });
  zoned('nodes[1].host', (s) => { s.nodes[1].host = 'fe80::2%lo'; s.nodes[1].address = 'fe80::2'; });
  zoned('hba[0].address', (s) => (s.hba[0].address = 'fe80::2%lo/128'));
  zoned('hba[0].address', (s) => (s.hba[0].address = 'fe80::2%lo'));
  zoned('hba[0].address', (s) => (s.hba[0].address = 'fe80::%25eth0/64'));
  // Without the zone, the same link-local addresses are accepted.
  const ok = structuredClone(GOOD) as any;
  ok.nodes[0].address = 'fe80::1';
  ok.hba[0].address = 'fe80::/64';
  assert.equal(validateSpec(ok).ok, true, JSON.stringify(validateSpec(ok)));
});
