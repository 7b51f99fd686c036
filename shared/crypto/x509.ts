// X.509 helpers shared by coordinator and agent. node-forge builds and parses the ASN.1
// structures; keys are generated and every signature is computed and verified with node:crypto
// (forge's pure-JavaScript RSA is about 60 times slower than OpenSSL's).
import { constants, createHash, createPrivateKey, createPublicKey, generateKeyPair, sign as cryptoSign, verify as cryptoVerify, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import forge from 'node-forge';
import type { KeyType } from './key-types.ts';

const { pki, asn1 } = forge;

export class X509Error extends Error {
  constructor(
    message: string,
    /** E_CSR_KEY_POLICY: a well-formed CSR whose key the policy refuses. */
    readonly code: 'E_X509' | 'E_CSR_KEY_POLICY' = 'E_X509',
  ) {
    super(message);
  }
}

export { KEY_TYPES, type KeyType } from './key-types.ts';

/** A fresh key of `type`, PKCS#8 PEM, from OpenSSL (off the event loop). */
export async function generateKey(type: KeyType): Promise<{ privateKeyPem: string }> {
  if (type === 'rsa-2048') return generateRsaKey(2048);
  return new Promise((resolve, reject) => {
    generateKeyPair('ec', { namedCurve: 'prime256v1' }, (err, _pub, priv) => {
      if (err) reject(err);
      else resolve({ privateKeyPem: priv.export({ type: 'pkcs8', format: 'pem' }).toString() });
    });
  });
}

/** The KeyType of a key or certificate's public key, or null for one pgaccord does not make. */
export function keyTypeOf(key: KeyObject): KeyType | null {
  const d = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'rsa' && d?.modulusLength === 2048) return 'rsa-2048';
  if (key.asymmetricKeyType === 'ec' && d?.namedCurve === 'prime256v1') return 'ecdsa-p256';
  return null;
}

/** A fresh RSA key (2048 bits unless told), PKCS#8 PEM, from OpenSSL. */
export async function generateRsaKey(bits = 2048): Promise<{ privateKeyPem: string }> {
  return new Promise((resolve, reject) => {
    generateKeyPair('rsa', { modulusLength: bits, publicExponent: 0x10001 }, (err, _pub, priv) => {
      if (err) reject(err);
      else resolve({ privateKeyPem: priv.export({ type: 'pkcs8', format: 'pem' }).toString() });
    });
  });
}

/**
 * Sign a forge certificate or CSR with node:crypto. forge's sign(key, md) feeds the TBS DER to
 * `md.update` and calls `key.sign(md)`; this message digest only collects those bytes, and the
 * signer computes RSASSA-PKCS1-v1_5 with SHA-256 over them natively (hash included).
 */
export function nativeSign(target: { sign(key: forge.pki.rsa.PrivateKey, md?: forge.md.MessageDigest): void }, privateKey: KeyObject | string): void {
  const key = typeof privateKey === 'string' ? createPrivateKey(privateKey) : privateKey;
  const chunks: string[] = [];
  const md = {
    algorithm: 'sha256',
    update(bytes: string) {
      chunks.push(bytes);
      return md;
    },
  };
  const signer = {
    sign(): string {
      return cryptoSign('sha256', Buffer.from(chunks.join(''), 'binary'), { key, padding: constants.RSA_PKCS1_PADDING }).toString('binary');
    },
  };
  target.sign(signer as unknown as forge.pki.rsa.PrivateKey, md as unknown as forge.md.MessageDigest);
}

/** forge public key object from any PEM node:crypto understands (private or public). */
export function forgePublicKeyFromPem(pem: string): forge.pki.rsa.PublicKey {
  const spki = createPublicKey(pem).export({ type: 'spki', format: 'pem' }).toString();
  try {
    return pki.publicKeyFromPem(spki);
  } catch {
    throw new X509Error('only RSA keys are supported');
  }
}

/**
 * A PKCS#10 certificate signing request for the key (RSA or EC), subject CN=commonName, PEM.
 * The CertificationRequestInfo (RFC 2986 4.1) is assembled with forge's ASN.1 tools, whose CSR
 * object carries RSA keys only; node:crypto signs it: sha256WithRSAEncryption or
 * ecdsa-with-SHA256.
 */
export function createCsr(privateKeyPem: string, commonName: string): string {
  const key = createPrivateKey(privateKeyPem);
  const ec = key.asymmetricKeyType === 'ec';
  if (!ec && key.asymmetricKeyType !== 'rsa') throw new X509Error(`no CSR for a ${key.asymmetricKeyType} key: RSA or EC only`);
  const { Class, Type } = asn1;
  const seq = (v: forge.asn1.Asn1[]) => asn1.create(Class.UNIVERSAL, Type.SEQUENCE, true, v);
  const oid = (o: string) => asn1.create(Class.UNIVERSAL, Type.OID, false, asn1.oidToDer(o).getBytes());
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  const info = seq([
    asn1.create(Class.UNIVERSAL, Type.INTEGER, false, String.fromCharCode(0)), // v1
    seq([asn1.create(Class.UNIVERSAL, Type.SET, true, [seq([oid(pki.oids.commonName!), asn1.create(Class.UNIVERSAL, Type.UTF8, false, forge.util.encodeUtf8(commonName))])])]),
    asn1.fromDer(spki.toString('binary')),
    asn1.create(Class.CONTEXT_SPECIFIC, 0, true, []), // no attributes
  ]);
  const infoDer = Buffer.from(asn1.toDer(info).getBytes(), 'binary');
  const signature = cryptoSign('sha256', infoDer, ec ? { key, dsaEncoding: 'der' } : { key, padding: constants.RSA_PKCS1_PADDING });
  const algorithm = ec ? seq([oid(OID.ecdsaWithSha256)]) : seq([oid(OID.sha256WithRsa), asn1.create(Class.UNIVERSAL, Type.NULL, false, '')]);
  const csr = seq([info, algorithm, asn1.create(Class.UNIVERSAL, Type.BITSTRING, false, String.fromCharCode(0) + signature.toString('binary'))]);
  const b64 = Buffer.from(asn1.toDer(csr).getBytes(), 'binary').toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN CERTIFICATE REQUEST-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END CERTIFICATE REQUEST-----\n`;
}

function pemBody(pem: string, label: string): Buffer {
  const m = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`).exec(pem);
  if (!m) throw new X509Error(`not a PEM ${label.toLowerCase()}`);
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}

/** What the coordinator signs (issue 14: RSA 512 and e = 3 were signed). */
export const KEY_POLICY = 'RSA of at least 2048 bits with exponent 65537, or EC P-256/P-384';

const OID = {
  rsaEncryption: '1.2.840.113549.1.1.1',
  ecPublicKey: '1.2.840.10045.2.1',
  p256: '1.2.840.10045.3.1.7',
  p384: '1.3.132.0.34',
  sha256WithRsa: '1.2.840.113549.1.1.11',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
};
const EC_CURVES: Record<string, { crv: 'P-256' | 'P-384'; bytes: number }> = {
  [OID.p256]: { crv: 'P-256', bytes: 32 },
  [OID.p384]: { crv: 'P-384', bytes: 48 },
};
/** Signature algorithms a CSR may use, per key type: [digest, key type]. */
const SIG_ALGS: Record<string, [string, 'rsa' | 'ec']> = {
  '1.2.840.113549.1.1.11': ['sha256', 'rsa'],
  '1.2.840.113549.1.1.12': ['sha384', 'rsa'],
  '1.2.840.113549.1.1.13': ['sha512', 'rsa'],
  '1.2.840.10045.4.3.2': ['sha256', 'ec'],
  '1.2.840.10045.4.3.3': ['sha384', 'ec'],
  '1.2.840.10045.4.3.4': ['sha512', 'ec'],
};

/** A subject's public key from a verified CSR that meets KEY_POLICY: what a CA certifies. */
export interface SubjectPublicKey {
  type: 'rsa' | 'ec';
  /** RSA: n, e; EC: crv, x, y (base64url). node:crypto loads a JWK 20 times faster than DER. */
  jwk: { kty: 'RSA'; n: string; e: string } | { kty: 'EC'; crv: 'P-256' | 'P-384'; x: string; y: string };
  /** SubjectPublicKeyInfo, DER, re-encoded from the parsed parts (what the certificate carries). */
  spki: Buffer;
}

export interface CsrInfo {
  publicKeyPem: string;
  commonName: string | null;
}

/**
 * Parse a PEM CSR and verify its self-signature (proof of possession of the key). Only the
 * public key should be trusted by a CA; the subject is returned for information.
 */
export function readCsr(pem: string): CsrInfo {
  const { publicKeyPem, commonName } = readCsrKey(pem);
  return { publicKeyPem, commonName };
}

const { Class, Type } = asn1;
const bytesOf = (a: forge.asn1.Asn1): string => (typeof a.value === 'string' ? a.value : '');
const isTag = (a: forge.asn1.Asn1 | undefined, type: number, constructed: boolean): a is forge.asn1.Asn1 => a !== undefined && a.tagClass === Class.UNIVERSAL && a.type === type && a.constructed === constructed;

/** An INTEGER's magnitude, big-endian, without leading zero bytes; null when negative. */
function unsigned(a: forge.asn1.Asn1 | undefined): Buffer | null {
  if (!isTag(a, Type.INTEGER, false)) return null;
  const b = Buffer.from(bytesOf(a), 'binary');
  if (b.length === 0 || (b[0]! & 0x80) !== 0) return null;
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return b.subarray(i);
}

const bitLength = (b: Buffer): number => (b.length === 0 || (b.length === 1 && b[0] === 0) ? 0 : (b.length - 1) * 8 + (32 - Math.clz32(b[0]!)));

/** Strict DER parse; BIT STRINGs kept as bytes (forge's types do not know the options). */
export function parseDer(bytes: Buffer): forge.asn1.Asn1 {
  return (asn1.fromDer as unknown as (b: string, o: object) => forge.asn1.Asn1)(bytes.toString('binary'), { strict: true, parseAllBytes: true, decodeBitStrings: false });
}

function der(a: forge.asn1.Asn1): Buffer {
  return Buffer.from(asn1.toDer(a).getBytes(), 'binary');
}

function derInteger(magnitude: Buffer): forge.asn1.Asn1 {
  const b = (magnitude[0]! & 0x80) !== 0 ? Buffer.concat([Buffer.from([0]), magnitude]) : magnitude;
  return asn1.create(Class.UNIVERSAL, Type.INTEGER, false, b.toString('binary'));
}

const policyError = (what: string) => new X509Error(`the CSR's key is ${what}: the coordinator signs only ${KEY_POLICY}`, 'E_CSR_KEY_POLICY');

/**
 * The subject key of a SubjectPublicKeyInfo, checked against KEY_POLICY from its parsed numbers
 * alone (no key is built for a key that is refused). Re-encoded canonically.
 */
function subjectKey(spki: forge.asn1.Asn1): SubjectPublicKey {
  const [alg, bits] = (Array.isArray(spki.value) ? spki.value : []) as (forge.asn1.Asn1 | undefined)[];
  const algParts = (alg && Array.isArray(alg.value) ? alg.value : []) as forge.asn1.Asn1[];
  if (!isTag(alg, Type.SEQUENCE, true) || !isTag(algParts[0], Type.OID, false) || !isTag(bits, Type.BITSTRING, false) || bytesOf(bits).charCodeAt(0) !== 0) {
    throw new X509Error('CSR cannot be parsed: malformed SubjectPublicKeyInfo');
  }
  const oid = asn1.derToOid(bytesOf(algParts[0]));
  const key = Buffer.from(bytesOf(bits).slice(1), 'binary');
  const oidAsn1 = (o: string) => asn1.create(Class.UNIVERSAL, Type.OID, false, asn1.oidToDer(o).getBytes());
  const spkiOf = (algorithm: forge.asn1.Asn1[], publicKey: Buffer) =>
    der(asn1.create(Class.UNIVERSAL, Type.SEQUENCE, true, [
      asn1.create(Class.UNIVERSAL, Type.SEQUENCE, true, algorithm),
      asn1.create(Class.UNIVERSAL, Type.BITSTRING, false, String.fromCharCode(0) + publicKey.toString('binary')),
    ]));
  if (oid === OID.rsaEncryption) {
    let parts: forge.asn1.Asn1[];
    try {
      const rsaKey = asn1.fromDer(key.toString('binary'));
      parts = isTag(rsaKey, Type.SEQUENCE, true) ? (rsaKey.value as forge.asn1.Asn1[]) : [];
    } catch {
      parts = [];
    }
    const n = unsigned(parts[0]);
    const e = unsigned(parts[1]);
    if (parts.length !== 2 || !n || !e) throw new X509Error('CSR cannot be parsed: malformed RSA public key');
    const eText = e.length <= 6 ? String(e.readUIntBE(0, e.length)) : `of ${bitLength(e)} bits`;
    if (bitLength(n) < 2048 || e.toString('hex') !== '010001') throw policyError(`RSA ${bitLength(n)} bits, exponent ${eText}`);
    const rsaPublicKey = der(asn1.create(Class.UNIVERSAL, Type.SEQUENCE, true, [derInteger(n), derInteger(e)]));
    return {
      type: 'rsa',
      jwk: { kty: 'RSA', n: n.toString('base64url'), e: e.toString('base64url') },
      spki: spkiOf([oidAsn1(OID.rsaEncryption), asn1.create(Class.UNIVERSAL, Type.NULL, false, '')], rsaPublicKey),
    };
  }
  if (oid === OID.ecPublicKey) {
    const curveOid = isTag(algParts[1], Type.OID, false) ? asn1.derToOid(bytesOf(algParts[1])) : null;
    const curve = curveOid ? EC_CURVES[curveOid] : undefined;
    if (!curve) throw policyError(`EC on ${curveOid ? `curve ${curveOid}` : 'explicit curve parameters'}`);
    // Uncompressed point only (0x04 || x || y), what OpenSSL and node:crypto write.
    if (key.length !== 1 + 2 * curve.bytes || key[0] !== 0x04) throw new X509Error(`CSR cannot be parsed: the ${curve.crv} point is not an uncompressed point`);
    return {
      type: 'ec',
      jwk: { kty: 'EC', crv: curve.crv, x: key.subarray(1, 1 + curve.bytes).toString('base64url'), y: key.subarray(1 + curve.bytes).toString('base64url') },
      spki: spkiOf([oidAsn1(OID.ecPublicKey), oidAsn1(curveOid!)], key),
    };
  }
  throw policyError(`of algorithm ${oid}`);
}

/**
 * Parse a PEM CSR, check its key against KEY_POLICY, verify its self-signature (proof of
 * possession). Only the key is to be trusted; the subject's CN is returned for information.
 */
export function readCsrKey(pem: string): CsrInfo & { publicKey: SubjectPublicKey } {
  if (typeof pem !== 'string' || pem.length > 64 * 1024) throw new X509Error('CSR is not a PEM string of reasonable size');
  let csr: forge.asn1.Asn1;
  let bytes: Buffer;
  try {
    bytes = pemBody(pem, 'CERTIFICATE REQUEST');
    csr = parseDer(bytes);
  } catch (e) {
    throw new X509Error(`CSR cannot be parsed: ${(e as Error).message}`);
  }
  // DER only: the signed bytes are then exactly the re-encoded CertificationRequestInfo.
  if (!der(csr).equals(bytes)) throw new X509Error('CSR cannot be parsed: not DER');
  const [info, sigAlg, sig] = (Array.isArray(csr.value) ? csr.value : []) as (forge.asn1.Asn1 | undefined)[];
  const infoParts = (info && Array.isArray(info.value) ? info.value : []) as forge.asn1.Asn1[];
  const sigOid = sigAlg && Array.isArray(sigAlg.value) && isTag(sigAlg.value[0], Type.OID, false) ? asn1.derToOid(bytesOf(sigAlg.value[0])) : null;
  if (!isTag(csr, Type.SEQUENCE, true) || (csr.value as unknown[]).length !== 3 || !isTag(info, Type.SEQUENCE, true) || infoParts.length < 3
    || !isTag(infoParts[1], Type.SEQUENCE, true) || !isTag(infoParts[2], Type.SEQUENCE, true) || !isTag(sig, Type.BITSTRING, false) || sigOid === null) {
    throw new X509Error('CSR cannot be parsed: not a PKCS#10 certification request');
  }
  const publicKey = subjectKey(infoParts[2]);
  const alg = SIG_ALGS[sigOid];
  if (!alg || alg[1] !== publicKey.type) throw new X509Error(`CSR signature algorithm ${sigOid} is not ${publicKey.type === 'rsa' ? 'RSA' : 'ECDSA'} with SHA-2`);
  const key = createPublicKey({ key: publicKey.jwk, format: 'jwk' });
  const signature = Buffer.from(bytesOf(sig).slice(1), 'binary');
  const ok = cryptoVerify(alg[0], der(info), publicKey.type === 'rsa' ? { key, padding: constants.RSA_PKCS1_PADDING } : key, signature);
  if (!ok) throw new X509Error('CSR signature does not verify: the request was not signed by the key it carries');
  let commonName: string | null = null;
  try {
    const attrs = (pki as unknown as { RDNAttributesAsArray(a: forge.asn1.Asn1): { shortName?: string; value: string; valueTagClass: number }[] }).RDNAttributesAsArray(infoParts[1]);
    const cn = attrs.filter((a) => a.shortName === 'CN').at(-1);
    if (cn) commonName = cn.valueTagClass === Type.UTF8 ? forge.util.decodeUtf8(cn.value) : cn.value;
  } catch {
    // informational only
  }
  let pemCache: string | undefined;
  return {
    publicKey,
    // Computed on demand: a CA issuing from the CSR needs only the parsed key.
    get publicKeyPem() {
      pemCache ??= key.export({ type: 'spki', format: 'pem' }).toString();
      return pemCache;
    },
    commonName,
  };
}

export interface CertInfo {
  /** hex, lower case, no colons, no leading zero bytes beyond what DER keeps */
  serial: string;
  notBefore: Date;
  notAfter: Date;
  commonName: string | null;
  dnsNames: string[];
  /** Normalised text form (IPv6 compressed, lower case). */
  ipAddresses: string[];
  uris: string[];
  issuerCommonName: string | null;
  /** sha256 of the DER, hex lower case, no colons */
  fingerprint256: string;
  isCa: boolean;
  /** Extended key usages by name: serverAuth, clientAuth, ... */
  extKeyUsage: string[];
  /** The certified key's type, when one pgaccord makes (see KEY_TYPES). */
  keyType: KeyType | null;
}

/** Canonical text of an IP address (IPv6 compressed and lower case). */
export function normaliseIp(ip: string): string {
  const family = isIP(ip);
  if (family === 4) return ip;
  if (family === 6) return new URL(`http://[${ip}]/`).hostname.slice(1, -1);
  return ip;
}

/** One attribute of a parsed distinguished name (node gives the unescaped values here). */
function dnField(dn: Record<string, string | string[]> | undefined, field: string): string | null {
  const v = dn?.[field];
  if (v === undefined) return null;
  return Array.isArray(v) ? (v[v.length - 1] ?? null) : v;
}

/** Split a subjectAltName string as node prints it: `DNS:a, IP Address:1.2.3.4, URI:x`. */
function parseSan(san: string | undefined): { dns: string[]; ip: string[]; uri: string[] } {
  const out = { dns: [] as string[], ip: [] as string[], uri: [] as string[] };
  if (!san) return out;
  // node quotes entries containing special characters as JSON strings.
  const re = /(DNS|IP Address|URI|email|othername|DirName|Registered ID):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/g;
  for (const m of san.matchAll(re)) {
    const value = m[2]!.startsWith('"') ? (JSON.parse(m[2]!) as string) : m[2]!;
    if (m[1] === 'DNS') out.dns.push(value);
    else if (m[1] === 'IP Address') out.ip.push(normaliseIp(value));
    else if (m[1] === 'URI') out.uri.push(value);
  }
  return out;
}

const EKU_NAMES: Record<string, string> = {
  '1.3.6.1.5.5.7.3.1': 'serverAuth',
  '1.3.6.1.5.5.7.3.2': 'clientAuth',
  '1.3.6.1.5.5.7.3.3': 'codeSigning',
  '1.3.6.1.5.5.7.3.4': 'emailProtection',
  '1.3.6.1.5.5.7.3.8': 'timeStamping',
  '1.3.6.1.5.5.7.3.9': 'OCSPSigning',
};

function x509(pem: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (e) {
    throw new X509Error(`not a valid certificate: ${(e as Error).message}`);
  }
}

export function certInfo(pem: string): CertInfo {
  const c = x509(pem);
  const san = parseSan(c.subjectAltName);
  const legacy = c.toLegacyObject() as unknown as { subject?: Record<string, string | string[]>; issuer?: Record<string, string | string[]> };
  return {
    serial: c.serialNumber.toLowerCase().replace(/:/g, ''),
    notBefore: new Date(c.validFrom),
    notAfter: new Date(c.validTo),
    commonName: dnField(legacy.subject, 'CN'),
    dnsNames: san.dns,
    ipAddresses: san.ip,
    uris: san.uri,
    issuerCommonName: dnField(legacy.issuer, 'CN'),
    fingerprint256: c.fingerprint256.replace(/:/g, '').toLowerCase(),
    isCa: c.ca,
    extKeyUsage: (c.keyUsage ?? []).map((oid) => EKU_NAMES[oid] ?? oid),
    keyType: keyTypeOf(c.publicKey),
  };
}

/**
 * An id of a public key (SHA-256 of its JWK numbers: RSA n.e, EC crv.x.y), the same whether the
 * key comes from a certificate (PEM) or a CSR: certificates that share a key share a fate.
 */
export function publicKeyId(key: SubjectPublicKey | string): string {
  const jwk = (typeof key === 'string' ? new X509Certificate(key).publicKey.export({ format: 'jwk' }) : key.jwk) as { kty?: string; n?: string; e?: string; crv?: string; x?: string; y?: string };
  const text = jwk.kty === 'RSA' ? `${jwk.n}.${jwk.e}` : jwk.kty === 'EC' ? `${jwk.crv}.${jwk.x}.${jwk.y}` : null;
  if (text === null) throw new X509Error(`no key id for a ${jwk.kty ?? 'unknown'} key`);
  return createHash('sha256').update(text).digest('hex');
}

/** sha256 fingerprint of a certificate's DER, hex lower case: what a join token pins. */
export function fingerprint256(pem: string): string {
  return x509(pem).fingerprint256.replace(/:/g, '').toLowerCase();
}

export function certMatchesKey(certPem: string, privateKeyPem: string): boolean {
  try {
    return x509(certPem).checkPrivateKey(createPrivateKey(privateKeyPem));
  } catch {
    return false;
  }
}

/** True when the certificate was issued and signed by one of the CA certificates in the bundle. */
export function verifiesAgainst(certPem: string, caBundlePem: string): boolean {
  let cert: X509Certificate;
  try {
    cert = x509(certPem);
  } catch {
    return false;
  }
  for (const caPem of splitPemBundle(caBundlePem)) {
    try {
      const ca = new X509Certificate(caPem);
      if (ca.ca && cert.checkIssued(ca) && cert.verify(ca.publicKey)) return true;
    } catch {
      // not a certificate: skip
    }
  }
  return false;
}

/** The certificates of a PEM bundle, each as its own PEM block ending in a newline. */
export function splitPemBundle(pem: string): string[] {
  return [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)].map((m) => `${m[0]}\n`);
}
