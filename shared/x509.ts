// X.509 helpers shared by coordinator and agent. node-forge builds and parses the ASN.1
// structures; keys are generated and every signature is computed and verified with node:crypto
// (forge's pure-JavaScript RSA is about 60 times slower than OpenSSL's).
import { constants, createHash, createPrivateKey, createPublicKey, generateKeyPair, sign as cryptoSign, verify as cryptoVerify, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import forge from 'node-forge';

const { pki, asn1 } = forge;

export class X509Error extends Error {
  readonly code = 'E_X509';
}

/** A fresh RSA 2048 key, PKCS#8 PEM, from OpenSSL. */
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

/** A PKCS#10 certificate signing request for the key, subject CN=commonName, PEM. */
export function createCsr(privateKeyPem: string, commonName: string): string {
  const csr = pki.createCertificationRequest();
  csr.publicKey = forgePublicKeyFromPem(privateKeyPem);
  csr.setSubject([{ name: 'commonName', value: commonName, valueTagClass: asn1.Type.UTF8 as unknown as forge.asn1.Class }]);
  nativeSign(csr, privateKeyPem);
  return pki.certificationRequestToPem(csr).replace(/\r\n/g, '\n');
}

function pemBody(pem: string, label: string): Buffer {
  const m = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`).exec(pem);
  if (!m) throw new X509Error(`not a PEM ${label.toLowerCase()}`);
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}

const SIG_ALGS: Record<string, string> = {
  [pki.oids.sha256WithRSAEncryption!]: 'sha256',
  [pki.oids.sha384WithRSAEncryption!]: 'sha384',
  [pki.oids.sha512WithRSAEncryption!]: 'sha512',
};

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

/** readCsr, also returning forge's key object (what a CA built on forge needs). */
export function readCsrKey(pem: string): CsrInfo & { publicKey: forge.pki.rsa.PublicKey } {
  if (typeof pem !== 'string' || pem.length > 64 * 1024) throw new X509Error('CSR is not a PEM string of reasonable size');
  let der: Buffer;
  let csr: forge.pki.CertificateSigningRequest;
  try {
    der = pemBody(pem, 'CERTIFICATE REQUEST');
    csr = pki.certificationRequestFromAsn1(asn1.fromDer(der.toString('binary')), true);
  } catch (e) {
    throw new X509Error(`CSR cannot be parsed: ${(e as Error).message}`);
  }
  const cri = (csr as unknown as { certificationRequestInfo: forge.asn1.Asn1 }).certificationRequestInfo;
  const sigOid = (csr as unknown as { signatureOid: string }).signatureOid;
  const alg = SIG_ALGS[sigOid];
  if (!alg) throw new X509Error('CSR signature algorithm is not RSA with SHA-2');
  if (!csr.publicKey) throw new X509Error('CSR has no RSA public key');
  const publicKey = csr.publicKey as forge.pki.rsa.PublicKey;
  const signature = Buffer.from((csr as unknown as { signature: string }).signature, 'binary');
  const tbs = Buffer.from(asn1.toDer(cri).getBytes(), 'binary');
  // From the modulus and exponent as JWK: OpenSSL 3's PEM decoder costs 10x the verification.
  const key = createPublicKey({ key: { kty: 'RSA', n: bigIntegerB64u(publicKey.n), e: bigIntegerB64u(publicKey.e) }, format: 'jwk' });
  const ok = cryptoVerify(alg, tbs, { key, padding: constants.RSA_PKCS1_PADDING }, signature);
  if (!ok) throw new X509Error('CSR signature does not verify: the request was not signed by the key it carries');
  const cn = csr.subject.getField('CN') as { value: string } | null;
  let pemCache: string | undefined;
  return {
    publicKey,
    // Computed on demand: a CA issuing from the CSR needs only forge's key object.
    get publicKeyPem() {
      pemCache ??= pki.publicKeyToPem(publicKey);
      return pemCache;
    },
    commonName: cn ? String(cn.value) : null,
  };
}

function bigIntegerB64u(n: forge.jsbn.BigInteger): string {
  let hex = n.toString(16);
  if (hex.length % 2) hex = `0${hex}`;
  return Buffer.from(hex, 'hex').toString('base64url');
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
  };
}

/** sha256 fingerprint of a certificate's DER, hex lower case: what a join token pins. */
/**
 * An id of an RSA public key (SHA-256 of its JWK modulus and exponent), the same whether the key
 * comes from a certificate (PEM) or a CSR: certificates that share a key share a fate.
 */
export function rsaKeyId(key: forge.pki.rsa.PublicKey | string): string {
  const { n, e } = typeof key === 'string' ? (new X509Certificate(key).publicKey.export({ format: 'jwk' }) as { n: string; e: string }) : { n: bigIntegerB64u(key.n), e: bigIntegerB64u(key.e) };
  return createHash('sha256').update(`${n}.${e}`).digest('hex');
}

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
