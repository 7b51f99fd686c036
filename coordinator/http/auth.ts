// Who is calling, from the route's declared `config.auth`, in the onRequest hook: before the
// body is read or validated, so an unauthenticated client never gets a body parsed. Admin: the
// bearer admin token. Agent: an identity certificate from the coordinator CA (mTLS), whose
// serial is still the node's current identity in the store; then the per-node rate limit.
import { createHash, timingSafeEqual, type X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { commonNameOf, sanOf, serialOf } from '../../shared/crypto/x509.ts';
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
 * Parsed client certificates (the parse, never the verdict: the handshake's verdict is read at a
 * connection's first agent request, the identity's validity in the store on every request),
 * keyed by the DER: an agent's second connection (a CSR beside its long-poll) is not parsed again.
 */
const parsedPeers = new PeerCache<{ identity: AgentIdentity; notAfter: number }>(20_000);

/**
 * Per connection, what its certificate parsed to: a connection's later requests neither read the
 * peer certificate again (getPeerX509Certificate builds a new X509Certificate each call) nor hash
 * its DER for parsedPeers. Sound because the first agent request of a connection turns TLS
 * renegotiation off for it (a TLS 1.2 client renegotiating after that gets its connection
 * closed), so its certificate can no longer change. Issue 13: the peer read, hash and lookup on
 * every request were ~8% of the event loop during 2,500 agents' first cycles (0.65 of 8.4 s, profiled).
 */
const perConnection = new WeakMap<TLSSocket, { identity: AgentIdentity; notAfter: number }>();

/**
 * The agent identity the client certificate names: exactly one identity URI, the agent CN,
 * clientAuth; not expired now (the handshake checked the dates once, a connection lives on).
 * One frozen object per parse: every request of a connection gets the same one.
 */
function agentIdentity(req: FastifyRequest, now: Date): AgentIdentity {
  const sock = req.raw.socket as TLSSocket;
  let parsed = perConnection.get(sock);
  if (!parsed) {
    if (typeof sock.getPeerX509Certificate !== 'function') throw unauthorized('agent calls need TLS');
    const peer = sock.getPeerX509Certificate();
    if (!peer) throw unauthorized('agent calls need a client certificate (mTLS)');
    if (!sock.authorized) throw unauthorized('the client certificate is not valid for this coordinator');
    parsed = parsedPeers.get(peer.raw, () => parseAgentPeer(peer));
    sock.disableRenegotiation();
    perConnection.set(sock, parsed);
  }
  if (now.getTime() >= parsed.notAfter) throw unauthorized('the client certificate has expired: enroll again with a new join token');
  return parsed.identity;
}

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

/**
 * The agent identity a client certificate names, read from the socket's X509Certificate itself:
 * what certInfo() says (the one CN, the SAN URIs, the EKUs, serial, notAfter), without making
 * PEM of it and parsing that again, nor toLegacyObject() (together ~0.3 ms a certificate, once
 * per agent: issue 13's first cycles of 2,500 agents spent ~0.8 s of the event loop on it).
 * unit/coordinator-auth-peer pins the same verdict as certInfo's.
 */
export function parseAgentPeer(peer: X509Certificate): { identity: AgentIdentity; notAfter: number } {
  const uris = sanOf(peer).uri;
  const ids = uris.map(parseIdentityUri).filter((x) => x !== null);
  if (commonNameOf(peer) !== AGENT_CN || ids.length !== 1 || uris.length !== 1 || !(peer.keyUsage ?? []).includes(CLIENT_AUTH)) {
    throw unauthorized('the client certificate is not a pgaccord agent identity');
  }
  return { identity: Object.freeze({ ...ids[0]!, serial: serialOf(peer) }), notAfter: new Date(peer.validTo).getTime() };
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
