// Certificate authorities: the per-cluster CAs and the coordinator's own CA (its server
// certificate and agent identities). forge's ASN.1 tools build the X.509 structures; OpenSSL,
// through node:crypto, makes the keys and computes the signatures.
import { createHash, createPrivateKey, randomBytes, sign as cryptoSign, type KeyObject } from 'node:crypto';
import forge from 'node-forge';
import { parseDer, type SubjectPublicKey } from '../../shared/crypto/csr.ts';
import { forgePublicKeyFromPem, generateRsaKey, nativeSign } from '../../shared/crypto/keys.ts';

const { pki, asn1 } = forge;
const { Class, Type } = asn1;

/** PEM of DER, encoded with Buffer (forge's base64 is slow) and LF line ends like OpenSSL's. */
function pem(label: string, der: Buffer): string {
  const b64 = der.toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

const certPem = (cert: forge.pki.Certificate) => pem('CERTIFICATE', Buffer.from(asn1.toDer(pki.certificateToAsn1(cert)).getBytes(), 'binary'));
const seq = (value: forge.asn1.Asn1[]) => asn1.create(Class.UNIVERSAL, Type.SEQUENCE, true, value);
const oid = (o: string) => asn1.create(Class.UNIVERSAL, Type.OID, false, asn1.oidToDer(o).getBytes());
const toDer = (a: forge.asn1.Asn1) => asn1.toDer(a).getBytes();
/** A positive INTEGER from hex (minimal, with a leading zero byte when the high bit is set). */
function int(hex: string): forge.asn1.Asn1 {
  let h = hex.length % 2 ? `0${hex}` : hex;
  h = h.replace(/^(00)+(?=[0-9a-f]{2})/, '');
  if (parseInt(h.slice(0, 2), 16) & 0x80) h = `00${h}`;
  return asn1.create(Class.UNIVERSAL, Type.INTEGER, false, forge.util.hexToBytes(h));
}
/** UTCTime until 2049, GeneralizedTime after (RFC 5280 4.1.2.5). */
const time = (d: Date) => d.getUTCFullYear() < 2050
  ? asn1.create(Class.UNIVERSAL, Type.UTCTIME, false, asn1.dateToUtcTime(d))
  : asn1.create(Class.UNIVERSAL, Type.GENERALIZEDTIME, false, asn1.dateToGeneralizedTime(d));
const SHA256_WITH_RSA = () => seq([oid(pki.oids.sha256WithRSAEncryption!), asn1.create(Class.UNIVERSAL, Type.NULL, false, '')]);

export const CA_LIFETIME_S = 10 * 365 * 86400;
export const BACKDATE_S = 5 * 60;
const UTF8 = asn1.Type.UTF8 as unknown as forge.asn1.Class;

/** Positive 16-byte serial: first byte in 0x01..0x7f, so DER keeps all 16 bytes and the sign is +. */
export function randomSerial(random: (n: number) => Buffer = randomBytes): string {
  const b = random(16);
  b[0] = (b[0]! & 0x7f) || 0x01;
  return b.toString('hex');
}

export interface LeafRequest {
  /**
   * The serial (hex, as randomSerial makes it), allocated by the caller with the rest of the
   * record it stores; made here when absent. The signing pool always passes one.
   */
  serial?: string;
  /**
   * The subject's public key: from a verified CSR that met the key policy (readCsrKey), or a
   * forge RSA key the caller made itself. Nothing else from a CSR is used.
   */
  publicKey: SubjectPublicKey | forge.pki.rsa.PublicKey;
  commonName: string;
  dnsNames?: string[];
  ipAddresses?: string[];
  uris?: string[];
  usage: 'server' | 'client';
  lifetimeSeconds: number;
  now: Date;
}

export interface CrlRequest {
  /** Serials (hex) and when they were revoked. */
  revoked: { serial: string; revokedAt: Date }[];
  /** Monotonic CRL number (RFC 5280 5.2.3). */
  number: number;
  thisUpdate: Date;
  nextUpdate: Date;
}

export interface IssuedCertificate {
  pem: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export class CertificateAuthority {
  readonly certPem: string;
  readonly notAfter: Date;
  /** sha256 of the certificate PEM: names this CA (and its key) to the signing pool's workers. */
  readonly id: string;
  readonly #cert: forge.pki.Certificate;
  readonly #key: KeyObject;
  readonly #ski: string;
  /** The CA's subject, byte for byte from its certificate: the issuer of what it signs. */
  readonly #subjectDer: string;

  /** The CA's notBefore (its lifetime is notAfter - notBefore). */
  get notBefore(): Date {
    return this.#cert.validity.notBefore;
  }

  /** `key`: PEM, or a KeyObject (what a signing-pool worker receives over its MessagePort). */
  constructor(certPem: string, key: string | KeyObject) {
    this.certPem = certPem;
    this.id = createHash('sha256').update(certPem).digest('hex');
    this.#cert = pki.certificateFromPem(certPem);
    this.#key = typeof key === 'string' ? createPrivateKey(key) : key;
    this.notAfter = this.#cert.validity.notAfter;
    this.#ski = this.#cert.generateSubjectKeyIdentifier().getBytes();
    const tbsCert = (pki.certificateToAsn1(this.#cert).value as forge.asn1.Asn1[])[0]!;
    this.#subjectDer = toDer((tbsCert.value as forge.asn1.Asn1[])[5]!);
  }

  /**
   * What a signing-pool worker needs to sign as this CA: the certificate and the private key
   * object, cloned in memory through postMessage (never serialised to text, never written).
   */
  signingMaterial(): { certPem: string; key: KeyObject } {
    return { certPem: this.certPem, key: this.#key };
  }

  /**
   * Create a self-signed CA (RSA 2048, 10 years unless told otherwise). pathLenConstraint 0: it
   * certifies leaves only, so a CA certificate it signed by mistake (or with a stolen key) cannot
   * start a chain that OpenSSL accepts. CAs created before this keep their extensions.
   */
  static async create(commonName: string, now: Date, lifetimeSeconds = CA_LIFETIME_S): Promise<{ ca: CertificateAuthority; keyPem: string }> {
    const { privateKeyPem } = await generateRsaKey();
    const cert = pki.createCertificate();
    cert.publicKey = forgePublicKeyFromPem(privateKeyPem);
    cert.serialNumber = randomSerial();
    cert.validity.notBefore = new Date(now.getTime() - BACKDATE_S * 1000);
    cert.validity.notAfter = new Date(now.getTime() + lifetimeSeconds * 1000);
    const subject = [{ name: 'commonName', value: commonName, valueTagClass: UTF8 }];
    cert.setSubject(subject);
    cert.setIssuer(subject);
    cert.setExtensions([
      { name: 'basicConstraints', cA: true, pathLenConstraint: 0, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
      { name: 'subjectKeyIdentifier' },
    ]);
    nativeSign(cert, privateKeyPem);
    const pem = certPem(cert);
    return { ca: new CertificateAuthority(pem, privateKeyPem), keyPem: privateKeyPem };
  }

  /**
   * Issue a leaf. Subject, SANs, key usage and lifetime come from the caller's records, never
   * from a CSR. No leaf outlives its CA.
   */
  issue(req: LeafRequest): IssuedCertificate {
    if (req.serial !== undefined && !/^(?!00)[0-7][0-9a-f]{31}$/.test(req.serial)) throw new Error('serial: not a positive 16-byte serial in hex');
    const serial = req.serial ?? randomSerial();
    // Backdated for clock skew, but never by more than a twentieth of the lifetime: the renewal
    // schedule (2/3 of notAfter - notBefore) must stay ahead of the issue time for short lifetimes
    // (a 2-minute certificate backdated 5 minutes would be due for renewal the moment it is issued).
    const backdateMs = Math.min(BACKDATE_S * 1000, Math.floor((req.lifetimeSeconds * 1000) / 20 / 1000) * 1000);
    const notBefore = new Date(Math.floor(req.now.getTime() / 1000) * 1000 - backdateMs);
    const wanted = Math.floor(req.now.getTime() / 1000) * 1000 + req.lifetimeSeconds * 1000;
    const notAfter = new Date(Math.min(wanted, this.notAfter.getTime()));
    if (notAfter.getTime() <= req.now.getTime()) throw new Error('the CA has expired: it cannot issue');
    // The TBSCertificate is assembled here (RFC 5280 4.1) rather than by forge, whose
    // certificates carry RSA keys only: the subject key goes in as the SPKI it is.
    const spki = parseDer('spki' in req.publicKey ? req.publicKey.spki : Buffer.from(toDer(pki.publicKeyToAsn1(req.publicKey)), 'binary'));
    const isEc = 'spki' in req.publicKey && req.publicKey.type === 'ec';
    // Subject key identifier: SHA-1 of the subjectPublicKey BIT STRING (RFC 5280 4.2.1.2 (1)),
    // after its unused-bits byte.
    const keyBits = (spki.value as forge.asn1.Asn1[])[1]!.value as string;
    const ski = createHash('sha1').update(Buffer.from(keyBits.slice(1), 'binary')).digest().toString('binary');
    const altNames = [
      ...(req.dnsNames ?? []).map((value) => ({ type: 2, value })),
      ...(req.ipAddresses ?? []).map((ip) => ({ type: 7, ip })),
      ...(req.uris ?? []).map((value) => ({ type: 6, value })),
    ];
    // forge encodes the extension values (it needs a certificate object to hang them on).
    const holder = pki.createCertificate();
    holder.setExtensions([
      { name: 'basicConstraints', cA: false, critical: true },
      // keyEncipherment is an RSA usage (RFC 5480 3): an EC key only signs.
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: !isEc, critical: true },
      { name: 'extKeyUsage', serverAuth: req.usage === 'server', clientAuth: req.usage === 'client' },
      ...(altNames.length > 0 ? [{ name: 'subjectAltName', altNames }] : []),
      { name: 'subjectKeyIdentifier', value: asn1.create(Class.UNIVERSAL, Type.OCTETSTRING, false, ski) },
      { name: 'authorityKeyIdentifier', keyIdentifier: this.#ski },
    ]);
    const subject = seq([asn1.create(Class.UNIVERSAL, Type.SET, true, [seq([oid(pki.oids.commonName!), asn1.create(Class.UNIVERSAL, Type.UTF8, false, forge.util.encodeUtf8(req.commonName))])])]);
    const tbs = seq([
      asn1.create(Class.CONTEXT_SPECIFIC, 0, true, [asn1.create(Class.UNIVERSAL, Type.INTEGER, false, String.fromCharCode(2))]), // v3
      int(serial),
      SHA256_WITH_RSA(),
      asn1.fromDer(this.#subjectDer),
      seq([time(notBefore), time(notAfter)]),
      subject,
      spki,
      (pki as unknown as { certificateExtensionsToAsn1(e: unknown[]): forge.asn1.Asn1 }).certificateExtensionsToAsn1(holder.extensions),
    ]);
    return { pem: pem('CERTIFICATE', this.#signed(tbs)), serial, notBefore, notAfter };
  }

  /** SEQUENCE { tbs, sha256WithRSAEncryption, signature } as DER, signed by node:crypto. */
  #signed(tbs: forge.asn1.Asn1): Buffer {
    const tbsDer = toDer(tbs);
    const signature = cryptoSign('sha256', Buffer.from(tbsDer, 'binary'), this.#key);
    const signed = seq([tbs, SHA256_WITH_RSA(), asn1.create(Class.UNIVERSAL, Type.BITSTRING, false, String.fromCharCode(0) + signature.toString('binary'))]);
    return Buffer.from(toDer(signed), 'binary');
  }

  /**
   * A v2 CRL signed by this CA. forge has no CRL builder: the TBSCertList is assembled with its
   * ASN.1 tools (RFC 5280 5.1) and its DER signed with node:crypto (sha256WithRSAEncryption).
   * Issuer = this CA's subject, byte for byte from its certificate; extensions: CRL number and
   * authority key identifier. Revoked serials are listed with their revocation date.
   */
  issueCrl(req: CrlRequest): string {
    const octets = (bytes: string) => asn1.create(Class.UNIVERSAL, Type.OCTETSTRING, false, bytes);
    const number = int(req.number.toString(16));
    const aki = seq([asn1.create(Class.CONTEXT_SPECIFIC, 0, false, this.#ski)]);
    const extensions = asn1.create(Class.CONTEXT_SPECIFIC, 0, true, [seq([
      seq([oid('2.5.29.20'), octets(toDer(number))]),
      seq([oid('2.5.29.35'), octets(toDer(aki))]),
    ])]);
    const revoked = [...req.revoked]
      .sort((a, b) => a.serial.localeCompare(b.serial))
      .map((r) => seq([int(r.serial), time(r.revokedAt)]));
    const tbs = seq([
      asn1.create(Class.UNIVERSAL, Type.INTEGER, false, String.fromCharCode(1)), // v2
      SHA256_WITH_RSA(),
      asn1.fromDer(this.#subjectDer),
      time(req.thisUpdate),
      time(req.nextUpdate),
      ...(revoked.length > 0 ? [seq(revoked)] : []),
      extensions,
    ]);
    return pem('X509 CRL', this.#signed(tbs));
  }
}
