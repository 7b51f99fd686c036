// Certificate authorities: the per-cluster CAs and the coordinator's own CA (its server
// certificate and agent identities). forge builds the X.509 structures; OpenSSL, through
// node:crypto, makes the keys and computes the signatures.
import { createPrivateKey, randomBytes, sign as cryptoSign, type KeyObject } from 'node:crypto';
import forge from 'node-forge';
import { forgePublicKeyFromPem, generateRsaKey, nativeSign } from '../shared/x509.ts';

const { pki, asn1 } = forge;

/**
 * PEM of a signed forge certificate, encoded with Buffer (forge's base64 is slow) and with LF
 * line ends like OpenSSL's (forge writes CRLF).
 */
function certPem(cert: forge.pki.Certificate): string {
  const der = Buffer.from(asn1.toDer(pki.certificateToAsn1(cert)).getBytes(), 'binary');
  const b64 = der.toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN CERTIFICATE-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END CERTIFICATE-----\n`;
}

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
  /** The subject's public key, from a verified CSR. Nothing else from the CSR is used. */
  publicKey: forge.pki.rsa.PublicKey;
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
  readonly #cert: forge.pki.Certificate;
  readonly #key: KeyObject;
  readonly #ski: string;

  /** The CA's notBefore (its lifetime is notAfter - notBefore). */
  get notBefore(): Date {
    return this.#cert.validity.notBefore;
  }

  constructor(certPem: string, keyPem: string) {
    this.certPem = certPem;
    this.#cert = pki.certificateFromPem(certPem);
    this.#key = createPrivateKey(keyPem);
    this.notAfter = this.#cert.validity.notAfter;
    this.#ski = this.#cert.generateSubjectKeyIdentifier().getBytes();
  }

  /** Create a self-signed CA (RSA 2048, 10 years unless told otherwise). */
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
      { name: 'basicConstraints', cA: true, critical: true },
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
    const cert = pki.createCertificate();
    cert.publicKey = req.publicKey;
    const serial = randomSerial();
    cert.serialNumber = serial;
    // Backdated for clock skew, but never by more than a twentieth of the lifetime: the renewal
    // schedule (2/3 of notAfter - notBefore) must stay ahead of the issue time for short lifetimes
    // (a 2-minute certificate backdated 5 minutes would be due for renewal the moment it is issued).
    const backdateMs = Math.min(BACKDATE_S * 1000, Math.floor((req.lifetimeSeconds * 1000) / 20 / 1000) * 1000);
    const notBefore = new Date(Math.floor(req.now.getTime() / 1000) * 1000 - backdateMs);
    const wanted = Math.floor(req.now.getTime() / 1000) * 1000 + req.lifetimeSeconds * 1000;
    const notAfter = new Date(Math.min(wanted, this.notAfter.getTime()));
    if (notAfter.getTime() <= req.now.getTime()) throw new Error('the CA has expired: it cannot issue');
    cert.validity.notBefore = notBefore;
    cert.validity.notAfter = notAfter;
    cert.setSubject([{ name: 'commonName', value: req.commonName, valueTagClass: UTF8 }]);
    cert.setIssuer(this.#cert.subject.attributes);
    const altNames = [
      ...(req.dnsNames ?? []).map((value) => ({ type: 2, value })),
      ...(req.ipAddresses ?? []).map((ip) => ({ type: 7, ip })),
      ...(req.uris ?? []).map((value) => ({ type: 6, value })),
    ];
    cert.setExtensions([
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: req.usage === 'server', clientAuth: req.usage === 'client' },
      ...(altNames.length > 0 ? [{ name: 'subjectAltName', altNames }] : []),
      { name: 'subjectKeyIdentifier' },
      { name: 'authorityKeyIdentifier', keyIdentifier: this.#ski },
    ]);
    nativeSign(cert, this.#key);
    return { pem: certPem(cert), serial, notBefore, notAfter };
  }

  /**
   * A v2 CRL signed by this CA. forge has no CRL builder: the TBSCertList is assembled with its
   * ASN.1 tools (RFC 5280 5.1) and its DER signed with node:crypto (sha256WithRSAEncryption).
   * Issuer = this CA's subject, byte for byte from its certificate; extensions: CRL number and
   * authority key identifier. Revoked serials are listed with their revocation date.
   */
  issueCrl(req: CrlRequest): string {
    const { Class, Type } = asn1;
    const seq = (value: forge.asn1.Asn1[]) => asn1.create(Class.UNIVERSAL, Type.SEQUENCE, true, value);
    const int = (hex: string) => {
      let h = hex.length % 2 ? `0${hex}` : hex;
      h = h.replace(/^(00)+(?=[0-9a-f]{2})/, '');
      if (parseInt(h.slice(0, 2), 16) & 0x80) h = `00${h}`;
      return asn1.create(Class.UNIVERSAL, Type.INTEGER, false, forge.util.hexToBytes(h));
    };
    const time = (d: Date) => d.getUTCFullYear() < 2050
      ? asn1.create(Class.UNIVERSAL, Type.UTCTIME, false, asn1.dateToUtcTime(d))
      : asn1.create(Class.UNIVERSAL, Type.GENERALIZEDTIME, false, asn1.dateToGeneralizedTime(d));
    const oid = (o: string) => asn1.create(Class.UNIVERSAL, Type.OID, false, asn1.oidToDer(o).getBytes());
    const octets = (bytes: string) => asn1.create(Class.UNIVERSAL, Type.OCTETSTRING, false, bytes);
    const der = (a: forge.asn1.Asn1) => asn1.toDer(a).getBytes();
    const sigAlg = seq([oid(pki.oids.sha256WithRSAEncryption!), asn1.create(Class.UNIVERSAL, Type.NULL, false, '')]);
    // tbsCertificate: [0] version, serial, signature, issuer, validity, subject, ...
    const tbsCert = (pki.certificateToAsn1(this.#cert).value as forge.asn1.Asn1[])[0]!;
    const subject = (tbsCert.value as forge.asn1.Asn1[])[5]!;
    const number = int(req.number.toString(16));
    const aki = seq([asn1.create(Class.CONTEXT_SPECIFIC, 0, false, this.#ski)]);
    const extensions = asn1.create(Class.CONTEXT_SPECIFIC, 0, true, [seq([
      seq([oid('2.5.29.20'), octets(der(number))]),
      seq([oid('2.5.29.35'), octets(der(aki))]),
    ])]);
    const revoked = [...req.revoked]
      .sort((a, b) => a.serial.localeCompare(b.serial))
      .map((r) => seq([int(r.serial), time(r.revokedAt)]));
    const tbs = seq([
      asn1.create(Class.UNIVERSAL, Type.INTEGER, false, String.fromCharCode(1)), // v2
      sigAlg,
      subject,
      time(req.thisUpdate),
      time(req.nextUpdate),
      ...(revoked.length > 0 ? [seq(revoked)] : []),
      extensions,
    ]);
    const tbsDer = Buffer.from(der(tbs), 'binary');
    const signature = cryptoSign('sha256', tbsDer, this.#key);
    const list = seq([tbs, sigAlg, asn1.create(Class.UNIVERSAL, Type.BITSTRING, false, String.fromCharCode(0) + signature.toString('binary'))]);
    const b64 = Buffer.from(der(list), 'binary').toString('base64').replace(/.{64}/g, '$&\n');
    return `-----BEGIN X509 CRL-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END X509 CRL-----\n`;
  }
}
