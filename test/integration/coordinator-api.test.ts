// The coordinator over real HTTPS with its embedded PostgreSQL store: spec round trip,
// generations, a table of bad specs refused whole (store unchanged), plan, status, OpenAPI,
// data directory file modes, and the admin CLI against it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { certInfo } from '../../shared/crypto/x509.ts';
import { MIGRATIONS } from '../../coordinator/store/store.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';

const execFileAsync = promisify(execFile);
let h: Harness;

before(async () => {
  h = await startHarness(); // no databaseUrl: the embedded store in DIR/pg
});
after(() => h?.close());

test('the store is the embedded PostgreSQL in the data directory, on a Unix socket only', async () => {
  assert.ok(h.coord.pg, 'an embedded instance is running');
  assert.equal(h.coord.pg!.baseDir, join(h.dir, 'pg'));
  const [row] = await h.coord.store.query<{ listen_addresses: string }>('SHOW listen_addresses');
  assert.equal(row!.listen_addresses, '');
  const versions = await h.coord.store.query<{ version: number }>('SELECT version FROM schema_migrations');
  assert.deepEqual(versions.map((v) => v.version), MIGRATIONS.map((m) => m.version));
  // Migrating again is a no-op.
  assert.deepEqual(await h.coord.store.migrate(), []);
});

test('data directory: secrets are 0600, the server certificate covers the loopback names', async () => {
  for (const f of ['admin.token', 'master.key', 'coordinator-ca.key', 'server.key']) {
    const st = await stat(join(h.dir, f));
    assert.equal(st.mode & 0o777, 0o600, `${f} mode`);
  }
  assert.equal((await stat(join(h.dir, 'master.key'))).size, 32);
  const info = certInfo(h.coord.dataDir.serverCertPem);
  assert.deepEqual(info.dnsNames, ['localhost']);
  assert.deepEqual([...info.ipAddresses].sort(), ['127.0.0.1', '::1']);
  assert.ok(info.extKeyUsage.includes('serverAuth'));
  assert.equal(certInfo(h.caPem).isCa, true);
});

test('public routes: healthz, coordinator CA, OpenAPI describing every route', async () => {
  assert.deepEqual((await h.anon.call('GET', '/healthz')).body, { ok: true });
  const ca = await h.anon.call('GET', '/v1/coordinator-ca.crt');
  assert.equal(ca.status, 200);
  assert.equal(ca.text, h.caPem);
  assert.match(ca.contentType, /application\/x-pem-file/);
  const doc = (await h.anon.call('GET', '/openapi.json')).body;
  assert.equal(doc.openapi, '3.1.0');
  for (const [path, method] of [
    ['/v1/clusters/{cluster}', 'put'], ['/v1/clusters/{cluster}', 'get'], ['/v1/clusters/{cluster}', 'delete'],
    ['/v1/clusters/{cluster}/plan', 'post'], ['/v1/clusters/{cluster}/status', 'get'], ['/v1/clusters/{cluster}/nodes/{node}/tokens', 'post'],
    ['/v1/clusters/{cluster}/certificates', 'get'], ['/v1/clusters/{cluster}/ca.crt', 'get'],
    ['/v1/agent/enroll', 'post'], ['/v1/agent/desired', 'get'], ['/v1/agent/csr', 'post'], ['/v1/agent/status', 'post'], ['/healthz', 'get'],
  ] as const) {
    const op = doc.paths[path]?.[method];
    assert.ok(op, `${method.toUpperCase()} ${path} documented`);
    assert.ok(Object.keys(op.responses).length > 0, `${path} declares responses`);
  }
  assert.ok(doc.paths['/v1/clusters/{cluster}'].put.requestBody.content['application/json'].schema.properties.nodes);
});

test('spec round trip over HTTPS; generation bumps only when the spec changes', async () => {
  const spec = pgdSpec('sales', { roles: [{ name: 'testrole' }], hba: [{ type: 'hostssl', database: 'app', user: ['app_user', 'all'], address: '10.1.0.0/16', method: 'scram-sha-256' }] });
  const put = await h.admin.call('PUT', '/v1/clusters/sales', { body: spec });
  assert.equal(put.status, 200, put.text);
  assert.equal(put.body.generation, 1);
  assert.deepEqual(put.body.spec, spec);
  const get = await h.admin.call('GET', '/v1/clusters/sales');
  assert.equal(get.status, 200);
  assert.deepEqual(get.body, { generation: 1, spec, warnings: [] });
  // Same spec, keys in another order: same generation.
  const reordered = JSON.parse(JSON.stringify({ tls: spec.tls, nodes: spec.nodes, name: spec.name, hba: spec.hba, roles: spec.roles, auth: spec.auth, profile: spec.profile }));
  assert.equal((await h.admin.call('PUT', '/v1/clusters/sales', { body: reordered })).body.generation, 1);
  const changed = { ...spec, roles: [{ name: 'testrole' }, { name: 'other_role' }] };
  assert.equal((await h.admin.call('PUT', '/v1/clusters/sales', { body: changed })).body.generation, 2);
  assert.deepEqual((await h.admin.call('GET', '/v1/clusters/sales')).body.spec, changed);
  const list = await h.admin.call('GET', '/v1/clusters');
  assert.deepEqual(list.body.clusters.find((c: { name: string }) => c.name === 'sales'), { name: 'sales', generation: 2 });
});

test('trust is accepted and flagged insecure; status shows every node unknown until agents report', async () => {
  const spec: ClusterSpec = { name: 'lab', profile: 'streaming', auth: 'trust', tls: { sslmode: 'disable' }, nodes: [{ name: 'p', host: '10.9.0.1', kind: 'primary' }, { name: 's', host: '10.9.0.2', kind: 'standby' }] };
  const put = await h.admin.call('PUT', '/v1/clusters/lab', { body: spec });
  assert.equal(put.status, 200);
  assert.ok(put.body.warnings.some((w: string) => w.includes('INSECURE')));
  const st = await h.admin.call('GET', '/v1/clusters/lab/status');
  assert.equal(st.status, 200);
  assert.equal(st.body.insecure, true);
  assert.equal(st.body.converged, false);
  assert.deepEqual(st.body.nodes.map((n: { node: string; phase: string; enrolled: boolean; lastContact: null }) => [n.node, n.phase, n.enrolled, n.lastContact]), [['p', 'unknown', false, null], ['s', 'unknown', false, null]]);
});

// [what is wrong, mutation of a valid spec, field the refusal must name]
const BAD: [string, (s: any) => unknown, string][] = [
  ['node name with newline', (s) => { s.nodes[0].name = 'node\n1'; }, 'nodes[0].name'],
  ['node name with quote', (s) => { s.nodes[0].name = 'node"1'; }, 'nodes[0].name'],
  ['node name with comma', (s) => { s.nodes[0].name = 'a,b'; }, 'nodes[0].name'],
  ['node name with #', (s) => { s.nodes[0].name = 'a#b'; }, 'nodes[0].name'],
  ['node name upper case', (s) => { s.nodes[0].name = 'Node1'; }, 'nodes[0].name'],
  ['cluster name with underscore', (s) => { s.name = 'sal_es'; }, 'name'],
  ['cluster name other than the URL', (s) => { s.name = 'other'; }, 'name'],
  ['role named all (keyword)', (s) => { s.roles = [{ name: 'all' }]; }, 'roles[0].name'],
  ['role named replication (keyword)', (s) => { s.roles = [{ name: 'replication' }]; }, 'roles[0].name'],
  ['role named public', (s) => { s.roles = [{ name: 'public' }]; }, 'roles[0].name'],
  ['role named pg_monitor (reserved)', (s) => { s.roles = [{ name: 'pg_monitor' }]; }, 'roles[0].name'],
  ['role with newline (a second hba line)', (s) => { s.roles = [{ name: 'x\nhost all all 0.0.0.0/0 trust' }]; }, 'roles[0].name'],
  ['role with quote', (s) => { s.roles = [{ name: 'a"b' }]; }, 'roles[0].name'],
  ['role postgres (the bootstrap superuser the agent connects as)', (s) => { s.roles = [{ name: 'postgres' }]; }, 'roles[0].name'],
  ['node address with an IPv6 zone ID', (s) => { s.nodes[0].address = 'fe80::1%eth0'; }, 'nodes[0].address'],
  ['node host with an IPv6 zone ID', (s) => { s.nodes[2].host = 'fe80::13%lo'; }, 'nodes[2].host'],
  ['hba address with an IPv6 zone ID', (s) => { s.hba = [{ type: 'hostssl', database: 'app', user: 'u', address: 'fe80::2%lo/128', method: 'cert' }]; }, 'hba[0].address'],
  ['role with comma', (s) => { s.roles = [{ name: 'a,b' }]; }, 'roles[0].name'],
  ['role with +', (s) => { s.roles = [{ name: '+admins' }]; }, 'roles[0].name'],
  ['role with @', (s) => { s.roles = [{ name: '@file' }]; }, 'roles[0].name'],
  ['duplicate of the profile role', (s) => { s.roles = [{ name: 'pgd_replication' }]; }, 'roles[0].name'],
  ['hba database list by comma', (s) => { s.hba = [{ type: 'hostssl', database: 'app,other', user: 'u', address: '10.0.0.0/8', method: 'cert' }]; }, 'hba[0].database'],
  ['hba user comment', (s) => { s.hba = [{ type: 'hostssl', database: 'app', user: '#u', address: '10.0.0.0/8', method: 'cert' }]; }, 'hba[0].user'],
  ['hba user group', (s) => { s.hba = [{ type: 'hostssl', database: 'app', user: '+grp', address: '10.0.0.0/8', method: 'cert' }]; }, 'hba[0].user'],
  ['hba database file include', (s) => { s.hba = [{ type: 'hostssl', database: '@dbs', user: 'u', address: '10.0.0.0/8', method: 'cert' }]; }, 'hba[0].database'],
  ['hba user with newline', (s) => { s.hba = [{ type: 'host', database: 'app', user: ['ok', 'u\nlocal all all trust'], address: '10.0.0.0/8', method: 'scram-sha-256' }]; }, 'hba[0].user[1]'],
  ['hba CIDR prefix 33', (s) => { s.hba = [{ type: 'hostssl', database: 'app', user: 'u', address: '10.0.0.0/33', method: 'cert' }]; }, 'hba[0].address'],
  ['hba address not an IP', (s) => { s.hba = [{ type: 'hostssl', database: 'app', user: 'u', address: 'example.com', method: 'cert' }]; }, 'hba[0].address'],
  ['hba IPv4 octet 300', (s) => { s.hba = [{ type: 'hostssl', database: 'app', user: 'u', address: '10.0.0.300/24', method: 'cert' }]; }, 'hba[0].address'],
  ['hba method ident (unknown)', (s) => { s.hba = [{ type: 'hostssl', database: 'app', user: 'u', address: '10.0.0.0/8', method: 'ident' }]; }, 'hba[0].method'],
  ['hba cert on host (not hostssl)', (s) => { s.hba = [{ type: 'host', database: 'app', user: 'u', address: '10.0.0.0/8', method: 'cert' }]; }, 'hba[0].method'],
  ['node address not an IP', (s) => { s.nodes[0].address = '10.0.0'; }, 'nodes[0].address'],
  ['node host with a space', (s) => { s.nodes[0].host = 'db 1.example.com'; }, 'nodes[0].host'],
  ['port 0', (s) => { s.nodes[0].port = 0; }, 'nodes[0].port'],
  ['port 70000', (s) => { s.nodes[0].port = 70000; }, 'nodes[0].port'],
  ['port as a string', (s) => { s.nodes[0].port = '5432'; }, 'nodes[0].port'],
  ['port fractional', (s) => { s.nodes[0].port = 5432.5; }, 'nodes[0].port'],
  ['unknown top-level field', (s) => { s.replicas = 3; }, 'replicas'],
  ['unknown node field', (s) => { s.nodes[1].password = 'x'; }, 'nodes[1]'],
  ['unknown tls field', (s) => { s.tls.ciphers = 'ALL'; }, 'tls'],
  ['cert with sslmode require', (s) => { s.tls.sslmode = 'require'; }, 'tls.sslmode'],
  ['cert with sslmode disable', (s) => { s.tls.sslmode = 'disable'; }, 'tls.sslmode'],
  ['sslmode unknown', (s) => { s.tls.sslmode = 'prefer'; }, 'tls.sslmode'],
  ['certLifetime not a duration', (s) => { s.tls.certLifetime = 'soon'; }, 'tls.certLifetime'],
  ['certLifetime without unit', (s) => { s.tls.certLifetime = '90'; }, 'tls.certLifetime'],
  ['certLifetime too short', (s) => { s.tls.certLifetime = '10s'; }, 'tls.certLifetime'],
  ['certLifetime negative', (s) => { s.tls.certLifetime = '-5d'; }, 'tls.certLifetime'],
  ['unknown profile', (s) => { s.profile = 'galera'; }, 'profile'],
  ['unknown auth model', (s) => { s.auth = 'md5'; }, 'auth'],
  ['kind not of the profile', (s) => { s.nodes[0].kind = 'primary'; }, 'nodes[0].kind'],
  ['duplicate node names', (s) => { s.nodes[1].name = 'node-1'; }, 'nodes[1].name'],
  ['two nodes on one endpoint', (s) => { s.nodes[1].host = 'db1.example.com'; }, 'nodes[1].port'],
  ['no nodes', (s) => { s.nodes = []; }, 'nodes'],
  ['nodes missing', (s) => { delete s.nodes; }, 'nodes'],
  ['spec is an array', () => [1, 2], '(document)'],
];

test(`a table of ${BAD.length} bad specs: each refused with 400 naming the field; nothing stored changes`, async () => {
  assert.ok(BAD.length >= 30);
  const before = await h.coord.store.query<{ t: string }>(`SELECT string_agg(c::text, '|' ORDER BY name) AS t FROM clusters c`);
  const beforeCreds = await h.coord.store.query<{ n: string }>(`SELECT count(*) AS n FROM role_credentials`);
  for (const target of ['sales', 'fresh']) {
    for (const [what, mutate, field] of BAD) {
      const spec = JSON.parse(JSON.stringify(pgdSpec(target)));
      const replaced = mutate(spec);
      const body = replaced === undefined ? spec : replaced;
      const res = await h.admin.call('PUT', `/v1/clusters/${target}`, { body });
      assert.equal(res.status, 400, `${what}: ${res.text}`);
      assert.equal(res.body.code, 'E_SPEC_INVALID', what);
      const fields: string[] = res.body.errors.map((e: { field: string }) => e.field);
      assert.ok(fields.some((f) => f === field || f.startsWith(`${field}.`) || f.startsWith(`${field}[`)), `${what}: expected field ${field}, got ${JSON.stringify(res.body.errors)}`);
      assert.ok(res.body.message.includes(fields[0]!), `${what}: message names the field`);
      // The dry run refuses it the same way.
      assert.equal((await h.admin.call('POST', `/v1/clusters/${target}/plan`, { body })).status, 400, `${what} (plan)`);
    }
  }
  const raw = await h.admin.call('PUT', '/v1/clusters/sales', { rawBody: '{"name": "sales", ' });
  assert.equal(raw.status, 400);
  const after = await h.coord.store.query<{ t: string }>(`SELECT string_agg(c::text, '|' ORDER BY name) AS t FROM clusters c`);
  assert.equal(after[0]!.t, before[0]!.t, 'clusters table unchanged');
  assert.deepEqual(await h.coord.store.query(`SELECT count(*) AS n FROM role_credentials`), beforeCreds);
  assert.equal((await h.admin.call('GET', '/v1/clusters/fresh')).status, 404);
});

test('plan: what each node would get and what changes; stores nothing', async () => {
  const current = (await h.admin.call('GET', '/v1/clusters/sales')).body;
  const proposed = JSON.parse(JSON.stringify(current.spec));
  proposed.nodes[1].address = '10.0.0.22';
  const plan = await h.admin.call('POST', '/v1/clusters/sales/plan', { body: proposed });
  assert.equal(plan.status, 200, plan.text);
  assert.equal(plan.body.generation, current.generation + 1);
  const n1 = plan.body.nodes.find((n: { node: string }) => n.node === 'node-1');
  assert.match(n1.hba, /^# BEGIN pgaccord managed block/);
  assert.ok(n1.changes.includes('+ hba: hostssl all,replication "pgd_replication" 10.0.0.22/32 cert'), JSON.stringify(n1.changes));
  assert.ok(n1.changes.includes('- hba: hostssl all,replication "pgd_replication" 10.0.0.12/32 cert'));
  const n2 = plan.body.nodes.find((n: { node: string }) => n.node === 'node-2');
  assert.ok(n2.changes.some((c: string) => c.startsWith('~ certificate server')), JSON.stringify(n2.changes));
  assert.deepEqual((await h.admin.call('GET', '/v1/clusters/sales')).body, current);
  const unchanged = await h.admin.call('POST', '/v1/clusters/sales/plan', { body: current.spec });
  assert.equal(unchanged.body.generation, current.generation);
  assert.ok(unchanged.body.nodes.every((n: { changes: string[] }) => n.changes.length === 1 && n.changes[0] === 'no change'));
});

test('an operator rule with method trust flags the cluster INSECURE: PUT, GET, plan (apply --dry-run), status and its CLI head line (issue 14 item 11)', async () => {
  const spec = pgdSpec('opentrust', { hba: [{ type: 'host', database: 'all', user: 'all', address: '0.0.0.0/0', method: 'trust' }] });
  const flagged = (warnings: string[]) => warnings.some((w) => w.startsWith('INSECURE') && w.includes('host all all 0.0.0.0/0 trust'));
  const plan = await h.admin.call('POST', '/v1/clusters/opentrust/plan', { body: spec });
  assert.equal(plan.status, 200, plan.text);
  assert.ok(flagged(plan.body.warnings), `plan: ${JSON.stringify(plan.body.warnings)}`);
  const put = await h.admin.call('PUT', '/v1/clusters/opentrust', { body: spec });
  assert.equal(put.status, 200, put.text);
  assert.ok(flagged(put.body.warnings), `put: ${JSON.stringify(put.body.warnings)}`);
  assert.ok(flagged((await h.admin.call('GET', '/v1/clusters/opentrust')).body.warnings));
  const st = await h.admin.call('GET', '/v1/clusters/opentrust/status');
  assert.equal(st.body.auth, 'cert');
  assert.equal(st.body.insecure, true);
  const file = join(h.dir, 'opentrust.json');
  await writeFile(file, JSON.stringify(spec));
  const dry = await cli(['apply', '-f', file, '--dry-run', '--data-dir', h.dir]);
  assert.equal(dry.code, 0, dry.stderr);
  assert.match(dry.stdout, /warning: INSECURE.*host all all 0\.0\.0\.0\/0 trust/);
  const table = await cli(['status', 'opentrust', '--data-dir', h.dir]);
  assert.match(table.stdout, /^cluster opentrust .*auth cert.*INSECURE/);
  // The same cluster without the rule is not flagged.
  const fixed = await h.admin.call('PUT', '/v1/clusters/opentrust', { body: pgdSpec('opentrust') });
  assert.deepEqual(fixed.body.warnings, []);
  assert.equal((await h.admin.call('GET', '/v1/clusters/opentrust/status')).body.insecure, false);
  assert.equal((await h.admin.call('DELETE', '/v1/clusters/opentrust')).status, 204);
});

test('unknown clusters and nodes: 404 with a coded error', async () => {
  for (const [method, path] of [['GET', '/v1/clusters/nosuch'], ['GET', '/v1/clusters/nosuch/status'], ['DELETE', '/v1/clusters/nosuch'], ['POST', '/v1/clusters/sales/nodes/node-9/tokens'], ['GET', '/v1/nothing-here']] as const) {
    const r = await h.admin.call(method, path, method === 'POST' ? { body: {} } : {});
    assert.equal(r.status, 404, `${method} ${path}`);
    assert.equal(r.body.code, 'E_NOT_FOUND');
  }
  assert.equal((await h.admin.call('POST', '/v1/clusters/sales/nodes/node-1/tokens', { body: { ttl: 'soon' } })).status, 400);
});

const CLI = join(import.meta.dirname, '../../bin/pgaccord.mjs');

async function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [CLI, ...args], { env: { ...process.env, PGACCORD_URL: h.coord.url, ...env } });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

test('admin CLI: apply (bad, dry run, real), status, token create, cert list, over the pinned CA', async () => {
  const file = join(h.dir, 'cluster.yaml');
  await writeFile(file, 'name: cli\nprofile: streaming\nauth: scram-sha-256\ntls: { sslmode: verify-full }\nnodes:\n  - { name: "pri,mary", host: 10.2.0.1, kind: primary }\n');
  const bad = await cli(['apply', '-f', file, '--data-dir', h.dir]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /nodes\[0\]\.name: "pri,mary" does not match/);
  await writeFile(file, 'name: cli\nprofile: streaming\nauth: scram-sha-256\ntls: { sslmode: verify-full }\nnodes:\n  - { name: primary, host: 10.2.0.1, kind: primary }\n  - { name: standby, host: 10.2.0.2, kind: standby }\n');
  const dry = await cli(['apply', '-f', file, '--dry-run', '--data-dir', h.dir]);
  assert.equal(dry.code, 0, dry.stderr);
  assert.match(dry.stdout, /would be generation 1/);
  assert.match(dry.stdout, /hostssl replication,"postgres" "replicator" 10\.2\.0\.2\/32 scram-sha-256/);
  assert.match(dry.stdout, /ssl_crl_file = \/var\/lib\/pgaccord\/tls\/crl-[0-9a-f]+\.pem/, 'a new cluster comes with a CRL');
  assert.equal((await h.admin.call('GET', '/v1/clusters/cli')).status, 404, 'dry run stored nothing');
  const applied = await cli(['apply', '-f', file, '--token-file', join(h.dir, 'admin.token'), '--ca', join(h.dir, 'ca.crt')]);
  assert.equal(applied.code, 0, applied.stderr);
  assert.match(applied.stdout, /cluster cli: generation 1/);
  // The CRL exists from the first generation (pg_autoctl create --ssl-crl-file needs the file), empty, number 1.
  const crl = await h.admin.call('GET', '/v1/clusters/cli/crl');
  assert.equal(crl.status, 200);
  const { crlInfo } = await import('../../shared/crypto/crl.ts');
  const info = crlInfo(crl.text);
  assert.deepEqual([info.number, info.revoked.length], [1n, 0]);
  const status = await cli(['status', 'cli', '--json', '--data-dir', h.dir]);
  assert.equal(status.code, 0, status.stderr);
  assert.equal(JSON.parse(status.stdout).cluster, 'cli');
  const table = await cli(['status', '--data-dir', h.dir]);
  assert.match(table.stdout, /cluster lab .*INSECURE/);
  assert.match(table.stdout, /NODE\s+DESIRED\s+APPLIED\s+PHASE/);
  const wait = await cli(['status', 'cli', '--wait', '--timeout', '1', '--data-dir', h.dir]);
  assert.equal(wait.code, 1, 'not converged: --wait fails at the timeout');
  const token = await cli(['token', 'create', 'cli', 'standby', '--ttl', '10m'], { PGACCORD_TOKEN: h.token, PGACCORD_CA: join(h.dir, 'ca.crt') });
  assert.equal(token.code, 0, token.stderr);
  assert.match(token.stdout.trim(), /^pga1\.[A-Za-z0-9_-]+$/);
  const certs = await cli(['cert', 'list', 'cli', '--json', '--data-dir', h.dir]);
  assert.equal(certs.code, 0, certs.stderr);
  assert.deepEqual(JSON.parse(certs.stdout), { cluster: 'cli', certificates: [] });
  const wrongToken = await cli(['status', 'cli'], { PGACCORD_TOKEN: 'nope', PGACCORD_CA: join(h.dir, 'ca.crt') });
  assert.equal(wrongToken.code, 1);
  assert.match(wrongToken.stderr, /E_UNAUTHENTICATED/);
  const help = await cli(['apply', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--dry-run/);
  const unknownSerial = await cli(['cert', 'revoke', 'cli', '0a', '--data-dir', h.dir]);
  assert.equal(unknownSerial.code, 1, 'revoking a serial the cluster never issued is refused');
  assert.match(unknownSerial.stderr, /E_NOT_FOUND/);
});

test('the CRL is re-issued (new number, new generation) once less than half its validity is left, and not before', async () => {
  const put = await h.admin.call('PUT', '/v1/clusters/crlfresh', { body: { name: 'crlfresh', profile: 'streaming', auth: 'cert', tls: { sslmode: 'verify-full' }, nodes: [{ name: 'p', host: '10.3.0.1', kind: 'primary' }] } });
  assert.equal(put.status, 200, put.text);
  const { crlInfo } = await import('../../shared/crypto/crl.ts');
  const crl = async () => crlInfo((await h.admin.call('GET', '/v1/clusters/crlfresh/crl')).text);
  const generation = async () => (await h.admin.call('GET', '/v1/clusters/crlfresh')).body.generation as number;
  const first = await crl();
  const lifetimeMs = first.nextUpdate!.getTime() - first.thisUpdate.getTime();
  try {
    // What the coordinator's timer runs.
    h.setClockOffset(lifetimeMs / 2 - 3_600_000);
    await h.coord.service.refreshAllCrls();
    assert.deepEqual([(await crl()).number, await generation()], [1n, put.body.generation], 'more than half left: nothing re-issued');
    h.setClockOffset(lifetimeMs / 2 + 3_600_000);
    await h.coord.service.refreshAllCrls();
    const second = await crl();
    assert.equal(second.number, 2n);
    assert.ok(second.nextUpdate!.getTime() > first.nextUpdate!.getTime() + lifetimeMs / 2 - 60_000, 'valid for a whole lifetime from now');
    assert.equal(await generation(), put.body.generation + 1, 'a new generation carries it to every node');
  } finally {
    h.setClockOffset(0);
  }
});

test('DELETE removes the cluster', async () => {
  assert.equal((await h.admin.call('DELETE', '/v1/clusters/lab')).status, 204);
  assert.equal((await h.admin.call('GET', '/v1/clusters/lab')).status, 404);
});
