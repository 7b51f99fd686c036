// Keys, made and used: node:crypto generates every key and computes every signature (forge's
// pure-JavaScript RSA is about 60 times slower than OpenSSL's); forge only sees the bytes.
import { constants, createPrivateKey, createPublicKey, generateKeyPair, sign as cryptoSign, type KeyObject } from 'node:crypto';
import forge from 'node-forge';
import type { KeyType } from './key-types.ts';
import { X509Error } from './x509.ts';

const { pki } = forge;

/** A fresh key of `type`, PKCS#8 PEM, from OpenSSL (off the event loop). */
export async function generateKey(type: KeyType): Promise<{ privateKeyPem: string }> {
  if (type === 'rsa-2048') return generateRsaKey(2048);
  return new Promise((resolve, reject) => {
    generateKeyPair('ec', { namedCurve: 'prime256v1' }, (err, _pub, priv) => {
      if (err) reject(err);
      else resolve({ privateKeyPem: priv.export({ type: 'pkcs8', format: 'pem' }).toString() });
    });
  });
}

/** A fresh RSA key (2048 bits unless told), PKCS#8 PEM, from OpenSSL. */
export async function generateRsaKey(bits = 2048): Promise<{ privateKeyPem: string }> {
  return new Promise((resolve, reject) => {
    generateKeyPair('rsa', { modulusLength: bits, publicExponent: 0x10001 }, (err, _pub, priv) => {
      if (err) reject(err);
      else resolve({ privateKeyPem: priv.export({ type: 'pkcs8', format: 'pem' }).toString() });
    });
  });
}

/**
 * Sign a forge certificate or CSR with node:crypto. forge's sign(key, md) feeds the TBS DER to
 * `md.update` and calls `key.sign(md)`; this message digest only collects those bytes, and the
 * signer computes RSASSA-PKCS1-v1_5 with SHA-256 over them natively (hash included).
 */
export function nativeSign(target: { sign(key: forge.pki.rsa.PrivateKey, md?: forge.md.MessageDigest): void }, privateKey: KeyObject | string): void {
  const key = typeof privateKey === 'string' ? createPrivateKey(privateKey) : privateKey;
  const chunks: string[] = [];
  const md = {
    algorithm: 'sha256',
    update(bytes: string) {
      chunks.push(bytes);
      return md;
    },
  };
  const signer = {
    sign(): string {
      return cryptoSign('sha256', Buffer.from(chunks.join(''), 'binary'), { key, padding: constants.RSA_PKCS1_PADDING }).toString('binary');
    },
  };
  target.sign(signer as unknown as forge.pki.rsa.PrivateKey, md as unknown as forge.md.MessageDigest);
}

/** forge public key object from any PEM node:crypto understands (private or public). */
export function forgePublicKeyFromPem(pem: string): forge.pki.rsa.PublicKey {
  const spki = createPublicKey(pem).export({ type: 'spki', format: 'pem' }).toString();
  try {
    return pki.publicKeyFromPem(spki);
  } catch {
    throw new X509Error('only RSA keys are supported');
  }
}
