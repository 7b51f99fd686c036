// Sessions of the status page. A browser cannot send the admin bearer token by itself, so the
// token is posted once to /ui/login and exchanged for a cookie holding an expiry and an HMAC of
// it, never the token: the HMAC key is derived from the admin token and a random secret of this
// process, so a restart or a new admin token ends every session, and no state is kept.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export const SESSION_COOKIE = '__Host-pgaccord-ui';
export const SESSION_TTL_S = 8 * 3600;

export class UiSessions {
  private readonly key: Buffer;

  constructor(adminToken: string, processSecret: Buffer = randomBytes(32)) {
    this.key = createHmac('sha256', processSecret).update(`pgaccord-ui-session\0${adminToken}`).digest();
  }

  private mac(expires: number): string {
    return createHmac('sha256', this.key).update(`v1.${expires}`).digest('base64url');
  }

  /** A Set-Cookie value for a new session (HttpOnly, Secure, SameSite=Strict, host-only). */
  issue(nowMs: number): string {
    const expires = Math.floor(nowMs / 1000) + SESSION_TTL_S;
    return `${SESSION_COOKIE}=v1.${expires}.${this.mac(expires)}; Path=/; Max-Age=${SESSION_TTL_S}; HttpOnly; Secure; SameSite=Strict`;
  }

  /** The Set-Cookie value that ends a session. */
  static clear(): string {
    return `${SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict`;
  }

  /** Whether a Cookie header carries a session of this process, unexpired. */
  valid(cookieHeader: string | undefined, nowMs: number): boolean {
    if (!cookieHeader) return false;
    for (const part of cookieHeader.split(';')) {
      const [name, value] = part.trim().split(/=(.*)/s) as [string, string | undefined];
      if (name !== SESSION_COOKIE || !value) continue;
      const m = /^v1\.(\d{1,12})\.([A-Za-z0-9_-]{43})$/.exec(value);
      if (!m) continue;
      const expires = Number(m[1]);
      if (expires * 1000 <= nowMs) continue;
      const a = Buffer.from(m[2]!);
      const b = Buffer.from(this.mac(expires));
      if (a.length === b.length && timingSafeEqual(a, b)) return true;
    }
    return false;
  }
}
