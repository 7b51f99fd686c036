// The certificate manager with a real CA (coordinator/ca.ts) behind a fake CSR endpoint, a real
// state directory and an injected clock: versioned names, 0600 keys made here, renewal on
// schedule, refusal of certificates that do not match, chain, name the node or are expired.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import forge from 'node-forge';
import pino from 'pino';
import { CertificateAuthority } from '../../coordinator/ca.ts';
import { CertificateManager, checkPair } from '../../agent/certs.ts';
import { RenewalSchedule, seededRandom } from '../../agent/backoff.ts';
import { generateRsaKey, readCsr } from '../../shared/x509.ts';
import type { CertificateSlot, NodeDesired } from '../../shared/schema.ts';
import type { CsrRequest } from '../../shared/api.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const LIFETIME_S = 3600;
const server: CertificateSlot = { id: 'server', usage: 'server', commonName: 'db1.example.com', dnsNames: ['db1.example.com'], ipAddresses: ['10.0.0.11'] };
const client: CertificateSlot = { id: 'client-replicator', usage: 'client', commonName: 'replicator', dnsNames: [], ipAddresses: [] };
const pub = (pem: string) => forge.pki.publicKeyFromPem(createPublicKey(pem).export({ type: 'spki', format: 'pem' }).toString());

async function setup(opts: { slots?: CertificateSlot[]; signWith?: 'other-ca' | 'wrong-name' } = {}) {
  let clock = Date.parse('2030-01-01T00:00:00Z');
  const { ca } = await CertificateAuthority.create('cluster CA', new Date(clock - 3600_000));
  const { ca: other } = await CertificateAuthority.create('other CA', new Date(clock - 3600_000));
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-unit-'));
  dirs.push(stateDir);
  const requests: CsrRequest[] = [];
  const slots = opts.slots ?? [server, client];
  const desired = { certificates: slots, caBundle: ca.certPem } as unknown as NodeDesired;
  const manager = new CertificateManager({
    stateDir,
    owner: { uid: process.getuid!(), gid: process.getgid!() },
    now: () => clock,
    schedule: new RenewalSchedule(seededRandom(11)),
    log: pino({ level: 'silent' }),
    requestCertificate: async (req) => {
      requests.push(req);
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
