// Join tokens, as `pgaccord token create` prints them: "pga1." + base64url(JSON JoinTokenPayload).
// One codec for the coordinator that issues them and the agent that spends them. Error reasons
// never echo the token. A token of several coordinators (sharing one store) lists them all in
// `urls`; `url` stays the first, so a token names a coordinator the way every agent reads it.
import { Value } from '@sinclair/typebox/value';
import { JoinTokenPayload } from './api.ts';
import { coordinatorUrlProblem } from './coordinator-urls.ts';

export { parseCoordinatorUrls } from './coordinator-urls.ts';

export const TOKEN_PREFIX = 'pga1.';

export function encodeJoinToken(payload: JoinTokenPayload): string {
  return TOKEN_PREFIX + Buffer.from(JSON.stringify(payload)).toString('base64url');
}

export function normaliseFingerprint(fp: string): string {
  return fp.replace(/:/g, '').toLowerCase();
}

/** The payload of a well-formed token, or why it is not one. */
export function parseJoinToken(token: string): { ok: true; payload: JoinTokenPayload } | { ok: false; reason: string } {
  if (typeof token !== 'string' || !token.startsWith(TOKEN_PREFIX)) return { ok: false, reason: `join token must start with "${TOKEN_PREFIX}"` };
  if (token.length > 4096) return { ok: false, reason: 'join token is too long' };
  const body = token.slice(TOKEN_PREFIX.length);
  if (!/^[A-Za-z0-9_-]+$/.test(body)) return { ok: false, reason: 'join token is not base64url after its prefix' };
  let payload: unknown;
  try {
    payload = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'));
  } catch {
    return { ok: false, reason: 'join token does not decode to JSON' };
  }
  if (!Value.Check(JoinTokenPayload, payload)) {
    const first = [...Value.Errors(JoinTokenPayload, payload)][0];
    return { ok: false, reason: `join token payload is invalid${first ? ` at ${first.path || '/'}: ${first.message}` : ''}` };
  }
  if (!/^[0-9a-f]{64}$/.test(normaliseFingerprint(payload.caFingerprint))) return { ok: false, reason: 'join token caFingerprint is not a sha256 hex digest' };
  for (const u of tokenUrls(payload)) {
    const bad = coordinatorUrlProblem(u);
    if (bad) return { ok: false, reason: `join token coordinator URL ${bad}` };
  }
  return { ok: true, payload };
}

/**
 * The coordinator URLs a token names, in order: `urls` when it carries several coordinators,
 * else its one `url` (every token before several coordinators, still valid).
 */
export function tokenUrls(payload: Pick<JoinTokenPayload, 'url' | 'urls'>): string[] {
  return payload.urls && payload.urls.length > 0 ? payload.urls : [payload.url];
}
