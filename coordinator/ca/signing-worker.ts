// A signing-pool worker (coordinator/ca/signing-pool.ts): checks CSRs and signs certificates and
// CRLs off the coordinator's event loop. It keeps the CAs it was given (certificate and key
// object, received once over its MessagePort) by id; it allocates nothing (serials and CRL
// numbers come from the main thread's transactions), stores nothing and logs nothing.
import type { KeyObject } from 'node:crypto';
import { parentPort, threadId } from 'node:worker_threads';
import { CertificateAuthority, type CrlRequest, type LeafRequest } from './ca.ts';
import { X509Error } from '../../shared/crypto/x509.ts';
import { readCsrKey } from '../../shared/crypto/csr.ts';

export type WorkerRequest =
  | { op: 'ca'; id: string; certPem: string; key: KeyObject }
  | { op: 'forget'; id: string }
  | { op: 'csr'; job: number; pem: string }
  | { op: 'issue'; job: number; ca: string; req: LeafRequest }
  | { op: 'crl'; job: number; ca: string; req: CrlRequest }
  | { op: 'whoami'; job: number };

export type WorkerReply =
  | { job: number; ok: true; result: unknown }
  | { job: number; ok: false; message: string; x509Code?: X509Error['code'] };

const cas = new Map<string, CertificateAuthority>();

function ca(id: string): CertificateAuthority {
  const found = cas.get(id);
  // The pool sends a CA before its first job on this worker: a miss is the pool's bug.
  if (!found) throw new Error(`signing worker has no CA ${id.slice(0, 12)}`);
  return found;
}

function run(m: Exclude<WorkerRequest, { op: 'ca' } | { op: 'forget' }>): unknown {
  switch (m.op) {
    case 'csr': {
      const { publicKey, commonName } = readCsrKey(m.pem);
      return { publicKey, commonName };
    }
    case 'issue':
      if (m.req.serial === undefined) throw new Error('the serial is allocated by the caller, not by a signing worker');
      // A Buffer crosses a MessagePort as a plain Uint8Array.
      if ('spki' in m.req.publicKey) m.req.publicKey.spki = Buffer.from(m.req.publicKey.spki);
      return ca(m.ca).issue(m.req);
    case 'crl':
      return ca(m.ca).issueCrl(m.req);
    case 'whoami':
      return threadId;
  }
}

parentPort!.on('message', (m: WorkerRequest) => {
  if (m.op === 'ca') {
    cas.set(m.id, new CertificateAuthority(m.certPem, m.key));
    return;
  }
  if (m.op === 'forget') {
    cas.delete(m.id);
    return;
  }
  let reply: WorkerReply;
  try {
    reply = { job: m.job, ok: true, result: run(m) };
  } catch (e) {
    reply = { job: m.job, ok: false, message: (e as Error).message, ...(e instanceof X509Error ? { x509Code: e.code } : {}) };
  }
  parentPort!.postMessage(reply);
});
