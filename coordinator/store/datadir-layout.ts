// Where the coordinator keeps its files and what it makes there by default: names only, so the
// admin CLI (the token, the CA) and `pgaccord coordinator --help` need not load the CA code
// (node-forge) that datadir.ts needs.
import type { KeyType } from '../../shared/crypto/key-types.ts';

export const DEFAULT_DATA_DIR = '/var/lib/pgaccord-coordinator';
export const FILES = {
  caCert: 'ca.crt',
  caKey: 'coordinator-ca.key',
  serverCert: 'server.crt',
  serverKey: 'server.key',
  masterKey: 'master.key',
  adminToken: 'admin.token',
  pg: 'pg',
  storePassword: 'store.password',
} as const;

/**
 * The default type of the coordinator's HTTPS key. Every agent and admin CLI holds a TLS session
 * to it, and a restart makes them all shake hands at once: the server's signature is the
 * handshake's main cost, and an ECDSA P-256 one costs a fraction of an RSA-2048 one. Node's TLS
 * (undici) takes either.
 */
export const DEFAULT_TLS_KEY_TYPE: KeyType = 'ecdsa-p256';
