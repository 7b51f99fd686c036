// Pure parts of the apply engine: rendering every managed file for a NodeDesired, the include
// line, connection strings, and the ordering that keeps every crash point restartable.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileCluster } from '../../coordinator/cluster/compile.ts';
import { scramVerifier } from '../../shared/crypto/scram.ts';
import { BLOCK_BEGIN, splitManagedBlock } from '../../shared/pgconf/render.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { layoutFor } from '../../shared/pgconf/layout.ts';
import { hasIncludeLine, planNode, PlanError, withIncludeLine, type PlanInput } from '../../shared/pgconf/plan.ts';
import type { InstalledCertificate } from '../../shared/pgconf/types.ts';

const CA = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
const layout = layoutFor('/var/lib/pgaccord', { hbaFile: '/etc/pg/pg_hba.conf', identFile: '/etc/pg/pg_ident.conf', configFile: '/etc/pg/postgresql.conf' });
const OPERATOR_HBA = '# my own rules\nlocal all all peer\nhost all all 10.9.0.0/16 scram-sha-256\n';

function spec(auth: ClusterSpec['auth'], sslmode: ClusterSpec['tls']['sslmode']): ClusterSpec {
  return {
    name: 'sales',
    profile: 'streaming',
    auth,
    tls: { sslmode },
    nodes: [
      { name: 'pg-a', host: 'db1.example.com', address: '10.0.0.11', kind: 'primary' },
      { name: 'pg-b', host: 'db2.example.com', address: '10.0.0.12', kind: 'standby' },
    ],
  };
}

const creds = { replicator: { password: 'pa:ss\\word', verifier: scramVerifier('pa:ss\\word', Buffer.alloc(16, 1)) } };
const certs = (serial: string): InstalledCertificate[] => [
  { slot: 'server', certPath: `/var/lib/pgaccord/tls/server-${serial}.crt`, keyPath: `/var/lib/pgaccord/tls/server-${serial}.key`, serial, notAfter: '2030-01-01T00:00:00.000Z' },
  { slot: 'client-replicator', certPath: `/var/lib/pgaccord/tls/client-replicator-${serial}.crt`, keyPath: `/var/lib/pgaccord/tls/client-replicator-${serial}.key`, serial, notAfter: '2030-01-01T00:00:00.000Z' },
];

function input(node: string, auth: ClusterSpec['auth'], sslmode: ClusterSpec['tls']['sslmode'], over: Partial<PlanInput> = {}): PlanInput {
  const desired = compileCluster({ spec: spec(auth, sslmode), generation: 1, credentials: creds, caBundle: CA, crl: null }).get(node)!;
  return {
    desired,
    certificates: certs('01ab'),
    // what the fixed-name client copies hold (streaming's replicator.crt/.key)
    pems: { 'client-replicator': { cert: '-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----', key: 'KEY' } },
    layout,
    localRole: 'postgres',
    localOsUsers: ['postgres', 'root'],
    existing: { hba: OPERATOR_HBA, ident: '', config: "shared_buffers = '128MB'\n" },
    ...over,
  };
}

test('the same input renders the same bytes and hash', () => {
  const a = planNode(input('pg-b', 'scram-sha-256', 'verify-full'));
  const b = planNode(input('pg-b', 'scram-sha-256', 'verify-full'));
  assert.deepEqual(a, b);
  assert.match(a.hash, /^[0-9a-f]{32}$/);
});

test('install order: what a file names is written before the file naming it; settings then the include line last', () => {
  const p = planNode(input('pg-b', 'scram-sha-256', 'verify-full'));
  assert.deepEqual(p.files.map((f) => f.key), ['ca', 'client-ca', 'passfile', 'ident', 'hba', 'settings', 'config']);
  const settings = p.files.find((f) => f.key === 'settings')!.content;
  assert.match(settings, /^ssl_ca_file = '\/var\/lib\/pgaccord\/tls\/ca-[0-9a-f]{16}\.crt'$/m);
  assert.match(settings, /^ssl_cert_file = '\/var\/lib\/pgaccord\/tls\/server-01ab\.crt'$/m);
  assert.match(settings, /^ssl_key_file = '\/var\/lib\/pgaccord\/tls\/server-01ab\.key'$/m);
  assert.match(settings, new RegExp(`^pgaccord\\.config_hash = '${p.hash}'$`, 'm'));
  assert.doesNotMatch(settings, /ssl_crl_file/);
  assert.equal(p.files.find((f) => f.key === 'passfile')!.mode, 0o600);
  assert.equal(p.files.find((f) => f.key === 'passfile')!.secret, true);
});

test('the managed block goes on top; operator lines are kept byte for byte', () => {
  const p = planNode(input('pg-a', 'scram-sha-256', 'verify-full'));
  const hba = p.files.find((f) => f.key === 'hba')!.content;
  assert.ok(hba.startsWith(`${BLOCK_BEGIN}\n`));
  assert.equal(splitManagedBlock(hba).rest, OPERATOR_HBA);
  assert.match(hba, /^local all "postgres" peer map=pgaccord_local$/m);
  assert.match(hba, /^hostssl replication,"postgres" "replicator" 10\.0\.0\.12\/32 scram-sha-256$/m);
  // Re-planning over the file we wrote changes nothing.
  const again = planNode(input('pg-a', 'scram-sha-256', 'verify-full', { existing: { hba, ident: p.files.find((f) => f.key === 'ident')!.content, config: p.files.find((f) => f.key === 'config')!.content } }));
  assert.equal(again.files.find((f) => f.key === 'hba')!.content, hba);
  assert.equal(again.files.find((f) => f.key === 'config'), undefined, 'include line already there: postgresql.conf untouched');
  assert.equal(again.hash, p.hash);
});

test('the include line is added once, at the end, and recognised in its usual spellings', () => {
  assert.equal(withIncludeLine("a = 1\n", layout.includeFile), "a = 1\n# Added once by the pgaccord agent: its managed settings (ssl, hash of the managed files).\ninclude 'pgaccord.conf'\n");
  assert.match(withIncludeLine('a = 1', layout.includeFile), /^a = 1\n# Added once/);
  for (const line of ["include 'pgaccord.conf'", "  include = 'pgaccord.conf'  # ours", `include '${layout.includeFile}'`]) {
    assert.ok(hasIncludeLine(`x = 1\n${line}\ny = 2\n`, layout.includeFile), line);
    assert.equal(withIncludeLine(`x = 1\n${line}\n`, layout.includeFile), `x = 1\n${line}\n`);
  }
  assert.ok(!hasIncludeLine("#include 'pgaccord.conf'\n", layout.includeFile));
  assert.ok(!hasIncludeLine("include_if_exists 'other.conf'\n", layout.includeFile));
});

test('connection strings: every libpq field the client needs, replication=true for replication edges, never a password', () => {
  const scram = planNode(input('pg-b', 'scram-sha-256', 'verify-full'));
  assert.equal(scram.clientConnections.length, 1);
  const c = scram.clientConnections[0]!;
  assert.equal(c.replication, true);
  // Fixed names: the string goes into primary_conninfo and must outlive renewals, CA rotations and CRL refreshes.
  assert.equal(c.conninfo, 'host=db1.example.com port=5432 dbname=postgres user=replicator replication=true sslmode=verify-full sslrootcert=/var/lib/pgaccord/client/root.crt passfile=/var/lib/pgaccord/client/passfile');
  assert.doesNotMatch(c.conninfo, /pa:ss|password=/);
  assert.equal(scram.files.find((f) => f.key === 'passfile')!.content, 'db1.example.com:5432:*:replicator:pa\\:ss\\\\word\n');

  const cert = planNode(input('pg-b', 'cert', 'verify-ca', { desired: { ...input('pg-b', 'cert', 'verify-ca').desired, crl: '-----BEGIN X509 CRL-----\nAA==\n-----END X509 CRL-----\n' } }));
  const cc = cert.clientConnections[0]!.conninfo;
  assert.match(cc, /sslmode=verify-ca sslrootcert=\/var\/lib\/pgaccord\/client\/root\.crt sslcert=\/var\/lib\/pgaccord\/client\/replicator\.crt sslkey=\/var\/lib\/pgaccord\/client\/replicator\.key sslcrl=\/var\/lib\/pgaccord\/client\/root\.crl$/);
  assert.deepEqual(cert.files.filter((f) => f.key.startsWith('client-')).map((f) => `${f.key} ${f.path} ${f.mode.toString(8)}`), [
    'client-cert /var/lib/pgaccord/client/replicator.crt 644',
    'client-key /var/lib/pgaccord/client/replicator.key 600',
    'client-ca /var/lib/pgaccord/client/root.crt 644',
    'client-crl /var/lib/pgaccord/client/root.crl 644',
  ]);
  assert.equal(cert.files.find((f) => f.key === 'passfile'), undefined);
  assert.match(cert.files.find((f) => f.key === 'settings')!.content, /^ssl_crl_file = '\S+crl-[0-9a-f]{16}\.pem'$/m);
});

test('a new certificate pair or CA changes the settings file (one rename switches), and the hash', () => {
  const a = planNode(input('pg-a', 'cert', 'verify-full'));
  const b = planNode(input('pg-a', 'cert', 'verify-full', { certificates: certs('02cd') }));
  assert.notEqual(a.hash, b.hash);
  assert.notEqual(a.files.find((f) => f.key === 'settings')!.content, b.files.find((f) => f.key === 'settings')!.content);
  assert.equal(a.files.find((f) => f.key === 'hba')!.content, b.files.find((f) => f.key === 'hba')!.content);
  const otherCa = input('pg-a', 'cert', 'verify-full');
  otherCa.desired.caBundle = CA.replace('MIIB', 'MIIC');
  assert.notEqual(planNode(otherCa).caFile, a.caFile);
});

test('TLS without an installed server certificate is refused (ssl=on without one would stop the next restart)', () => {
  assert.throws(() => planNode(input('pg-a', 'cert', 'verify-full', { certificates: [] })), (e: unknown) => e instanceof PlanError && e.code === 'E_NO_SERVER_CERT');
  assert.throws(() => planNode(input('pg-b', 'cert', 'verify-full', { certificates: certs('01ab').slice(0, 1) })), (e: unknown) => e instanceof PlanError && e.code === 'E_NO_CLIENT_CERT');
});

test('without TLS: no ssl_* settings, no CA file', () => {
  const p = planNode(input('pg-a', 'scram-sha-256', 'disable', { certificates: [] }));
  assert.equal(p.caFile, null);
  assert.doesNotMatch(p.files.find((f) => f.key === 'settings')!.content, /ssl/);
  assert.match(p.files.find((f) => f.key === 'hba')!.content, /^host replication,"postgres" "replicator" 10\.0\.0\.12\/32 scram-sha-256$/m);
});

test('a rule comment ending in a backslash cannot swallow the rule below it (PostgreSQL 15 line continuation)', () => {
  const i = input('pg-a', 'scram-sha-256', 'verify-full');
  i.desired.hba.push({ type: 'hostssl', databases: [{ keyword: 'all' }], users: [{ name: 'app' }], address: '10.1.0.0/16', method: 'scram-sha-256', comment: 'ends with \\\\' });
  const hba = planNode(i).files.find((f) => f.key === 'hba')!.content;
  assert.ok(hba.split('\n').every((l) => !l.endsWith('\\')), 'no line ends in a backslash');
  assert.match(hba, /^# ends with \nhostssl all "app" 10\.1\.0\.0\/16 scram-sha-256$/m);
});
