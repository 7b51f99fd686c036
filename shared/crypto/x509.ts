// X.509 certificates, read: what a certificate says (serial, names, validity, key type), whether
// it matches a key and which CA of a bundle issued it. node:crypto parses; nothing here signs.
// Keys: ./keys.ts; CSRs and the key policy: ./csr.ts.
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import type { KeyType } from './key-types.ts';
import { CodedError } from '../contract/problem.ts';
import { Memo } from './memo.ts';

export class X509Error extends CodedError {
  /** E_CSR_KEY_POLICY: a well-formed CSR whose key the policy refuses. */
  declare readonly code: 'E_X509' | 'E_CSR_KEY_POLICY';
  constructor(message: string, code: 'E_X509' | 'E_CSR_KEY_POLICY' = 'E_X509') {
    super(code, message);
  }
}

/** The KeyType of a key or certificate's public key, or null for one pgaccord does not make. */
export function keyTypeOf(key: KeyObject): KeyType | null {
  const d = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'rsa' && d?.modulusLength === 2048) return 'rsa-2048';
  if (key.asymmetricKeyType === 'ec' && d?.namedCurve === 'prime256v1') return 'ecdsa-p256';
  return null;
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

/**
 * The CN of a name as node prints it (X509Certificate's subject or issuer: an RDN a line, a
 * multi-valued RDN's attributes joined by " + ", values RFC 2253-escaped and control characters as
 * \XX, so neither separator occurs inside a value): no toLegacyObject() (~0.3 ms a certificate).
 */
function nameCommonName(text: string | undefined): string | null {
  if (typeof text !== 'string') return null;
  let cn: string | null = null;
  for (const rdn of text.split('\n')) {
    for (const a of rdn.split(' + ')) {
      if (!a.startsWith('CN=')) continue;
      // The rule: exactly one CN attribute in the whole name (in any RDN), else null: none, or two (which one names the holder is ambiguous, so refuse).
      if (cn !== null) return null;
      cn = a.slice(3);
    }
  }
  return cn !== null && cn.includes('\\') ? cn.replace(/\\([0-9A-F]{2}|[\s\S])/g, (_, e: string) => (e.length === 2 ? String.fromCharCode(parseInt(e, 16)) : e)) : cn;
}

/** A certificate's subject CN: the value of its one CN attribute, unescaped; null when it has none or several. */
export const commonNameOf = (c: X509Certificate): string | null => nameCommonName(c.subject);

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

/** Parsed certificates' infos, checked pairs and chains (./memo.ts): an agent's pass sees the same files again. */
export const x509Memo = { info: new Memo<CertInfo>(), pairs: new Memo<boolean>(), chains: new Memo<boolean>() };

/** What a certificate says. Each call returns its own copy (a caller may change it). */
export function certInfo(pem: string): CertInfo {
  const i = x509Memo.info.get([pem], () => parseCertInfo(pem));
  return { ...i, notBefore: new Date(i.notBefore), notAfter: new Date(i.notAfter), dnsNames: [...i.dnsNames], ipAddresses: [...i.ipAddresses], uris: [...i.uris], extKeyUsage: [...i.extKeyUsage] };
}

/** A certificate's serial as pgaccord writes it: hex, lower case, no colons. */
export const serialOf = (c: X509Certificate): string => c.serialNumber.toLowerCase().replace(/:/g, '');

/** A certificate's subjectAltName entries pgaccord reads (DNS names, IP addresses normalised, URIs). */
export const sanOf = (c: X509Certificate) => parseSan(c.subjectAltName);

function parseCertInfo(pem: string): CertInfo {
  const c = x509(pem);
  const san = sanOf(c);
  return {
    serial: serialOf(c),
    notBefore: new Date(c.validFrom),
    notAfter: new Date(c.validTo),
    commonName: commonNameOf(c),
    dnsNames: san.dns,
    ipAddresses: san.ip,
    uris: san.uri,
    issuerCommonName: nameCommonName(c.issuer),
    fingerprint256: c.fingerprint256.replace(/:/g, '').toLowerCase(),
    isCa: c.ca,
    extKeyUsage: (c.keyUsage ?? []).map((oid) => EKU_NAMES[oid] ?? oid),
    keyType: keyTypeOf(c.publicKey),
  };
}

/** sha256 fingerprint of a certificate's DER, hex lower case: what a join token pins. */
export function fingerprint256(pem: string): string {
  return x509(pem).fingerprint256.replace(/:/g, '').toLowerCase();
}

export function certMatchesKey(certPem: string, privateKeyPem: string): boolean {
  return x509Memo.pairs.get([certPem, privateKeyPem], () => matches(certPem, privateKeyPem));
}

function matches(certPem: string, privateKeyPem: string): boolean {
  try {
    return x509(certPem).checkPrivateKey(createPrivateKey(privateKeyPem));
  } catch {
    return false;
  }
}

/** True when the certificate was issued and signed by one of the CA certificates in the bundle. */
export function verifiesAgainst(certPem: string, caBundlePem: string): boolean {
  return x509Memo.chains.get([certPem, caBundlePem], () => chains(certPem, caBundlePem));
}

function chains(certPem: string, caBundlePem: string): boolean {
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
