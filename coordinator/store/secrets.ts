// Secrets at rest (cluster CA keys, role passwords): AES-256-GCM under the master key. The
// associated data binds each ciphertext to what it is (e.g. "cluster-ca:sales"), so a
// ciphertext copied into another row does not decrypt there.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

const VERSION = 'v1';

export class SecretBox {
  readonly #key: Buffer;

  constructor(key: Buffer) {
    if (key.length !== 32) throw new Error('master key must be 32 bytes');
    this.#key = Buffer.from(key);
  }

  seal(plaintext: string, context: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.#key, iv);
    cipher.setAAD(Buffer.from(context, 'utf8'));
    const ct = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
    return `${VERSION}:${Buffer.concat([iv, cipher.getAuthTag(), ct]).toString('base64')}`;
  }

  open(sealed: string, context: string): string {
    const [version, body] = sealed.split(':');
    if (version !== VERSION || body === undefined) throw new Error('unknown secret format');
    const raw = Buffer.from(body, 'base64');
    if (raw.length < 28) throw new Error('secret is truncated');
    const decipher = createDecipheriv('aes-256-gcm', this.#key, raw.subarray(0, 12));
    decipher.setAAD(Buffer.from(context, 'utf8'));
    decipher.setAuthTag(raw.subarray(12, 28));
    try {
      return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8');
    } catch {
      throw new Error(`secret "${context}" does not decrypt with this master key`);
    }
  }

  /** Not printable: keep the key out of logs and inspection. */
  toJSON(): string {
    return '[SecretBox]';
  }
}
