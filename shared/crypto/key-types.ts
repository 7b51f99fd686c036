// The key types pgaccord makes and its defaults, apart from keys.ts and csr.ts (node-forge) so that a command line can check
// a --tls-key-type without loading the X.509 code.

/**
 * The key types pgaccord makes: RSA 2048 (the default for node certificates, what every
 * PostgreSQL client stack takes) and ECDSA P-256 (agent identities, the coordinator's HTTPS key,
 * node certificates of a cluster with tls.keyType ecdsa-p256: cheaper handshakes, keys made in
 * microseconds). The key policy (KEY_POLICY in csr.ts) on what the coordinator signs is wider.
 */
export const KEY_TYPES = ['rsa-2048', 'ecdsa-p256'] as const;
export type KeyType = (typeof KEY_TYPES)[number];

/**
 * The default type of the coordinator's HTTPS key. Every agent and admin CLI holds a TLS session
 * to it, and a restart makes them all shake hands at once: the server's signature is the
 * handshake's main cost, and an ECDSA P-256 one costs a fraction of an RSA-2048 one. Node's TLS
 * (undici) takes either.
 */
export const DEFAULT_TLS_KEY_TYPE: KeyType = 'ecdsa-p256';
