// The auth hook reads an agent's client certificate from the socket's X509Certificate
// (parseAgentPeer), not through certInfo() of its PEM: the verdict and the identity must be
// certInfo's for every certificate, agent identities and near misses alike (both read the CN with
// commonNameOf: a subject with two CNs has none; test/unit/x509-common-name generates subjects).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseAgentPeer } from '../../coordinator/http/auth.ts';
import { AGENT_CN, parseIdentityUri } from '../../coordinator/service/identities.ts';
import { certInfo } from '../../shared/crypto/x509.ts';

/** The verdict as the auth hook gave it before (certInfo of the PEM). */
function byCertInfo(pem: string): unknown {
  const info = certInfo(pem);
  const ids = info.uris.map(parseIdentityUri).filter((x) => x !== null);
  if (info.commonName !== AGENT_CN || ids.length !== 1 || info.uris.length !== 1 || !info.extKeyUsage.includes('clientAuth')) return 'refused';
  return { identity: { ...ids[0]!, serial: info.serial }, notAfter: info.notAfter.getTime() };
}

function byPeer(pem: string): unknown {
  try {
    const p = parseAgentPeer(new X509Certificate(pem));
    return { identity: { ...p.identity }, notAfter: p.notAfter };
  } catch {
    return 'refused';
  }
}

const dir = mkdtempSync('/tmp/pgaccord-auth-peer-');
let n = 0;
function cert(subj: string, ext: string[], multi = false): string {
  const out = join(dir, `c${n++}.pem`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'k.pem'), '-out', out,
    '-subj', subj, '-days', '2', ...(multi ? ['-multivalue-rdn'] : []), ...ext.flatMap((e) => ['-addext', e])], { stdio: 'ignore' });
  return readFileSync(out, 'utf8');
}

const URI = 'subjectAltName=URI:pgaccord://agent/c1/node-1';
const EKU = 'extendedKeyUsage=clientAuth';
const cases: Array<[string, string, boolean]> = [
  ['an agent identity', cert('/CN=pgaccord-agent', [URI, EKU]), true],
  ['other RDNs before the CN', cert('/O=x/OU=y/CN=pgaccord-agent', [URI, EKU]), true],
  ['the agent CN in a multi-valued RDN', cert('/OU=y+CN=pgaccord-agent', [URI, EKU], true), true],
  ['two CNs, the last another', cert('/CN=pgaccord-agent/CN=other', [URI, EKU]), false],
  ['two CNs, the last the agent CN', cert('/CN=other/CN=pgaccord-agent', [URI, EKU]), false],
  ['the agent CN twice', cert('/CN=pgaccord-agent/CN=pgaccord-agent', [URI, EKU]), false],
  ['two CNs in one multi-valued RDN', cert('/CN=other+CN=pgaccord-agent', [URI, EKU], true), false],
  ['another CN', cert('/CN=pgaccord-agents', [URI, EKU]), false],
  ['a CN with an escaped comma', cert('/CN=pgaccord-agent\\,x', [URI, EKU]), false],
  ['serverAuth only', cert('/CN=pgaccord-agent', [URI, 'extendedKeyUsage=serverAuth']), false],
  ['clientAuth among others', cert('/CN=pgaccord-agent', [URI, 'extendedKeyUsage=serverAuth,clientAuth']), true],
  ['no EKU', cert('/CN=pgaccord-agent', [URI]), false],
  ['two identity URIs', cert('/CN=pgaccord-agent', [`${URI},URI:pgaccord://agent/c1/node-2`, EKU]), false],
  ['an identity URI and another URI', cert('/CN=pgaccord-agent', [`${URI},URI:https://example.com/a%2Cb`, EKU]), false],
  ['an identity URI beside DNS and IP names', cert('/CN=pgaccord-agent', [`${URI},DNS:a.example.com,IP:10.0.0.1`, EKU]), true],
  ['no SAN', cert('/CN=pgaccord-agent', [EKU]), false],
  ['a URI that is not an identity', cert('/CN=pgaccord-agent', ['subjectAltName=URI:pgaccord://agent/C1/node-1', EKU]), false],
];
rmSync(dir, { recursive: true, force: true });

for (const [name, pem, accepted] of cases) {
  test(`parseAgentPeer gives certInfo's verdict: ${name}`, () => {
    const expected = byCertInfo(pem);
    assert.equal(expected !== 'refused', accepted, 'the case is what it says');
    assert.deepEqual(byPeer(pem), expected);
  });
}
