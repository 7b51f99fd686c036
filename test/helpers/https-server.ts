// A stand-in coordinator over real HTTPS (a certificate of the given CA for 127.0.0.1) that answers
// each request as the test says: for the clients' failover across coordinator URLs.
import { createPublicKey } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import forge from 'node-forge';
import type { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';

/** A status (503 with the store's error body, anything else empty), a status with a JSON body, or 'die': read the request, then drop the connection. */
export type Answer = number | 'die' | { status: number; body: unknown };

export interface StandIn {
  url: string;
  /** Every request's path, in order. */
  hits: string[];
  close(): Promise<void>;
}

export async function httpsServer(ca: CertificateAuthority, answer: (path: string, method: string) => Answer): Promise<StandIn> {
  const { privateKeyPem } = await generateRsaKey();
  const pub = forge.pki.publicKeyFromPem(createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' }).toString());
  const cert = ca.issue({ publicKey: pub, commonName: '127.0.0.1', ipAddresses: ['127.0.0.1'], usage: 'server', lifetimeSeconds: 3600, now: new Date() });
  const hits: string[] = [];
  const srv: Server = createServer({ key: privateKeyPem, cert: cert.pem }, (req, res) => {
    hits.push(req.url ?? '');
    const a = answer(req.url ?? '', req.method ?? 'GET');
    // A coordinator that dies having read the request (and perhaps done it), before answering.
    if (a === 'die') return req.on('data', () => undefined).on('end', () => req.socket.destroy());
    const status = typeof a === 'number' ? a : a.status;
    res.writeHead(status, { 'content-type': 'application/json' });
    if (typeof a !== 'number') res.end(JSON.stringify(a.body));
    else res.end(status === 503 ? JSON.stringify({ code: 'E_STORE_UNAVAILABLE', message: 'down' }) : '');
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `https://127.0.0.1:${(srv.address() as { port: number }).port}`,
    hits,
    close: () => new Promise((r) => srv.close(() => r())),
  };
}
