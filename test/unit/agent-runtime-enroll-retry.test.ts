// Enrolment whose answer is lost (issue 11): the agent keeps its enrolment key on disk (0600)
// before it asks, and on a connection failure or 5xx sends the SAME CSR again, to the next
// coordinator; an agent restarted after a failed enrolment asks again with the same key.
// Stand-in coordinators over real HTTPS that read the CSR and sign it, or die before answering.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import forge from 'node-forge';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { enroll } from '../../agent/runtime/identity.ts';
import { CoordinatorError } from '../../agent/runtime/client.ts';
import { fingerprint256 } from '../../shared/crypto/x509.ts';
import { readCsrKey, publicKeyId } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';

const servers: Server[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of servers) s.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const { ca } = await CertificateAuthority.create('test coordinator CA', new Date());
const encode = (payload: unknown) => `pga1.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;

/** What a stand-in does with an enrolment: sign it, die having read it (the answer is lost), or answer this status. */
type OnEnroll = 'sign' | 'die' | number;

interface StandIn {
  url: string;
  /** The CSRs it received, in order. */
  csrs: string[];
  /** Mode of pending.key (or null: absent) at the instant each CSR arrived. */
  keyModes: (number | null)[];
}

async function standIn(onEnroll: () => OnEnroll, stateDir: string): Promise<StandIn> {
  const { privateKeyPem } = await generateRsaKey();
  const pub = forge.pki.publicKeyFromPem(createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' }).toString());
  const cert = ca.issue({ publicKey: pub, commonName: '127.0.0.1', ipAddresses: ['127.0.0.1'], usage: 'server', lifetimeSeconds: 3600, now: new Date() });
  const s: StandIn = { url: '', csrs: [], keyModes: [] };
  const srv = createServer({ key: privateKeyPem, cert: cert.pem }, (req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      if (req.url === '/v1/coordinator-ca.crt') return res.writeHead(200).end(ca.certPem);
      if (req.url !== '/v1/agent/enroll') return res.writeHead(404).end('{}');
      const { csr } = JSON.parse(body) as { csr: string };
      s.csrs.push(csr);
      void stat(join(stateDir, 'identity', 'pending.key')).then((st) => st.mode & 0o777, () => null).then((mode) => {
        s.keyModes.push(mode);
        const what = onEnroll();
        if (what === 'die') return req.socket.destroy();
        if (typeof what === 'number') return res.writeHead(what, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'E_X', message: 'no' }));
        const leaf = { publicKey: readCsrKey(csr).publicKey, commonName: 'pgaccord-agent', usage: 'client' as const, lifetimeSeconds: 3600, now: new Date() };
        const answer = { cluster: 'sales', node: 'node-1', certificate: ca.issue(leaf).pem, coordinatorCa: ca.certPem };
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
      });
    });
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  s.url = `https://127.0.0.1:${(srv.address() as { port: number }).port}`;
  return s;
}

async function setup() {
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-enroll-retry-'));
  dirs.push(stateDir);
  const caFingerprint = fingerprint256(ca.certPem);
  const token = (url: string) => encode({ v: 1, url, cluster: 'sales', node: 'node-1', id: 'tid', secret: 's3cret', caFingerprint });
  return { stateDir, token };
}

const opts = (stateDir: string, urls: string[], joinToken: string) =>
  ({ stateDir, coordinatorUrl: urls, cluster: 'sales', node: 'node-1', joinToken, now: Date.now, random: () => 0 });

test('an enrolment whose answer is lost (the coordinator dies having read it) is sent again, the same CSR, to the next coordinator', async () => {
  const { stateDir, token } = await setup();
  const a = await standIn(() => 'die', stateDir);
  const b = await standIn(() => 'sign', stateDir);
  const moves: string[] = [];
  const stored = await enroll({ ...opts(stateDir, [a.url, b.url], token(a.url)), onFailover: (e) => moves.push(`${e.from} -> ${e.to}`) });
  assert.equal(a.csrs.length, 1);
  assert.deepEqual(b.csrs, a.csrs, 'the same CSR, not a new key');
  assert.deepEqual(moves, [`${a.url} -> ${b.url}`]);
  assert.deepEqual([...a.keyModes, ...b.keyModes], [0o600, 0o600], 'the key was on disk, 0600, before the CSR left');
  assert.equal(publicKeyId(stored.identity.certPem), publicKeyId(readCsrKey(a.csrs[0]!).publicKey));
});

test('a 5xx or every coordinator unreachable: the enrolment is tried again with the same key; a restarted agent asks with that key too', async () => {
  const { stateDir, token } = await setup();
  let answers: OnEnroll[] = [500, 'die'];
  const a = await standIn(() => answers.shift() ?? 'die', stateDir);
  const b = await standIn(() => 'die', stateDir);
  // Every answer lost, every round: enrol fails in the end, the key stays on disk for the next start.
  await assert.rejects(enroll(opts(stateDir, [a.url, b.url], token(a.url))), (e: CoordinatorError) => e.code === 'E_UNREACHABLE');
  const keys = new Set([...a.csrs, ...b.csrs].map((c) => publicKeyId(readCsrKey(c).publicKey)));
  assert.equal(keys.size, 1, 'one key across every retry');
  assert.ok(a.csrs.length + b.csrs.length >= 3, `retried after the 500 and the lost answers: ${a.csrs.length} + ${b.csrs.length}`);
  const kept = await readFile(join(stateDir, 'identity', 'pending.key'), 'utf8');
  assert.equal((await stat(join(stateDir, 'identity', 'pending.key'))).mode & 0o777, 0o600);
  // The agent starts again (systemd): the same key, a new CSR of it.
  answers = ['sign'];
  const c = await standIn(() => 'sign', stateDir);
  const stored = await enroll(opts(stateDir, [c.url], token(c.url)));
  assert.equal(publicKeyId(readCsrKey(c.csrs[0]!).publicKey), [...keys][0], 'the key kept on disk');
  assert.equal(stored.identity.keyPem, kept);
});

test('a refusal (4xx) is not retried', async () => {
  const { stateDir, token } = await setup();
  const a = await standIn(() => 401, stateDir);
  const b = await standIn(() => 'sign', stateDir);
  await assert.rejects(enroll(opts(stateDir, [a.url, b.url], token(a.url))), (e: CoordinatorError) => e.code === 'E_HTTP' && e.status === 401);
  assert.equal(a.csrs.length, 1);
  assert.deepEqual(b.csrs, []);
});
