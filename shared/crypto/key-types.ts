// The key types pgaccord makes, apart from keys.ts and csr.ts (node-forge) so that a command line can check
// a --tls-key-type without loading the X.509 code.

/**
 * The key types pgaccord makes: RSA 2048 (the default for node certificates, what every
 * PostgreSQL client stack takes) and ECDSA P-256 (agent identities, the coordinator's HTTPS key,
 * node certificates of a cluster with tls.keyType ecdsa-p256: cheaper handshakes, keys made in
 * microseconds). The key policy (KEY_POLICY in csr.ts) on what the coordinator signs is wider.
 */
export const KEY_TYPES = ['rsa-2048', 'ecdsa-p256'] as const;
export type KeyType = (typeof KEY_TYPES)[number];
