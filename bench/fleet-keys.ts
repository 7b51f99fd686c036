// Keys for bench:fleet's simulated agents: FLEET_KEY=ec (ECDSA P-256, what the agent makes:
// microseconds per key) or rsa (RSA-2048: tens of milliseconds per key from OpenSSL's thread
// pool, minutes for ten thousand). Keys and CSRs come from the product's own shared/crypto/keys.ts and csr.ts.
import type { KeyType } from '../shared/crypto/key-types.ts';
import { generateKey } from '../shared/crypto/keys.ts';

export type { KeyType };

export function keyType(text: string | undefined): KeyType {
  const t = text ?? 'ec';
  if (t === 'ec' || t === 'ecdsa-p256') return 'ecdsa-p256';
  if (t === 'rsa' || t === 'rsa-2048') return 'rsa-2048';
  throw new Error(`FLEET_KEY: "${t}" is not ec or rsa`);
}

export async function newKey(type: KeyType): Promise<string> {
  return (await generateKey(type)).privateKeyPem;
}
