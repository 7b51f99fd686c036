// PKCS#10 CSRs: made by a node for its key, read by the coordinator, which checks the key against
// its policy and the self-signature before it certifies anything. node-forge builds and parses the
// ASN.1; node:crypto signs and verifies.
import { constants, createHash, createPrivateKey, createPublicKey, sign as cryptoSign, verify as cryptoVerify, X509Certificate } from 'node:crypto';
import forge from 'node-forge';
import { X509Error } from './x509.ts';

const { pki, asn1 } = forge;

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
    seq([asn1.create(Class.UNIVERSAL, Type.SET, true, [
      seq([oid(pki.oids.commonName!), asn1.create(Class.UNIVERSAL, Type.UTF8, false, forge.util.encodeUtf8(commonName))]),
    ])]),
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
const isTag = (a: forge.asn1.Asn1 | undefined, type: number, constructed: boolean): a is forge.asn1.Asn1 =>
  a !== undefined && a.tagClass === Class.UNIVERSAL && a.type === type && a.constructed === constructed;

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
  const fromDer = asn1.fromDer as unknown as (b: string, o: object) => forge.asn1.Asn1;
  return fromDer(bytes.toString('binary'), { strict: true, parseAllBytes: true, decodeBitStrings: false });
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
  if (!alg || alg[1] !== publicKey.type) {
    throw new X509Error(`CSR signature algorithm ${sigOid} is not ${publicKey.type === 'rsa' ? 'RSA' : 'ECDSA'} with SHA-2`);
  }
  const key = createPublicKey({ key: publicKey.jwk, format: 'jwk' });
  const signature = Buffer.from(bytesOf(sig).slice(1), 'binary');
  const ok = cryptoVerify(alg[0], der(info), publicKey.type === 'rsa' ? { key, padding: constants.RSA_PKCS1_PADDING } : key, signature);
  if (!ok) throw new X509Error('CSR signature does not verify: the request was not signed by the key it carries');
  let commonName: string | null = null;
  try {
    type Rdn = { shortName?: string; value: string; valueTagClass: number };
    const attrs = (pki as unknown as { RDNAttributesAsArray(a: forge.asn1.Asn1): Rdn[] }).RDNAttributesAsArray(infoParts[1]);
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

/**
 * An id of a public key (SHA-256 of its JWK numbers: RSA n.e, EC crv.x.y), the same whether the
 * key comes from a certificate (PEM) or a CSR: certificates that share a key share a fate.
 */
export function publicKeyId(key: SubjectPublicKey | string): string {
  type Jwk = { kty?: string; n?: string; e?: string; crv?: string; x?: string; y?: string };
  const jwk = (typeof key === 'string' ? new X509Certificate(key).publicKey.export({ format: 'jwk' }) : key.jwk) as Jwk;
  const text = jwk.kty === 'RSA' ? `${jwk.n}.${jwk.e}` : jwk.kty === 'EC' ? `${jwk.crv}.${jwk.x}.${jwk.y}` : null;
  if (text === null) throw new X509Error(`no key id for a ${jwk.kty ?? 'unknown'} key`);
  return createHash('sha256').update(text).digest('hex');
}
