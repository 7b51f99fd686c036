// An empty, garbled, shrunken or older desired-state answer changes no file on a real node. The
// real coordinator never sends such answers, so a tiny fake HTTPS coordinator (its own CA,
// enrolment, CSR signing, scripted desired answers) plays it for this negative test only.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey } from 'node:crypto';
import { createServer } from 'node:https';
import { lstat, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import forge from 'node-forge';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { compileCluster } from '../../coordinator/cluster/compile.ts';
import type { ClusterSpec, NodeDesired } from '../../shared/contract/schema.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { fingerprint256 } from '../../shared/crypto/x509.ts';
import { readCsrKey } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { throwawayPg, query } from '../helpers/pg.ts';
import { startAgent, waitFor } from '../helpers/agent-process.ts';

const pub = (pem: string) => forge.pki.publicKeyFromPem(createPublicKey(pem).export({ type: 'spki', format: 'pem' }).toString());
const cleanup: string[] = [];

const pg = await throwawayPg();
const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-refusal-'));
cleanup.push(stateDir);
const { ca: coordCa } = await CertificateAuthority.create('fake coordinator CA', new Date());
const { ca: clusterCa } = await CertificateAuthority.create('fake cluster CA', new Date());
const serverKey = (await generateRsaKey()).privateKeyPem;
const serverCert = coordCa.issue({ publicKey: pub(serverKey), commonName: '127.0.0.1', ipAddresses: ['127.0.0.1'], usage: 'server', lifetimeSeconds: 3600, now: new Date() }).pem;

const spec: ClusterSpec = {
  name: 'sales',
  profile: 'streaming',
  auth: 'cert',
  tls: { sslmode: 'verify-full' },
  nodes: [
    { name: 'node-1', host: '127.0.0.1', port: pg.port, kind: 'primary' },
    { name: 'node-2', host: '127.0.0.2', port: 5432, kind: 'standby' },
  ],
};
const desiredAt = (generation: number): NodeDesired => compileCluster({ spec, generation, credentials: {}, caBundle: clusterCa.certPem, crl: null }).get('node-1')!;

/** What the fake answers next to GET /v1/agent/desired: a status and a raw body. */
let script: { status: number; body: string }[] = [{ status: 200, body: JSON.stringify(desiredAt(1)) }];
const statuses: AgentStatus[] = [];
const requests: string[] = [];
const fake = createServer({ key: serverKey, cert: serverCert, requestCert: true, rejectUnauthorized: false }, (req, res) => {
  let body = '';
  req.on('data', (d) => (body += d));
  req.on('end', () => {
    requests.push(`${req.method} ${req.url}`);
    const slotFor = (id: string) => desiredAt(1).certificates.find((c) => c.id === id);
    if (req.url === '/v1/coordinator-ca.crt') return res.writeHead(200).end(coordCa.certPem);
    if (req.url === '/v1/agent/enroll') {
      const { csr } = JSON.parse(body) as { csr: string };
      const id = coordCa.issue({ publicKey: readCsrKey(csr).publicKey, commonName: 'pgaccord-agent', usage: 'client', lifetimeSeconds: 3600, now: new Date() });
      return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ cluster: 'sales', node: 'node-1', certificate: id.pem, coordinatorCa: coordCa.certPem }));
    }
    if (req.url === '/v1/agent/csr') {
      const { slot, csr } = JSON.parse(body) as { slot: string; csr: string };
      const s = slotFor(slot)!;
      const c = clusterCa.issue({ publicKey: readCsrKey(csr).publicKey, commonName: s.commonName, dnsNames: s.dnsNames, ipAddresses: s.ipAddresses, usage: s.usage, lifetimeSeconds: 3600, now: new Date() });
      return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ certificate: c.pem, serial: c.serial, notAfter: c.notAfter.toISOString() }));
    }
    if (req.url === '/v1/agent/status') {
      statuses.push(JSON.parse(body) as AgentStatus);
      return res.writeHead(204).end();
    }
    if (req.url?.startsWith('/v1/agent/desired')) {
      const next = script.shift();
      if (next) return res.writeHead(next.status, { 'content-type': 'application/json' }).end(next.body);
      return void setTimeout(() => res.writeHead(204).end(), 500);
    }
    res.writeHead(404).end('{}');
  });
});
await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
const url = `https://127.0.0.1:${(fake.address() as { port: number }).port}`;
const token = `pga1.${Buffer.from(JSON.stringify({ v: 1, url, cluster: 'sales', node: 'node-1', id: 'x', secret: 'y', caFingerprint: fingerprint256(coordCa.certPem) })).toString('base64url')}`;
// The token in a file others can read (a common slip): the agent still enrols, and warns.
const tokenFile = join(stateDir, '..', `pgaccord-refusal-token-${process.pid}`);
await writeFile(tokenFile, token, { mode: 0o644 });
cleanup.push(tokenFile);
const agent = startAgent(['--coordinator', url, '--node', 'sales/node-1', '--pgdata', pg.dataDir, '--state-dir', stateDir, '--join-token-file', tokenFile, '--log-level', 'debug']);

after(async () => {
  await agent.stop('SIGKILL');
  fake.close();
  for (const d of cleanup) await rm(d, { recursive: true, force: true });
});

/** Bytes, mode and owner of every file the agent manages or keeps (status.json, and its temp file while it is written, excepted). */
async function snapshot(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const add = async (path: string) => {
    const st = await lstat(path);
    out[path] = `${st.uid}:${(st.mode & 0o7777).toString(8)}:${(await readFile(path)).toString('base64')}`;
  };
  for (const f of await readdir(pg.dataDir)) if (/\.conf$/.test(f)) await add(join(pg.dataDir, f));
  for (const dir of [stateDir, join(stateDir, 'tls'), join(stateDir, 'identity')]) {
    for (const f of await readdir(dir, { withFileTypes: true })) if (f.isFile() && !/^(\.pgaccord-tmp-)?status\.json/.test(f.name)) await add(join(dir, f.name));
  }
  return out;
}

test('a join token file readable by others is used, with a warning naming it', async () => {
  await waitFor('the warning', () => agent.records().some((r) => String(r.msg).startsWith('the join token file is readable by others') && r.file === tokenFile && r.mode === '644'), 30_000);
});

test('empty, garbled, shrunken and older answers change no file and are reported', async () => {
  await waitFor('generation 1 converged', () => statuses.some((s) => s.generation === 1 && s.phase === 'converged'), 60_000);
  const before = await snapshot();
  const rulesBefore = await query(pg, 'SELECT line_number, type, database, user_name, address, auth_method, error FROM pg_hba_file_rules ORDER BY line_number');
  assert.ok(Object.keys(before).some((p) => p.endsWith('pg_hba.conf')));
  assert.ok(Object.keys(before).some((p) => /tls\/server-[0-9a-f]+\.key$/.test(p)));

  const bad: [string, { status: number; body: string }][] = [
    ['E_DESIRED_EMPTY', { status: 200, body: '' }],
    ['E_DESIRED_EMPTY', { status: 200, body: '{}' }],
    ['E_DESIRED_GARBLED', { status: 200, body: '{"apiVersion":1,"cluster":"sales","node":"node-1","generation":2,"hba":"oops"}' }],
    ['E_DESIRED_GARBLED', { status: 200, body: '<html>502 Bad Gateway</html>' }],
    ['E_DESIRED_SHRUNK', { status: 200, body: JSON.stringify({ ...desiredAt(2), hba: [], roles: [] }) }],
    ['E_DESIRED_OLDER', { status: 200, body: JSON.stringify(desiredAt(1)) }],
  ];
  for (const [code, answer] of bad) {
    const seen = statuses.length;
    script = [answer];
    const s = await waitFor(`a status reporting ${code}`, () => statuses.slice(seen).find((x) => x.errors.some((e) => e.code === code)), 30_000, 100);
    assert.equal(s.generation, 1, 'still at generation 1');
    assert.deepEqual(await snapshot(), before, `${code}: no file changed`);
  }
  assert.deepEqual(await query(pg, 'SELECT line_number, type, database, user_name, address, auth_method, error FROM pg_hba_file_rules ORDER BY line_number'), rulesBefore);
  // A good answer afterwards is taken: the refusal is cleared.
  const seen = statuses.length;
  script = [{ status: 200, body: JSON.stringify(desiredAt(3)) }];
  // After six refusals the backoff may have reached its 60 s cap (30-60 s with jitter).
  const ok = await waitFor('generation 3 converged', () => statuses.slice(seen).find((x) => x.generation === 3 && x.phase === 'converged'), 90_000, 100);
  assert.deepEqual(ok.errors, []);
  assert.ok(agent.records().some((r) => r.code === 'E_DESIRED_GARBLED' && typeof r.msg === 'string' && r.msg.startsWith('refused desired state')));
});
