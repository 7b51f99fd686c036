// One reader of a certificate's CN (commonNameOf, shared/crypto/x509.ts), which certInfo and the
// auth hook's parseAgentPeer both use. On generated subjects and issuers (printable and unicode
// values with RFC 2253's specials, backslashes, quotes, newlines, control characters; several CNs;
// multi-valued RDNs; five string types) it gives the value of the name's one CN attribute as
// node-forge parses the DER, or null when the name holds none or more than one; an agent
// certificate is accepted exactly when that value is the agent CN.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, sign, X509Certificate } from 'node:crypto';
import fc from 'fast-check';
import forge from 'node-forge';
import { parseAgentPeer } from '../../coordinator/http/auth.ts';
import { AGENT_CN } from '../../coordinator/service/identities.ts';
import { certInfo, commonNameOf } from '../../shared/crypto/x509.ts';

const { asn1, pki } = forge;
/** node-forge's own TBSCertificate builder and RDN reader, which its typings leave out. */
const forgeInternals = pki as unknown as {
  getTBSCertificate(c: forge.pki.Certificate): forge.asn1.Asn1;
  RDNAttributesAsArray(rdns: forge.asn1.Asn1): Array<{ type: string; value: string; valueTagClass: number }>;
};
const U = asn1.Class.UNIVERSAL;
const CN_OID = '2.5.4.3';
const OIDS = [CN_OID, '2.5.4.10', '2.5.4.11', '2.5.4.6', '2.5.4.5', '0.9.2342.19200300.100.1.1', '1.2.3.4'];
const TAGS = { utf8: asn1.Type.UTF8, bmp: asn1.Type.BMPSTRING, printable: asn1.Type.PRINTABLESTRING, t61: 20, ia5: asn1.Type.IA5STRING } as const;

interface Attr { oid: string; value: string; tag: number }

// One key for every certificate (in memory only): the signature is real, the subject is what varies.
const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const forgePublicKey = pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }) as string);

/** A value's content octets as forge takes them: UTF-8 for UTF8String, UTF-16 code units for BMPString, else one byte a character. */
const octets = (a: Attr) => (a.tag === TAGS.utf8 ? Buffer.from(a.value, 'utf8').toString('binary') : a.value);
const oid = (o: string) => asn1.create(U, asn1.Type.OID, false, asn1.oidToDer(o).getBytes());
const dn = (rdns: Attr[][]) => asn1.create(U, asn1.Type.SEQUENCE, true, rdns.map((rdn) =>
  asn1.create(U, asn1.Type.SET, true, rdn.map((a) => asn1.create(U, asn1.Type.SEQUENCE, true, [oid(a.oid), asn1.create(U, a.tag, false, octets(a))])))));

/** An agent certificate (the identity URI, clientAuth) with this subject and issuer, as the socket would give it. */
function agentCert(subject: Attr[][], issuer: Attr[][]): X509Certificate {
  const c = pki.createCertificate();
  c.publicKey = forgePublicKey;
  c.serialNumber = '0a';
  c.validity.notBefore = new Date(Date.now() - 60_000);
  c.validity.notAfter = new Date(Date.now() + 86_400_000);
  c.setExtensions([{ name: 'subjectAltName', altNames: [{ type: 6, value: 'pgaccord://agent/c1/node-1' }] }, { name: 'extKeyUsage', clientAuth: true }]);
  c.siginfo.algorithmOid = c.signatureOid = pki.oids.sha256WithRSAEncryption!;
  const tbs = forgeInternals.getTBSCertificate(c);
  (tbs.value as forge.asn1.Asn1[])[3] = dn(issuer);
  (tbs.value as forge.asn1.Asn1[])[5] = dn(subject);
  const tbsDer = Buffer.from(asn1.toDer(tbs).getBytes(), 'binary');
  const alg = asn1.create(U, asn1.Type.SEQUENCE, true, [oid(pki.oids.sha256WithRSAEncryption!), asn1.create(U, asn1.Type.NULL, false, '')]);
  const sig = asn1.create(U, asn1.Type.BITSTRING, false, `\0${sign('sha256', tbsDer, privateKey).toString('binary')}`);
  return new X509Certificate(Buffer.from(asn1.toDer(asn1.create(U, asn1.Type.SEQUENCE, true, [tbs, alg, sig])).getBytes(), 'binary'));
}

/** The oracle: node-forge's attributes of the name in the DER; the CN when exactly one CN attribute is there, else null. */
function forgeCommonName(der: Buffer, field: 3 | 5): { cns: string[]; cn: string | null } {
  const tbs = (asn1.fromDer(der.toString('binary')).value as forge.asn1.Asn1[])[0]!;
  const attrs = forgeInternals.RDNAttributesAsArray((tbs.value as forge.asn1.Asn1[])[field]!);
  const cns = attrs.filter((a) => a.type === CN_OID).map((a) => (a.valueTagClass === TAGS.utf8 ? Buffer.from(a.value, 'binary').toString('utf8') : a.value));
  return { cns, cn: cns.length === 1 ? cns[0]! : null };
}

const piece = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(',', '+', '=', '\\', '"', '\n', '\r', '\t', ' ', '#', ';', '<', '>', '\0', '\x7f', '\\41', '\\,', '\\ ', '"x"', 'CN=', ' + ', '\nCN=', ' + CN=', AGENT_CN, 'é', '€', '😀', '\u200b', '\u00a0') },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 3 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 4 }) },
);
const value = fc.oneof(
  { weight: 2, arbitrary: fc.constant(AGENT_CN) },
  { weight: 1, arbitrary: fc.constantFrom(` ${AGENT_CN}`, `${AGENT_CN} `, `"${AGENT_CN}"`, `${AGENT_CN}\0`, `${AGENT_CN}\n`, `x + CN=${AGENT_CN}`, `x\nCN=${AGENT_CN}`, `${AGENT_CN},CN=x`) },
  { weight: 4, arbitrary: fc.array(piece, { maxLength: 5 }).map((p) => p.join('')) },
);
/** A string type the value fits (BMPString: no character beyond U+FFFF; one-byte types: none beyond U+00FF), else UTF8String. */
const attr = fc.record({ oid: fc.oneof({ weight: 3, arbitrary: fc.constant(CN_OID) }, { weight: 2, arbitrary: fc.constantFrom(...OIDS) }), value, tag: fc.constantFrom(...Object.keys(TAGS)) })
  .map(({ oid: o, value: v, tag }): Attr => {
    const max = tag === 'utf8' ? Infinity : tag === 'bmp' ? 0xffff : 0xff;
    const fits = [...v].every((ch) => ch.codePointAt(0)! <= max);
    return { oid: o, value: v, tag: fits ? TAGS[tag as keyof typeof TAGS] : TAGS.utf8 };
  });
const name = fc.array(fc.array(attr, { minLength: 1, maxLength: 3 }), { maxLength: 4 });

const cn = (value: string): Attr => ({ oid: CN_OID, value, tag: TAGS.utf8 });
const ou = (value: string): Attr => ({ oid: '2.5.4.11', value, tag: TAGS.utf8 });
/** Subjects that must not read as the agent CN, and two that must; run every time before the generated ones. */
const hostile: Attr[][][] = [
  [[cn('other')], [cn(AGENT_CN)]], [[cn(AGENT_CN)], [cn(AGENT_CN)]], [[cn(AGENT_CN), cn('x')]], [[ou(`x + CN=${AGENT_CN}`)]], [[ou(`x\nCN=${AGENT_CN}`)], [cn('y')]],
  [[cn(`${AGENT_CN}\0`)]], [[cn(`"${AGENT_CN}"`)]], [[cn(`${AGENT_CN}\\`)]], [[ou(AGENT_CN), cn('x')]], [[ou('y'), cn(AGENT_CN)]], [[cn(AGENT_CN)]],
];

function verdict(c: X509Certificate): string {
  try {
    const p = parseAgentPeer(c);
    return `${p.identity.cluster}/${p.identity.node}`;
  } catch {
    return 'refused';
  }
}

test('one CN reader: the one CN attribute node-forge finds, else null; certInfo and parseAgentPeer agree', () => {
  fc.assert(fc.property(name, name, (subject, issuer) => {
    const c = agentCert(subject, issuer);
    const s = forgeCommonName(c.raw, 5);
    assert.deepEqual(s.cns, subject.flat().filter((a) => a.oid === CN_OID).map((a) => a.value), 'the certificate holds the generated CNs');
    assert.equal(commonNameOf(c), s.cn, `commonNameOf ${JSON.stringify(c.subject)}`);
    const info = certInfo(c.toString());
    assert.equal(info.commonName, s.cn, `certInfo's CN of ${JSON.stringify(c.subject)}`);
    assert.equal(info.issuerCommonName, forgeCommonName(c.raw, 3).cn, `certInfo's issuer CN of ${JSON.stringify(c.issuer)}`);
    assert.equal(verdict(c), s.cn === AGENT_CN ? 'c1/node-1' : 'refused', `parseAgentPeer's verdict on ${JSON.stringify(c.subject)}`);
  }), { numRuns: 400, examples: hostile.map((subject) => [subject, []]) });
});
