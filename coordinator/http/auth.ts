// Who is calling, from the route's declared `config.auth`, in the onRequest hook: before the
// body is read or validated, so an unauthenticated client never gets a body parsed. Admin: the
// bearer admin token. Agent: an identity certificate from the coordinator CA (mTLS), whose
// serial is still the node's current identity in the store; then the per-node rate limit.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { certInfo } from '../../shared/crypto/x509.ts';
import { ApiError, unauthorized } from '../errors.ts';
import { AGENT_CN, parseIdentityUri, type AgentPrincipal, type CoordinatorService } from '../service.ts';
import { StoreUnavailableError } from '../store/store-hosts.ts';
import { PeerCache } from './peer-cache.ts';
import type { RateLimiter } from './rate-limit.ts';

/** The long-poll is held at authentication while the store is away at least this long (ms). */
const MIN_STORE_WAIT_MS = 20_000;

export function bearerMatches(header: string | undefined, expected: string): boolean {
  if (!header || !header.startsWith('Bearer ')) return false;
  // Compare fixed-length digests in constant time: neither content nor length leaks.
  const a = createHash('sha256').update(header.slice(7).trim()).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

type AgentIdentity = Readonly<{ cluster: string; node: string; serial: string }>;

/**
 * Parsed client certificates (the parse, never the verdict: authorized, and the identity's
 * validity in the store, are checked on every request). The key is the DER the socket holds now
 * (a TLS 1.2 client may renegotiate and present another certificate on the same connection).
 */
const parsedPeers = new PeerCache<{ identity: AgentIdentity; notAfter: number }>(20_000);

/**
 * The agent identity the client certificate names: exactly one identity URI, the agent CN,
 * clientAuth; not expired now (the handshake checked the dates once, a connection lives on).
 * One frozen object per parse: every request of a connection gets the same one.
 */
function agentIdentity(req: FastifyRequest, now: Date): AgentIdentity {
  const sock = req.raw.socket as TLSSocket;
  if (typeof sock.getPeerX509Certificate !== 'function') throw unauthorized('agent calls need TLS');
  const peer = sock.getPeerX509Certificate();
  if (!peer) throw unauthorized('agent calls need a client certificate (mTLS)');
  if (!sock.authorized) throw unauthorized('the client certificate is not valid for this coordinator');
  const parsed = parsedPeers.get(peer.raw, () => parsePeer(peer.toString()));
  if (now.getTime() >= parsed.notAfter) throw unauthorized('the client certificate has expired: enroll again with a new join token');
  return parsed.identity;
}

function parsePeer(pem: string): { identity: AgentIdentity; notAfter: number } {
  const info = certInfo(pem);
  const ids = info.uris.map(parseIdentityUri).filter((x) => x !== null);
  if (info.commonName !== AGENT_CN || ids.length !== 1 || info.uris.length !== 1 || !info.extKeyUsage.includes('clientAuth')) {
    throw unauthorized('the client certificate is not a pgaccord agent identity');
  }
  return { identity: Object.freeze({ ...ids[0]!, serial: info.serial }), notAfter: info.notAfter.getTime() };
}

/**
 * The raw (not yet validated) ?wait= of a long-poll, in ms, capped at the long-poll maximum.
 * The hook runs before validation: a value the schema will refuse counts as absent here.
 */
function rawWaitMs(query: unknown, longPollMs: number): number {
  const wait = typeof query === 'object' && query !== null && 'wait' in query ? Number(query.wait) : NaN;
  return wait >= 0 ? Math.min(wait * 1000, longPollMs) : longPollMs;
}

/**
 * `work`, unless the server starts closing first: then a 503 at once, and the agent moves on to
 * another coordinator. What `work` does after that (its wait for the store ends with the store's
 * close) is dropped.
 */
function unlessClosing<T>(closing: AbortSignal, work: Promise<T>): Promise<T> {
  work.catch(() => undefined);
  return new Promise<T>((resolve, reject) => {
    const refuse = () => reject(new StoreUnavailableError('closing: a long-poll waiting for the store at authentication was answered'));
    if (closing.aborted) return refuse();
    closing.addEventListener('abort', refuse, { once: true });
    work.then(resolve, reject).finally(() => closing.removeEventListener('abort', refuse));
  });
}

/**
 * A long-poll's authentication. While the store fails over it is held until the store is back (at
 * most the poll's own wait, at least 20 s), not refused into the agent's backoff; it then waits
 * what is left of its wait. Closing, a poll held for the store is answered at once, as a poll held
 * for a change is; one that finds the store there is served as any other request.
 */
async function authenticateLongPoll(
  service: CoordinatorService, closing: AbortSignal, id: AgentIdentity, query: unknown,
): Promise<{ value: AgentPrincipal; heldMs: number }> {
  const start = Date.now();
  try {
    const value = await service.authenticateAgent(id, id.serial);
    return { value, heldMs: Date.now() - start };
  } catch (e) {
    if (!(e instanceof StoreUnavailableError)) throw e;
  }
  const budgetMs = Math.max(rawWaitMs(query, service.longPollMs), MIN_STORE_WAIT_MS) - (Date.now() - start);
  const held = await unlessClosing(closing, service.store.whileAway(budgetMs, () => service.authenticateAgent(id, id.serial)));
  return { value: held.value, heldMs: Date.now() - start };
}

export interface AuthDeps {
  service: CoordinatorService;
  adminToken: string;
  limiter: RateLimiter;
  /** Aborted when the server starts closing: a long-poll waiting for the store stops waiting. */
  closing: AbortSignal;
}

/** The onRequest hook of every route. */
export function authenticate({ service, adminToken, limiter, closing }: AuthDeps) {
  return async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const { auth = 'none', longPoll = false } = req.routeOptions.config;
    if (auth === 'admin') {
      if (!bearerMatches(req.headers.authorization, adminToken)) throw unauthorized('admin calls need "Authorization: Bearer <admin token>"');
    } else if (auth === 'agent') {
      const id = agentIdentity(req, service.now());
      if (longPoll) {
        const held = await authenticateLongPoll(service, closing, id, req.query);
        req.agent = held.value;
        req.storeWaitMs = held.heldMs;
      } else {
        req.agent = await service.authenticateAgent(id, id.serial);
      }
      const waitMs = limiter.take(`${id.cluster}/${id.node}`, Date.now());
      if (waitMs > 0) {
        const seconds = Math.ceil(waitMs / 1000);
        reply.header('retry-after', String(seconds));
        throw new ApiError(429, 'E_RATE_LIMITED', `too many requests from agent ${id.cluster}/${id.node}: retry in ${seconds} s`);
      }
    }
  };
}
