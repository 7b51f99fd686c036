// SCRAM-SHA-256 verifiers (RFC 5802/7677), in the form PostgreSQL stores in pg_authid.
// A server is only ever given the verifier; the plaintext stays with the connecting side.
import { createHash, createHmac, pbkdf2Sync } from 'node:crypto';

export const SCRAM_ITERATIONS = 4096;

/** Build a verifier. The salt is a parameter (randomness is the caller's), 16 bytes. */
export function scramVerifier(password: string, salt: Buffer, iterations = SCRAM_ITERATIONS): string {
  if (salt.length < 8) throw new Error('SCRAM salt must be at least 8 bytes');
  // Passwords pgaccord generates are ASCII, for which SASLprep is the identity.
  const salted = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

const B64 = '[A-Za-z0-9+/]+={0,2}';
const VERIFIER = new RegExp(`^SCRAM-SHA-256\\$(\\d+):(${B64})\\$(${B64}):(${B64})$`);

/**
 * True when PostgreSQL will store the string as a verifier. A malformed one would be hashed
 * as if it were a plaintext password, silently, so it must be refused before ALTER ROLE.
 */
export function isScramVerifier(text: string): boolean {
  const m = VERIFIER.exec(text);
  if (!m) return false;
  const iterations = Number(m[1]);
  if (!Number.isSafeInteger(iterations) || iterations < 1) return false;
  const decoded = (s: string) => Buffer.from(s, 'base64');
  const canonical = (s: string) => decoded(s).toString('base64') === s;
  return canonical(m[2]!) && decoded(m[2]!).length > 0 && canonical(m[3]!) && decoded(m[3]!).length === 32 && canonical(m[4]!) && decoded(m[4]!).length === 32;
}
