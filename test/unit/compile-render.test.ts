import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileCluster, rolesNeedingPasswords } from '../../coordinator/cluster/compile.ts';
import { validateSpec } from '../../coordinator/cluster/spec.ts';
import { renderHbaBlock, renderHbaLine, renderIdentBlock, renderPassfile, renderSettings, splitManagedBlock, withManagedBlock, BLOCK_BEGIN, BLOCK_END } from '../../shared/pgconf/render.ts';
import { isScramVerifier, scramVerifier } from '../../shared/crypto/scram.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';

const streaming: ClusterSpec = {
  name: 'prod', profile: 'streaming', auth: 'scram-sha-256', tls: { sslmode: 'verify-full' },
  nodes: [
    { name: 'p', host: 'p.example', address: '10.0.0.1', kind: 'primary' },
    { name: 's1', host: 's1.example', address: '10.0.0.2', kind: 'standby' },
    { name: 's2', host: '10.0.0.3', kind: 'standby' },
  ],
};

function credentials(spec: ClusterSpec) {
  return Object.fromEntries(rolesNeedingPasswords(spec).map((r) => [r, { password: `pw-${r}`, verifier: scramVerifier(`pw-${r}`, Buffer.alloc(16, 1)) }]));
}

test('streaming: the primary admits each standby by its own address, standbys get the passfile secret', () => {
  assert.equal(validateSpec(streaming).ok, true);
  const out = compileCluster({ spec: streaming, generation: 3, credentials: credentials(streaming), caBundle: 'CA', crl: null });
  const p = out.get('p')!;
  assert.deepEqual(p.hba.map((r) => [r.type, r.address, r.method, r.users]), [
    ['hostssl', '10.0.0.2/32', 'scram-sha-256', [{ name: 'replicator' }]],
    ['hostssl', '10.0.0.3/32', 'scram-sha-256', [{ name: 'replicator' }]],
  ]);
  assert.deepEqual(p.hba[0]!.databases, [{ keyword: 'replication' }, { name: 'postgres' }]);
  assert.equal(p.clientSecrets.length, 0, 'the server side never gets plaintext');
  assert.ok(isScramVerifier(p.roles[0]!.verifier!));
  const s2 = out.get('s2')!;
  assert.deepEqual(s2.clientSecrets, [{ role: 'replicator', password: 'pw-replicator' }]);
  assert.equal(s2.edges[0]!.to, 'p');
  assert.equal(s2.hba.length, 0);
  assert.deepEqual(s2.certificates.find((c) => c.id === 'server')!.ipAddresses, ['10.0.0.3']);
  assert.equal(p.settings.password_encryption, 'scram-sha-256');
  assert.equal(p.generation, 3);
});

test('pgd cert: every peer admits every other, client certificate per role, no secrets', () => {
  const spec: ClusterSpec = { ...streaming, profile: 'pgd', auth: 'cert', nodes: streaming.nodes.map((n) => ({ ...n, kind: 'peer' })) };
  const out = compileCluster({ spec, generation: 1, credentials: {}, caBundle: 'CA', crl: null });
  for (const d of out.values()) {
    assert.equal(d.hba.length, 2);
    assert.ok(d.hba.every((r) => r.method === 'cert' && r.type === 'hostssl'));
    assert.deepEqual(d.certificates.map((c) => c.id), ['server', 'client-pgd_replication']);
    assert.equal(d.clientSecrets.length, 0);
    assert.equal(d.edges.length, 2);
    assert.ok(d.roles.every((r) => r.verifier === null));
  }
});

test('compile is deterministic', () => {
  const a = compileCluster({ spec: streaming, generation: 1, credentials: credentials(streaming), caBundle: 'CA', crl: null });
  const b = compileCluster({ spec: structuredClone(streaming), generation: 1, credentials: credentials(streaming), caBundle: 'CA', crl: null });
  assert.equal(JSON.stringify([...a]), JSON.stringify([...b]));
});

test('the managed block goes on top, operator lines are kept byte for byte, and it is replaced not appended', () => {
  const operator = '# operator\nlocal all all peer\nhost  all all 10.9.0.0/16  scram-sha-256   \n';
  const block1 = renderHbaBlock({ cluster: 'c', localRole: 'postgres', rules: [], managedRoles: ['replicator'] });
  const once = withManagedBlock(operator, block1);
  assert.ok(once.startsWith(BLOCK_BEGIN));
  assert.ok(once.endsWith(operator));
  const block2 = renderHbaBlock({ cluster: 'c', localRole: 'postgres', rules: [], managedRoles: ['replicator', 'x'] });
  const twice = withManagedBlock(once, block2);
  assert.equal(twice, block2 + operator);
  assert.equal(splitManagedBlock(twice).rest, operator);
  assert.throws(() => splitManagedBlock(`${BLOCK_BEGIN}\nlocal all all trust\n`), /no end marker/);
  assert.throws(() => splitManagedBlock(`x\n${BLOCK_END}\n`), /without its begin/);
});

test('the HBA block: anti-lockout first, reject lines for managed roles last', () => {
  const block = renderHbaBlock({ cluster: 'c', localRole: 'postgres', managedRoles: ['replicator'], rules: [
    { type: 'hostssl', databases: [{ keyword: 'replication' }], users: [{ name: 'replicator' }], address: '10.0.0.2/32', method: 'cert' },
  ] });
  const lines = block.split('\n').filter((l) => l && !l.startsWith('#'));
  assert.deepEqual(lines, [
    'local all "postgres" peer map=pgaccord_local',
    'hostssl replication "replicator" 10.0.0.2/32 cert',
    'host all,replication "replicator" all reject',
  ]);
  assert.throws(() => renderHbaBlock({ cluster: 'c', localRole: 'postgres', managedRoles: [], rules: [
    { type: 'host', databases: [{ keyword: 'all' }], users: [{ keyword: 'all' }], address: '10.0.0.0 255.0.0.0', method: 'trust' },
  ] }), /not a CIDR/);
});

test('ident block maps the agent and server OS users to the local role', () => {
  const block = renderIdentBlock({ cluster: 'c', localRole: 'postgres', localOsUsers: ['root', 'postgres', 'root'], lines: [{ map: 'pgautofailover', systemUser: 'postgres', databaseUser: 'autoctl_node' }] });
  assert.deepEqual(block.split('\n').filter((l) => l && !l.startsWith('#')), [
    'pgaccord_local "postgres" "postgres"',
    'pgaccord_local "root" "postgres"',
    'pgautofailover "postgres" "autoctl_node"',
  ]);
});

test('settings and passfile render stably and escaped', () => {
  const s = renderSettings({ ssl: 'on', ssl_cert_file: "/var/lib/pgaccord/it's.crt" }, 'abc');
  assert.equal(s, "# Managed by the pgaccord agent: do not edit, it is rewritten on every change.\nssl = 'on'\nssl_cert_file = '/var/lib/pgaccord/it''s.crt'\npgaccord.config_hash = 'abc'\n");
  assert.equal(renderPassfile([{ host: '::1', port: 5432, database: '*', user: 'r', password: 'a:b\\c' }]), '\\:\\:1:5432:*:r:a\\:b\\\\c\n');
});

test('SCRAM verifiers: well-formed ones pass, anything else is refused', () => {
  const v = scramVerifier('secret', Buffer.from('0123456789abcdef'));
  assert.ok(isScramVerifier(v));
  assert.equal(v, scramVerifier('secret', Buffer.from('0123456789abcdef')));
  for (const bad of ['secret', 'md5abc', v.replace('SCRAM-SHA-256', 'SCRAM-SHA-1'), v.slice(0, -4), `${v}x`, v.replace('$4096:', '$0:'), v.replace(':', '::')]) {
    assert.equal(isScramVerifier(bad), false, bad);
  }
});

test('a desired state whose client layout points outside its base directory is not a valid desired state', async () => {
  const { Value } = await import('@sinclair/typebox/value');
  const { NodeDesired } = await import('../../shared/contract/schema.ts');
  const spec: ClusterSpec = { ...streaming, profile: 'pgd', auth: 'cert', nodes: streaming.nodes.map((n) => ({ ...n, kind: 'peer' })) };
  const d = compileCluster({ spec, generation: 1, credentials: {}, caBundle: 'CA', crl: null }).get('p')!;
  assert.ok(Value.Check(NodeDesired, d), JSON.stringify([...Value.Errors(NodeDesired, d)].slice(0, 3)));
  assert.ok(d.clientLayout, 'pgd names a client layout');
  for (const bad of [{ dir: '../../etc' }, { dir: '/etc' }, { passfile: '../x' }, { cert: '../../x.crt' }, { key: 'a/b.key' }]) {
    assert.equal(Value.Check(NodeDesired, { ...d, clientLayout: { ...d.clientLayout!, ...bad } }), false, JSON.stringify(bad));
  }
});

test('the renderer refuses an address with an IPv6 zone ID, whatever the validator let through (issue 14 item 9)', () => {
  assert.throws(() => renderHbaLine({ type: 'hostssl', databases: [{ keyword: 'all' }], users: [{ keyword: 'all' }], address: 'fe80::2%lo/128', method: 'cert' }), /not a CIDR/);
  assert.equal(renderHbaLine({ type: 'hostssl', databases: [{ keyword: 'all' }], users: [{ keyword: 'all' }], address: 'fe80::2/128', method: 'cert' }), 'hostssl all all fe80::2/128 cert');
});

test('trust is flagged from the rendered rules: auth trust, and every operator rule with method trust (issue 14 item 11)', async () => {
  const { trustWarnings } = await import('../../coordinator/cluster/compile.ts');
  const open: ClusterSpec = { ...streaming, auth: 'cert', hba: [
    { type: 'host', database: 'all', user: 'all', address: '0.0.0.0/0', method: 'trust' },
    { type: 'hostssl', database: 'app', user: 'app', address: '10.1.0.0/16', method: 'scram-sha-256' },
    { type: 'local', database: 'all', user: 'all', method: 'trust' },
  ] };
  assert.equal(validateSpec(open).ok, true, 'the spec is valid: trust is allowed, only flagged');
  const w = trustWarnings(open);
  assert.equal(w.length, 2, JSON.stringify(w));
  assert.ok(w.every((x) => x.startsWith('INSECURE')));
  assert.match(w[0]!, /hba\[0\].*host all all 0\.0\.0\.0\/0 trust/);
  assert.match(w[1]!, /hba\[2\].*local all all trust/);
  // The lines quoted are what every node renders.
  const rendered = [...compileCluster({ spec: open, generation: 1, credentials: {}, caBundle: 'CA', crl: null }).values()].map((d) => d.hba.map(renderHbaLine));
  for (const lines of rendered) assert.ok(lines.includes('host all all 0.0.0.0/0 trust') && lines.includes('local all all trust'));
  // auth trust: the managed rules themselves.
  const t = trustWarnings({ ...streaming, auth: 'trust', tls: { sslmode: 'disable' } });
  assert.equal(t.length, 1);
  assert.match(t[0]!, /INSECURE: auth "trust"/);
  // Nothing trust: nothing flagged (reject and cert rules are not trust).
  assert.deepEqual(trustWarnings({ ...streaming, hba: [{ type: 'host', database: 'all', user: 'all', address: '0.0.0.0/0', method: 'reject' }] }), []);
  assert.deepEqual(trustWarnings(streaming), []);
});

test('property: every rendered trust line is flagged, and nothing else is (issue 14 item 11)', async () => {
  const fc = (await import('fast-check')).default;
  const { trustWarnings } = await import('../../coordinator/cluster/compile.ts');
  const method = fc.constantFrom('trust', 'reject', 'scram-sha-256', 'md5', 'cert', 'peer');
  const rule = fc.record({ type: fc.constantFrom('local', 'host', 'hostssl', 'hostnossl'), database: fc.constantFrom('all', 'app'), user: fc.constantFrom('all', 'app_user'), address: fc.constantFrom('0.0.0.0/0', '10.1.0.0/16', 'fe80::/64'), method });
  const spec = fc.record({
    auth: fc.constantFrom('trust', 'scram-sha-256', 'cert'),
    standbys: fc.integer({ min: 0, max: 3 }),
    hba: fc.array(rule, { maxLength: 4 }),
  }).map(({ auth, standbys, hba }) => ({
    name: 'p', profile: 'streaming', auth, tls: { sslmode: auth === 'trust' ? 'disable' : 'verify-full' },
    nodes: [{ name: 'p', host: '10.0.0.1', kind: 'primary' }, ...Array.from({ length: standbys }, (_, i) => ({ name: `s${i}`, host: `10.0.0.${i + 2}`, kind: 'standby' }))],
    hba: hba.map((r) => (r.type === 'local' ? { type: r.type, database: r.database, user: r.user, method: r.method } : r)),
  }) as ClusterSpec).filter((s) => validateSpec(s).ok);
  fc.assert(fc.property(spec, (s) => {
    const credentials = Object.fromEntries(rolesNeedingPasswords(s).map((r) => [r, { password: 'pw', verifier: 'SCRAM-SHA-256$4096:AAAA$AAAA:AAAA' }]));
    const rules = [...compileCluster({ spec: s, generation: 1, credentials, caBundle: 'CA', crl: null }).values()].flatMap((d) => d.hba);
    const trust = rules.filter((r) => r.method === 'trust');
    const w = trustWarnings(s);
    for (const r of trust) {
      // An operator rule is quoted as the line the node renders; a managed one is the auth model's.
      const covered = r.comment === 'operator rule from the cluster spec' ? w.some((x) => x.includes(`"${renderHbaLine(r)}"`)) : w.some((x) => x.startsWith('INSECURE: auth "trust"'));
      assert.ok(covered, `${renderHbaLine(r)} not flagged: ${JSON.stringify(w)}`);
    }
    // Nothing flagged that no node renders (auth trust alone is flagged before a node has a peer).
    if (w.length > 0) assert.ok(trust.length > 0 || s.auth === 'trust', JSON.stringify(w));
  }), { numRuns: 300 });
});
