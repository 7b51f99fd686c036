// The certificate manager with a real CA (coordinator/ca/ca.ts) behind a fake CSR endpoint, a real
// state directory and an injected clock: versioned names, 0600 keys made here, renewal on
// schedule, refusal of certificates that do not match, chain, name the node or are expired;
// routine renewals of fixed-name client slots for the same key, re-keys when they must.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import forge from 'node-forge';
import pino from 'pino';
import { CoordinatorError } from '../../agent/runtime/client.ts';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { CertificateManager, checkPair, fixedNameClientSlots, KEY_MAX_AGE_MS } from '../../agent/runtime/certs.ts';
import { RenewalSchedule, seededRandom } from '../../agent/runtime/backoff.ts';
import { certInfo, certMatchesKey } from '../../shared/crypto/x509.ts';
import { readCsr } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { PROFILES } from '../../shared/pgconf/profiles.ts';
import type { CertificateSlot, NodeDesired } from '../../shared/contract/schema.ts';
import type { CsrRequest } from '../../shared/contract/api.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const LIFETIME_S = 3600;
const server: CertificateSlot = { id: 'server', usage: 'server', commonName: 'db1.example.com', dnsNames: ['db1.example.com'], ipAddresses: ['10.0.0.11'] };
const client: CertificateSlot = { id: 'client-replicator', usage: 'client', commonName: 'replicator', dnsNames: [], ipAddresses: [] };
const pub = (pem: string) => forge.pki.publicKeyFromPem(createPublicKey(pem).export({ type: 'spki', format: 'pem' }).toString());

async function setup(opts: { slots?: CertificateSlot[]; signWith?: 'other-ca' | 'wrong-name'; fixedNames?: boolean; revokedKeys?: Set<string> } = {}) {
  let clock = Date.parse('2030-01-01T00:00:00Z');
  const { ca } = await CertificateAuthority.create('cluster CA', new Date(clock - 3600_000));
  const { ca: other } = await CertificateAuthority.create('other CA', new Date(clock - 3600_000));
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-unit-'));
  dirs.push(stateDir);
  const requests: CsrRequest[] = [];
  const slots = opts.slots ?? [server, client];
  // fixedNames: the client slot is also copied under fixed names (pgd's bdr_client.{crt,key}).
  const fixed = opts.fixedNames ? { clientLayout: PROFILES.pgd.clientLayout, edges: [{ to: 'db2', role: 'replicator', clientCertificate: client.id }] } : {};
  const desired = { certificates: slots, caBundle: ca.certPem, crl: null, ...fixed } as unknown as NodeDesired;
  const manager = new CertificateManager({
    stateDir,
    owner: { uid: process.getuid!(), gid: process.getgid!() },
    now: () => clock,
    schedule: new RenewalSchedule(seededRandom(11)),
    log: pino({ level: 'silent' }),
    requestCertificate: async (req) => {
      requests.push(req);
      if (opts.revokedKeys?.has(readCsr(req.csr).publicKeyPem)) {
        throw new CoordinatorError('E_HTTP', 'POST /v1/agent/csr: E_KEY_REVOKED: the key in this CSR belongs to a revoked certificate', 409, { apiCode: 'E_KEY_REVOKED' });
      }
      const slot = desired.certificates.find((s) => s.id === req.slot)!;
      const issuer = opts.signWith === 'other-ca' ? other : ca;
      const issued = issuer.issue({
        publicKey: pub(readCsr(req.csr).publicKeyPem),
        commonName: opts.signWith === 'wrong-name' ? 'someone-else' : slot.commonName,
        dnsNames: slot.dnsNames,
        ipAddresses: slot.ipAddresses,
        usage: slot.usage,
        lifetimeSeconds: LIFETIME_S,
        now: new Date(clock),
      });
      return { certificate: issued.pem, serial: issued.serial, notAfter: issued.notAfter.toISOString() };
    },
  });
  return { manager, desired, requests, stateDir, ca, advance: (ms: number) => (clock += ms), now: () => clock };
}

test('certs: first pass issues every slot under versioned names, keys 0600 made here', async () => {
  const t = await setup();
  const r = await t.manager.ensure(t.desired, { online: true });
  assert.deepEqual(r.errors, []);
  assert.deepEqual(r.issued.sort(), ['client-replicator', 'server']);
  assert.equal(t.requests.length, 2);
  for (const req of t.requests) assert.doesNotMatch(req.csr, /PRIVATE KEY/);
  for (const c of r.installed) {
    assert.equal(c.keyPath, join(t.stateDir, 'tls', `${c.slot}-${c.serial}.key`));
    assert.equal(c.certPath, join(t.stateDir, 'tls', `${c.slot}-${c.serial}.crt`));
    assert.equal((await stat(c.keyPath)).mode & 0o777, 0o600);
    assert.equal(checkPair({ certPem: await readFile(c.certPath, 'utf8'), keyPem: await readFile(c.keyPath, 'utf8'), slot: c.slot === 'server' ? server : client, caBundle: t.ca.certPem, now: t.now() }), null);
  }
  assert.equal((await stat(join(t.stateDir, 'tls'))).mode & 0o777, 0o700);
  // Level-triggered: a second pass with nothing due requests nothing and returns the same pairs.
  const again = await t.manager.ensure(t.desired, { online: true });
  assert.equal(t.requests.length, 2);
  assert.deepEqual(again.installed, r.installed);
});

test('certs: renewal when due (2/3 of lifetime minus jitter), old pair kept until pruned', async () => {
  const t = await setup({ slots: [server] });
  const first = (await t.manager.ensure(t.desired, { online: true })).installed[0]!;
  t.advance(30 * 60_000); // half-way (notBefore is back-dated 3 min, 1/20 of the hour): not due yet
  assert.equal((await t.manager.ensure(t.desired, { online: true })).issued.length, 0);
  t.advance(15 * 60_000); // past 2/3 of the 63-min validity window
  const renewed = await t.manager.ensure(t.desired, { online: true });
  assert.deepEqual(renewed.issued, ['server']);
  const second = renewed.installed[0]!;
  assert.notEqual(second.serial, first.serial);
  const files = (await readdir(join(t.stateDir, 'tls'))).sort();
  assert.deepEqual(files, [`server-${first.serial}.crt`, `server-${first.serial}.key`, `server-${second.serial}.crt`, `server-${second.serial}.key`].sort());
  const removed = await t.manager.prune([second], ['server']);
  assert.deepEqual(removed.sort(), [`server-${first.serial}.crt`, `server-${first.serial}.key`].sort());
  assert.deepEqual((await readdir(join(t.stateDir, 'tls'))).sort(), [`server-${second.serial}.crt`, `server-${second.serial}.key`].sort());
});

test('certs: offline, a due pair is kept; an expired one is refused; names changed → new request', async () => {
  const t = await setup({ slots: [server] });
  const first = (await t.manager.ensure(t.desired, { online: true })).installed[0]!;
  t.advance(50 * 60_000);
  const offline = await t.manager.ensure(t.desired, { online: false });
  assert.equal(offline.installed[0]!.serial, first.serial, 'past renewal but the coordinator is down: keep serving');
  assert.deepEqual(offline.errors, []);
  t.advance(20 * 60_000); // past notAfter
  const expired = await t.manager.ensure(t.desired, { online: false });
  assert.deepEqual(expired.installed, []);
  assert.equal(expired.errors[0]!.code, 'E_CERT_MISSING');
  assert.match(expired.errors[0]!.message, /expired/);
  // A renamed node: the old certificate does not name it, a new one is requested.
  const renamed = { ...t.desired, certificates: [{ ...server, dnsNames: ['db1.example.com', 'db1.internal'] }] } as NodeDesired;
  const before = t.requests.length;
  t.advance(-30 * 60_000);
  const r = await t.manager.ensure(renamed, { online: true });
  assert.equal(t.requests.length, before + 1, 'the old pair does not name the node any more: a new one is requested');
  // This fake CA still signs the old names, so the answer is refused rather than installed.
  assert.equal(r.errors[0]!.code, 'E_CERT_MISSING');
  assert.match(r.errors[0]!.message, /lacks DNS name\(s\) db1.internal/);
});

test('certs: a certificate from another CA or for another name is refused, nothing installed', async () => {
  for (const signWith of ['other-ca', 'wrong-name'] as const) {
    const t = await setup({ slots: [server], signWith });
    const r = await t.manager.ensure(t.desired, { online: true });
    assert.deepEqual(r.installed, []);
    assert.match(r.errors[0]!.message, signWith === 'other-ca' ? /does not chain to the cluster CA bundle/ : /CN="someone-else"/);
    assert.deepEqual(await readdir(join(t.stateDir, 'tls')), [], 'no half pair left behind');
  }
});

test('checkPair: key mismatch is refused', async () => {
  const t = await setup({ slots: [server] });
  const c = (await t.manager.ensure(t.desired, { online: true })).installed[0]!;
  const { privateKeyPem } = await generateRsaKey();
  assert.equal(checkPair({ certPem: await readFile(c.certPath, 'utf8'), keyPem: privateKeyPem, slot: server, caBundle: t.ca.certPem, now: t.now() }), 'the certificate does not match its key');
});

/** The public key (SPKI PEM) a certificate file certifies. */
const certKey = async (certPath: string) => createPublicKey(await readFile(certPath, 'utf8')).export({ type: 'spki', format: 'pem' }).toString();

test('fixedNameClientSlots: the client slots a profile\'s client layout copies under fixed names, none without one', async () => {
  const edges = [{ clientCertificate: 'client-a' }, { clientCertificate: null }, { clientCertificate: 'client-b' }];
  for (const profile of ['streaming', 'pgd', 'pg-auto-failover', 'timescaledb-multinode'] as const) {
    assert.deepEqual([...fixedNameClientSlots({ edges, clientLayout: PROFILES[profile].clientLayout } as unknown as NodeDesired)].sort(), ['client-a', 'client-b'], profile);
  }
  assert.deepEqual([...fixedNameClientSlots({ edges } as unknown as NodeDesired)], [], 'no client layout: versioned names in the connection string');
  const noCert = { ...PROFILES.pgd.clientLayout!, cert: null, key: null };
  assert.deepEqual([...fixedNameClientSlots({ edges, clientLayout: noCert } as unknown as NodeDesired)], []);
});

test('certs: routine renewal of a fixed-name client slot keeps its key; the server slot gets a new key', async () => {
  const t = await setup({ fixedNames: true });
  const first = (await t.manager.ensure(t.desired, { online: true })).installed;
  t.advance(45 * 60_000); // past 2/3 of the 63-min validity window: both due
  const renewed = await t.manager.ensure(t.desired, { online: true });
  assert.deepEqual(renewed.errors, []);
  assert.deepEqual(renewed.issued.sort(), ['client-replicator', 'server']);
  const by = (set: typeof first, slot: string) => set.find((c) => c.slot === slot)!;
  const [c1, c2, s1, s2] = [by(first, client.id), by(renewed.installed, client.id), by(first, 'server'), by(renewed.installed, 'server')];
  assert.notEqual(c2.serial, c1.serial, 'a new certificate');
  assert.equal(await certKey(c2.certPath), await certKey(c1.certPath), 'for the same key');
  assert.equal(await readFile(c2.keyPath, 'utf8'), await readFile(c1.keyPath, 'utf8'));
  assert.equal((await stat(c2.keyPath)).mode & 0o777, 0o600);
  assert.equal((await stat(c2.keyPath)).mtimeMs, (await stat(c1.keyPath)).mtimeMs, 'the key keeps the date it was made');
  // Any old/new combination a reader of the fixed names can see matches.
  for (const cert of [c1, c2]) for (const key of [c1, c2]) assert.ok(certMatchesKey(await readFile(cert.certPath, 'utf8'), await readFile(key.keyPath, 'utf8')));
  for (const req of t.requests) assert.doesNotMatch(req.csr, /PRIVATE KEY/);
  assert.notEqual(await certKey(s2.certPath), await certKey(s1.certPath), 'server: a new key per renewal, as before');
  // Pruning the old version leaves the new one whole.
  await t.manager.prune(renewed.installed, ['server', client.id]);
  assert.equal(checkPair({ certPem: await readFile(c2.certPath, 'utf8'), keyPem: await readFile(c2.keyPath, 'utf8'), slot: client, caBundle: t.ca.certPem, now: t.now() }), null);
});

test('certs: a same-key renewal the coordinator refuses as revoked (E_KEY_REVOKED) is retried at once with a new key', async () => {
  const revokedKeys = new Set<string>();
  const t = await setup({ fixedNames: true, revokedKeys });
  const first = (await t.manager.ensure(t.desired, { online: true })).installed.find((c) => c.slot === client.id)!;
  revokedKeys.add(readCsr(t.requests.find((r) => r.slot === client.id)!.csr).publicKeyPem);
  t.advance(45 * 60_000);
  const renewed = await t.manager.ensure(t.desired, { online: true });
  assert.deepEqual(renewed.errors, []);
  const now = renewed.installed.find((c) => c.slot === client.id)!;
  assert.notEqual(now.serial, first.serial);
  assert.notEqual(await certKey(now.certPath), await certKey(first.certPath), 'a new key');
  assert.equal(t.requests.filter((r) => r.slot === client.id).length, 3, 'first issue, the refused same-key CSR, the new-key CSR');
});

test('certs: without a fixed-name client layout, a client slot still gets a new key per renewal', async () => {
  const t = await setup({ slots: [client] });
  const c1 = (await t.manager.ensure(t.desired, { online: true })).installed[0]!;
  t.advance(45 * 60_000);
  const c2 = (await t.manager.ensure(t.desired, { online: true })).installed[0]!;
  assert.notEqual(c2.serial, c1.serial);
  assert.notEqual(await certKey(c2.certPath), await certKey(c1.certPath));
});

test('certs: a fixed-name client slot is re-keyed when revoked, when the operator asks, and when its key is a year old', async () => {
  const t = await setup({ slots: [client], fixedNames: true });
  const c1 = (await t.manager.ensure(t.desired, { online: true })).installed[0]!;
  // Revoked: never certified again, a new key.
  t.advance(1000);
  const crl = t.ca.issueCrl({ revoked: [{ serial: certInfo(await readFile(c1.certPath, 'utf8')).serial, revokedAt: new Date(t.now()) }], number: 1, thisUpdate: new Date(t.now() - 60_000), nextUpdate: new Date(t.now() + 86400_000) });
  const revoked = await t.manager.ensure({ ...t.desired, crl }, { online: true });
  const c2 = revoked.installed[0]!;
  assert.deepEqual(revoked.issued, [client.id]);
  assert.notEqual(await certKey(c2.certPath), await certKey(c1.certPath), 'revoked: new key');
  // The operator's renewal (pgaccord cert renew, and a CA rotation's re-issue): a new key.
  t.advance(1000);
  const asked = await t.manager.ensure({ ...t.desired, crl, renewSerials: [c2.serial] }, { online: true });
  const c3 = asked.installed[0]!;
  assert.deepEqual(asked.issued, [client.id]);
  assert.notEqual(await certKey(c3.certPath), await certKey(c2.certPath), 'operator renewal: new key');
  // Routine renewal: same key.
  t.advance(45 * 60_000);
  const c4 = (await t.manager.ensure({ ...t.desired, crl }, { online: true })).installed[0]!;
  assert.notEqual(c4.serial, c3.serial);
  assert.equal(await certKey(c4.certPath), await certKey(c3.certPath), 'routine renewal: same key');
  // The same key made a year ago (by its file's date): a new key at the next routine renewal.
  const old = (t.now() - KEY_MAX_AGE_MS) / 1000;
  await utimes(c4.keyPath, old, old);
  t.advance(45 * 60_000);
  const c5 = (await t.manager.ensure({ ...t.desired, crl }, { online: true })).installed[0]!;
  assert.notEqual(c5.serial, c4.serial);
  assert.notEqual(await certKey(c5.certPath), await certKey(c4.certPath), 'a year-old key: new key');
  assert.equal((await stat(c5.keyPath)).mtimeMs, t.now(), 'a new key is dated when it is made');
});

test('certs: a fixed-name client key that no longer matches its certificate is not reused', async () => {
  const t = await setup({ slots: [client], fixedNames: true });
  const c1 = (await t.manager.ensure(t.desired, { online: true })).installed[0]!;
  const before = await certKey(c1.certPath);
  // A key swapped under the current certificate: the pair is unusable, so the slot gets a new key.
  const { privateKeyPem } = await generateRsaKey();
  await writeFile(c1.keyPath, privateKeyPem, { mode: 0o600 });
  const r = await t.manager.ensure(t.desired, { online: true });
  assert.deepEqual(r.issued, [client.id]);
  const c2 = r.installed[0]!;
  assert.notEqual(await certKey(c2.certPath), before);
  assert.notEqual(await readFile(c2.keyPath, 'utf8'), privateKeyPem, 'the stray key is not taken either');
});
