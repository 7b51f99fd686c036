// Reading the certificate a server presents, for the proofs (PostgreSQL's served certificate,
// Patroni's REST API serial), without leaving a trace in the server's log.
import type { TLSSocket } from 'node:tls';

export interface ServedCertificate {
  /** hex, lower case, no colons (as shared/crypto/x509.ts certInfo prints it) */
  serial: string;
  fingerprint256: string;
  notAfter: string;
}

/**
 * The certificate `s` is shown, then a clean close: close_notify, and wait until the server
 * closes. Destroying the socket at 'secureConnect' drops the client's Finished still queued
 * (under TLS 1.3 the client has the server's certificate first), so the server sees EOF mid-
 * handshake: PostgreSQL logs "could not accept SSL connection: EOF detected", Patroni a traceback,
 * at every check (issue 12). The caller's socket timeout bounds the wait for the server's close;
 * once the handshake is done, an error while closing changes nothing.
 */
export async function peerCertificateThenClose(s: TLSSocket, who: string): Promise<ServedCertificate> {
  await new Promise<void>((resolve, reject) => {
    s.once('secureConnect', resolve);
    s.once('error', reject);
  });
  const peer = s.getPeerCertificate();
  const closed = new Promise<void>((resolve) => s.once('close', () => resolve()));
  s.on('error', () => undefined);
  s.end();
  await closed;
  if (!peer?.serialNumber) throw new Error(`${who} presented no certificate`);
  return {
    serial: peer.serialNumber.toLowerCase().replace(/:/g, ''),
    fingerprint256: peer.fingerprint256.replace(/:/g, '').toLowerCase(),
    notAfter: new Date(peer.valid_to).toISOString(),
  };
}
