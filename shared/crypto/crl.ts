// Reading X.509 CRLs (RFC 5280 5.1) with forge's ASN.1 parser: times, CRL number, revoked
// serials, and whether a CA of a bundle signed it. The coordinator builds them (coordinator/ca/ca.ts
// issueCrl); the agent reads them to refuse an expired one, to stop using a revoked pair and to
// end the sessions that authenticated with a revoked certificate.
import { constants, verify as cryptoVerify, X509Certificate } from 'node:crypto';
import forge from 'node-forge';
import { splitPemBundle } from './x509.ts';
import { CodedError } from '../contract/problem.ts';
import { Memo } from './memo.ts';

const { asn1 } = forge;

export interface CrlInfo {
  thisUpdate: Date;
  nextUpdate: Date | null;
  /** CRL number extension, when present. */
  number: bigint | null;
  /** Revoked serials, hex lower case without leading zero bytes (as certInfo().serial). */
  revoked: { serial: string; revokedAt: Date }[];
}

export class CrlError extends CodedError {
  constructor(message: string) {
    super('E_CRL_INVALID', message);
  }
}

function der(pem: string): Buffer {
  const m = /-----BEGIN X509 CRL-----([A-Za-z0-9+/=\s]+)-----END X509 CRL-----/.exec(pem);
  if (!m) throw new CrlError('not a PEM X509 CRL');
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}

function isTime(a: forge.asn1.Asn1): boolean {
  return a.tagClass === asn1.Class.UNIVERSAL && (a.type === asn1.Type.UTCTIME || a.type === asn1.Type.GENERALIZEDTIME);
}

function toDate(a: forge.asn1.Asn1): Date {
  return a.type === asn1.Type.UTCTIME ? asn1.utcTimeToDate(a.value as string) : asn1.generalizedTimeToDate(a.value as string);
}

/** Hex of a DER INTEGER's content as certInfo prints serials (leading 00 sign bytes dropped). */
export function serialHex(bytes: string): string {
  let h = forge.util.bytesToHex(bytes).toLowerCase();
  while (h.length > 2 && h.startsWith('00')) h = h.slice(2);
  return h;
}

/** Normalise a serial written in hex (any case, colons, leading zeros) to certInfo's form. */
export function normaliseSerial(hex: string): string {
  let h = hex.toLowerCase().replace(/:/g, '');
  if (h.length % 2) h = `0${h}`;
  while (h.length > 2 && h.startsWith('00')) h = h.slice(2);
  return h;
}

function parse(pem: string): { list: forge.asn1.Asn1[]; tbs: forge.asn1.Asn1[]; der: Buffer } {
  const bytes = der(pem);
  let root: forge.asn1.Asn1;
  try {
    root = asn1.fromDer(bytes.toString('binary'));
  } catch (e) {
    throw new CrlError(`CRL cannot be parsed: ${(e as Error).message}`);
  }
  const list = root.value as forge.asn1.Asn1[];
  if (!Array.isArray(list) || list.length !== 3 || !Array.isArray(list[0]!.value)) throw new CrlError('not a CertificateList');
  return { list, tbs: list[0]!.value as forge.asn1.Asn1[], der: bytes };
}

/**
 * The CRLs of a PEM file, each as its own block. During a CA rotation the cluster publishes one
 * CRL per CA in one file (OpenSSL's X509_STORE_load_locations, used by the server's ssl_crl_file
 * and libpq's sslcrl, loads every CRL of a file).
 */
export function splitCrls(pem: string): string[] {
  return [...pem.matchAll(/-----BEGIN X509 CRL-----[\s\S]+?-----END X509 CRL-----/g)].map((m) => `${m[0]}\n`);
}

/**
 * What a CRL file says. Several CRLs (one per CA, during a rotation) are read as one: the latest
 * thisUpdate, the earliest nextUpdate (the file is unusable once any of them expires), the
 * highest number and every revoked serial.
 */
export function crlInfo(pem: string): CrlInfo {
  const i = crlMemo.info.get([pem], () => readCrlInfo(pem));
  return { ...i, thisUpdate: new Date(i.thisUpdate), nextUpdate: i.nextUpdate && new Date(i.nextUpdate), revoked: i.revoked.map((r) => ({ serial: r.serial, revokedAt: new Date(r.revokedAt) })) };
}

/** Read CRLs and checked signatures (./memo.ts): an agent judges the same CRL on every pass (forge parses it in JS). */
export const crlMemo = { info: new Memo<CrlInfo>(), signatures: new Memo<boolean>() };

function readCrlInfo(pem: string): CrlInfo {
  const blocks = splitCrls(pem);
  if (blocks.length <= 1) return oneCrlInfo(pem);
  const all = blocks.map(oneCrlInfo);
  const nexts = all.map((x) => x.nextUpdate).filter((x): x is Date => x !== null);
  const numbers = all.map((x) => x.number).filter((x): x is bigint => x !== null);
  return {
    thisUpdate: new Date(Math.max(...all.map((x) => x.thisUpdate.getTime()))),
    nextUpdate: nexts.length > 0 ? new Date(Math.min(...nexts.map((x) => x.getTime()))) : null,
    number: numbers.length > 0 ? numbers.reduce((a, b) => (a > b ? a : b)) : null,
    revoked: all.flatMap((x) => x.revoked),
  };
}

function oneCrlInfo(pem: string): CrlInfo {
  const { tbs } = parse(pem);
  let i = 0;
  if (tbs[i]?.type === asn1.Type.INTEGER && tbs[i]?.tagClass === asn1.Class.UNIVERSAL) i++; // version
  i += 2; // signature, issuer
  const thisUpdate = tbs[i];
  if (!thisUpdate || !isTime(thisUpdate)) throw new CrlError('CRL has no thisUpdate');
  i++;
  let nextUpdate: Date | null = null;
  if (tbs[i] && isTime(tbs[i]!)) nextUpdate = toDate(tbs[i++]!);
  const revoked: CrlInfo['revoked'] = [];
  if (tbs[i] && tbs[i]!.tagClass === asn1.Class.UNIVERSAL && tbs[i]!.type === asn1.Type.SEQUENCE) {
    for (const entry of tbs[i]!.value as forge.asn1.Asn1[]) {
      const [serial, when] = entry.value as forge.asn1.Asn1[];
      revoked.push({ serial: serialHex(serial!.value as string), revokedAt: toDate(when!) });
    }
    i++;
  }
  let number: bigint | null = null;
  const ext = tbs[i];
  if (ext && ext.tagClass === asn1.Class.CONTEXT_SPECIFIC && ext.type === 0) {
    for (const e of (ext.value as forge.asn1.Asn1[])[0]!.value as forge.asn1.Asn1[]) {
      const parts = e.value as forge.asn1.Asn1[];
      if (asn1.derToOid(parts[0]!.value as string) !== '2.5.29.20') continue;
      const inner = asn1.fromDer(parts[parts.length - 1]!.value as string);
      number = BigInt(`0x${forge.util.bytesToHex(inner.value as string) || '0'}`);
    }
  }
  return { thisUpdate: toDate(thisUpdate), nextUpdate, number, revoked };
}

/** One DER element at `start`: where its content begins and where it ends. */
function derElement(der: Buffer, start: number): { start: number; contentStart: number; end: number } {
  let i = start + 1;
  const first = der[i++];
  if (first === undefined) throw new CrlError('truncated DER');
  let length = first;
  if (first & 0x80) {
    const n = first & 0x7f;
    if (n === 0 || n > 4) throw new CrlError('unsupported DER length');
    length = 0;
    for (let k = 0; k < n; k++) length = length * 256 + (der[i++] ?? 0);
  }
  if (i + length > der.length) throw new CrlError('truncated DER');
  return { start, contentStart: i, end: i + length };
}

/** True when one CA certificate of the bundle signed this CRL (RSA, SHA-256); for a file of several CRLs, each of them. */
export function crlSignedBy(pem: string, caBundlePem: string): boolean {
  return crlMemo.signatures.get([pem, caBundlePem], () => signedBy(pem, caBundlePem));
}

function signedBy(pem: string, caBundlePem: string): boolean {
  const blocks = splitCrls(pem);
  if (blocks.length > 1) return blocks.every((b) => signedBy(b, caBundlePem));
  let parsed;
  try {
    parsed = parse(pem);
  } catch {
    return false;
  }
  // The signed bytes exactly as they are in the file: a parse-and-re-encode round trip need not
  // reproduce another issuer's DER (openssl's, say) byte for byte.
  const outer = derElement(parsed.der, 0);
  const tbs = derElement(parsed.der, outer.contentStart);
  const algorithm = derElement(parsed.der, tbs.end);
  const signature = derElement(parsed.der, algorithm.end);
  const tbsDer = parsed.der.subarray(tbs.start, tbs.end);
  const sig = parsed.der.subarray(signature.contentStart + 1, signature.end); // BIT STRING: skip the unused-bits byte
  for (const caPem of splitPemBundle(caBundlePem)) {
    try {
      const ca = new X509Certificate(caPem);
      if (cryptoVerify('sha256', tbsDer, { key: ca.publicKey, padding: constants.RSA_PKCS1_PADDING }, sig)) return true;
    } catch {
      // not this one
    }
  }
  return false;
}

/** Revoked serials of a CRL as a set (empty for null). */
export function revokedSerials(pem: string | null | undefined): Set<string> {
  if (!pem) return new Set();
  return new Set(crlInfo(pem).revoked.map((r) => r.serial));
}
