// The coordinator's HTTPS server: admin routes (bearer token), agent routes (mTLS with an
// identity certificate from the coordinator CA), and a few public ones. Every route declares
// its response schemas: fastify serialises only declared fields, so nothing else can leak.
import { timingSafeEqual, createHash } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyReply, type FastifyRequest } from 'fastify';
import { Type, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import type { Logger } from 'pino';
import {
  CertificateListResponse,
  ClusterResponse,
  ClusterStatusResponse,
  CsrRequest,
  CsrResponse,
  DesiredResponse,
  EnrollRequest,
  EnrollResponse,
  ErrorBody,
  PlanResponse,
  PeerWake,
  CaRotationStatus,
  RotatePasswordsRequest,
  RotatePasswordsResponse,
  RenewRequest,
  RenewResponse,
  RevokeResponse,
  StatusRequest,
  TokenResponse,
} from '../../shared/contract/api.ts';
import { parseDuration } from '../cluster/duration.ts';
import { ClusterSpec, NAME_PATTERN } from '../../shared/contract/schema.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { certInfo } from '../../shared/crypto/x509.ts';
import { ApiError, badRequest, unauthorized } from '../errors.ts';
import { AGENT_RATE_LIMIT, RateLimiter, type RateLimit } from './rate-limit.ts';
import { pageHeaders, renderLoginPage, renderStatusPage } from './status-page.ts';
import { UiSessions } from './ui-session.ts';
import { AGENT_CN, parseIdentityUri, type AgentPrincipal, type CoordinatorService } from '../service.ts';
import type { CoordinatorMetrics } from './metrics.ts';
import { DEFAULT_MAX_CONNECTIONS, MAX_CONNECTIONS_LIMIT, validMaxConnections } from './connection-limits.ts';

type Auth = 'none' | 'admin' | 'agent';

interface RouteDef {
  method: 'GET' | 'PUT' | 'POST' | 'DELETE';
  url: string;
  auth: Auth;
  summary: string;
  params?: TSchema;
  querystring?: TSchema;
  /** Validated by fastify. */
  body?: TSchema;
  /** Documented only: the handler validates it itself (cluster specs, for field-named errors). */
  docBody?: TSchema;
  response: Record<number, TSchema>;
  /** Content type of a non-JSON 200 answer. */
  produces?: string;
  handler: (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>;
}

declare module 'fastify' {
  interface FastifyRequest {
    agent: AgentPrincipal | null;
  }
}

const Name = Type.String({ pattern: NAME_PATTERN });
const ClusterParams = Type.Object({ cluster: Name });
const NodeParams = Type.Object({ cluster: Name, node: Name });
const SerialParams = Type.Object({ cluster: Name, serial: Type.String({ pattern: '^[0-9a-f]{1,64}$' }) });
const Health = Type.Object({ ok: Type.Boolean() });
const ClusterList = Type.Object({ clusters: Type.Array(Type.Object({ name: Type.String(), generation: Type.Integer() })) });
const TokenRequest = Type.Object({ ttl: Type.Optional(Type.String()) }, { additionalProperties: false });
const Pem = Type.String({ description: 'PEM' });
// 413, 414, 415: fastify's own refusals (body over bodyLimit, a path parameter over maxParamLength, a body that is not JSON).
const errors = { 400: ErrorBody, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody, 409: ErrorBody, 410: ErrorBody, 413: ErrorBody, 414: ErrorBody, 415: ErrorBody, 429: ErrorBody, 500: ErrorBody, 501: ErrorBody, 503: ErrorBody };

/** What one client may hold: time to send a request, idle time, connections, agent request rate. */
export interface ServerLimits {
  /** The whole request, headers and body, must arrive within this (ms; default 30 s). */
  requestTimeoutMs?: number;
  /** Open connections at most (default 1000); more are closed at once. */
  maxConnections?: number;
  /** Per agent identity (cluster/node) on the agent routes. */
  agentRateLimit?: RateLimit;
}

export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
/** Beyond the long-poll's own maximum, before a silent connection is closed. */
const IDLE_MARGIN_MS = 30_000;

/**
 * Fastify's two lines per request ("incoming request", "request completed") at debug, not info:
 * written synchronously (shared/system/log.ts), they were a fifth of a busy coordinator's main thread.
 * A request that errors is still logged at error; lifecycle and security events stay at info.
 */
class RequestLinesAtDebug extends LogController {
  override incomingRequest(request: FastifyRequest): void {
    if (!this.isLogDisabled(request)) request.log.debug({ req: request }, 'incoming request');
  }

  override requestCompleted(error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    if (this.isLogDisabled(request)) return;
    if (error) reply.log.error({ res: reply, err: error, responseTime: reply.elapsedTime }, 'request errored');
    else reply.log.debug({ res: reply, responseTime: reply.elapsedTime }, 'request completed');
  }

  /** Once per request refused while closing: a restart with thousands of agents would log thousands. */
  override serviceUnavailable(logger: FastifyBaseLogger): void {
    logger.debug({ res: { statusCode: 503 } }, 'request refused: the server is closing');
  }
}

export interface ServerOptions {
  service: CoordinatorService;
  adminToken: string;
  tls: { key: string; cert: string; ca: string };
  log: Logger;
  limits?: ServerLimits;
  /** Counts requests, signing in flight, deliveries and reports (see metrics.ts). */
  metrics?: CoordinatorMetrics;
}

function bearerMatches(header: string | undefined, expected: string): boolean {
  if (!header || !header.startsWith('Bearer ')) return false;
  // Compare fixed-length digests in constant time: neither content nor length leaks.
  const a = createHash('sha256').update(header.slice(7).trim()).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

function agentIdentity(req: FastifyRequest): { cluster: string; node: string; serial: string } {
  const sock = req.raw.socket as TLSSocket;
  if (typeof sock.getPeerX509Certificate !== 'function') throw unauthorized('agent calls need TLS');
  const peer = sock.getPeerX509Certificate();
  if (!peer) throw unauthorized('agent calls need a client certificate (mTLS)');
  if (!sock.authorized) throw unauthorized('the client certificate is not valid for this coordinator');
  const info = certInfo(peer.toString());
  const ids = info.uris.map(parseIdentityUri).filter((x) => x !== null);
  if (info.commonName !== AGENT_CN || ids.length !== 1 || info.uris.length !== 1 || !info.extKeyUsage.includes('clientAuth')) {
    throw unauthorized('the client certificate is not a pgaccord agent identity');
  }
  return { ...ids[0]!, serial: info.serial };
}

export async function buildServer(opts: ServerOptions) {
  const { service, adminToken, metrics } = opts;
  // Unauthenticated clients must not hold connections: the whole request arrives within
  // requestTimeoutMs (checked every quarter of it, at most every second), the TLS handshake
  // too, and a connection silent for longer than the longest long-poll (which sends nothing
  // until it answers) plus a margin is closed.
  const requestTimeoutMs = opts.limits?.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const app = Fastify({
    loggerInstance: opts.log,
    logController: new RequestLinesAtDebug(),
    https: {
      key: opts.tls.key,
      cert: opts.tls.cert,
      ca: [opts.tls.ca],
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
      handshakeTimeout: Math.min(requestTimeoutMs, 10_000),
      headersTimeout: requestTimeoutMs,
      requestTimeout: requestTimeoutMs,
      connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(requestTimeoutMs / 4))),
    },
    bodyLimit: 2 * 1024 * 1024,
    requestTimeout: requestTimeoutMs,
    connectionTimeout: service.longPollMs + IDLE_MARGIN_MS,
    keepAliveTimeout: 10_000,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } },
  });
  const maxConnections = opts.limits?.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  if (!validMaxConnections(maxConnections)) throw new Error(`maxConnections: ${maxConnections} is not a number of connections (1..${MAX_CONNECTIONS_LIMIT})`);
  app.server.maxConnections = maxConnections;
  app.decorateRequest('agent', null);
  // One agent looping on its routes must not take the event loop from the others.
  const limiter = new RateLimiter(opts.limits?.agentRateLimit ?? AGENT_RATE_LIMIT);
  // One long-poll per node: a newer one replaces the older, which answers at once.
  const polls = new Map<string, AbortController>();
  // Closing (SIGTERM): every held long-poll answers at once, as "nothing newer" (204), and one
  // arriving now does not wait: the agent simply polls again (another coordinator when it has
  // several), which is neither a failure nor a backoff for it. Otherwise app.close() waits the
  // whole long-poll (30 s) while new requests get 503, and a restart costs the fleet a minute.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
    for (const abort of polls.values()) abort.abort();
  });
  /** How long a long-poll was held at authentication while the store was away. */
  const heldMs = new WeakMap<FastifyRequest, number>();

  const routes: RouteDef[] = [];
  const add = (def: RouteDef) => {
    routes.push(def);
    app.route({
      method: def.method,
      url: def.url,
      config: { auth: def.auth },
      schema: {
        ...(def.params ? { params: def.params } : {}),
        ...(def.querystring ? { querystring: def.querystring } : {}),
        ...(def.body ? { body: def.body } : {}),
        response: def.response,
      },
      handler: async (req, reply) => {
        const out = await def.handler(req, reply);
        if (def.produces && typeof out === 'string') reply.type(def.produces);
        return out;
      },
    });
  };

  app.addHook('onRequest', async (req, reply) => {
    const auth = (req.routeOptions.config as { auth?: Auth }).auth ?? 'none';
    if (auth === 'admin') {
      if (!bearerMatches(req.headers.authorization, adminToken)) throw unauthorized('admin calls need "Authorization: Bearer <admin token>"');
    } else if (auth === 'agent') {
      const id = agentIdentity(req);
      if (req.routeOptions.url === '/v1/agent/desired') {
        // A long-poll arriving while the store fails over is held until the store is back (at
        // most its own wait, at least 20 s), not refused into the agent's backoff; it then waits
        // what is left of its wait.
        const q = req.query as { wait?: string };
        const waitMs = q.wait !== undefined && Number(q.wait) >= 0 ? Math.min(Number(q.wait) * 1000, service.longPollMs) : service.longPollMs;
        const held = await service.store.whileAway(Math.max(waitMs, 20_000), () => service.authenticateAgent(id, id.serial));
        req.agent = held.value;
        heldMs.set(req, held.heldMs);
      } else {
        req.agent = await service.authenticateAgent(id, id.serial);
      }
      const waitMs = limiter.take(`${id.cluster}/${id.node}`, Date.now());
      if (waitMs > 0) {
        const seconds = Math.ceil(waitMs / 1000);
        reply.header('retry-after', String(seconds));
        throw new ApiError(429, 'E_RATE_LIMITED', `too many requests from agent ${id.cluster}/${id.node}: retry in ${seconds} s`);
      }
      await service.recordContact(req.agent);
    }
  });

  // By route pattern (req.routeOptions.url), never the raw URL: bounded label values.
  if (metrics) app.addHook('onResponse', async (req, reply) => metrics.request(req.method, req.routeOptions.url, reply.statusCode));

  app.setErrorHandler((err: unknown, req, reply) => {
    if (err instanceof ApiError) {
      if (err.status >= 500) req.log.error({ err }, err.message);
      return reply.code(err.status).send({ code: err.code, message: err.message, ...(err.errors ? { errors: err.errors } : {}) });
    }
    const e = err as { validation?: { instancePath?: string; message?: string; params?: Record<string, unknown> }[]; validationContext?: string; statusCode?: number; code?: string; message: string };
    if (e.validation) {
      const fieldErrors = e.validation.map((v) => ({
        field: `${e.validationContext ?? 'body'}${(v.instancePath ?? '').replace(/\//g, '.')}${v.params?.additionalProperty ? `.${String(v.params.additionalProperty)}` : ''}`,
        message: v.message ?? 'is invalid',
      }));
      return reply.code(400).send({ code: 'E_VALIDATION', message: fieldErrors.map((f) => `${f.field}: ${f.message}`).join('; '), errors: fieldErrors });
    }
    if (e.statusCode && e.statusCode >= 400 && e.statusCode < 500) {
      return reply.code(e.statusCode).send({ code: e.code ?? 'E_BAD_REQUEST', message: e.message });
    }
    req.log.error({ err }, 'request failed');
    return reply.code(500).send({ code: 'E_INTERNAL', message: 'internal error (see the coordinator log)' });
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ code: 'E_NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` }));

  // --- public ------------------------------------------------------------------------------
  add({ method: 'GET', url: '/healthz', auth: 'none', summary: 'liveness and store reachability', response: { 200: Health, 503: ErrorBody }, handler: async () => {
    try {
      await service.store.query('SELECT 1');
    } catch (e) {
      // A public route: the store's error (paths, server messages) goes to the log only.
      opts.log.error({ err: e }, 'healthz: the store does not answer');
      throw new ApiError(503, 'E_STORE_UNAVAILABLE', 'the store does not answer (details in the coordinator log)');
    }
    return { ok: true };
  } });
  add({ method: 'GET', url: '/v1/coordinator-ca.crt', auth: 'none', summary: 'the coordinator CA certificate (agents check it against the fingerprint in their join token)', response: { 200: Pem }, produces: 'application/x-pem-file', handler: async () => service.coordinatorCaPem });
  add({ method: 'GET', url: '/openapi.json', auth: 'none', summary: 'this document', response: { 200: Type.Object({}, { additionalProperties: true }) }, handler: async () => openapi() });

  // --- agent -------------------------------------------------------------------------------
  add({ method: 'POST', url: '/v1/agent/enroll', auth: 'none', summary: 'exchange a join token and a CSR for the agent identity certificate', body: EnrollRequest, response: { 200: EnrollResponse, ...errors }, handler: async (req) => {
    const body = req.body as { token: string; csr: string };
    return metrics ? metrics.signing(() => service.enroll(body.token, body.csr)) : service.enroll(body.token, body.csr);
  } });
  add({ method: 'GET', url: '/v1/agent/desired', auth: 'agent', summary: 'long-poll the node desired state newer than ?after=GEN (204 when none appears in time, 410 when the node is gone); with ?peers=N, 202 as soon as more than N other nodes have applied GEN or newer (re-probe them)', querystring: Type.Object({ after: Type.Optional(Type.Integer({ minimum: 0 })), wait: Type.Optional(Type.Integer({ minimum: 0, maximum: 300 })), peers: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000 })), features: Type.Optional(Type.String({ maxLength: 200 })) }), response: { 200: DesiredResponse, 202: PeerWake, 204: Type.Null(), ...errors }, handler: async (req, reply) => {
    const q = req.query as { after?: number; wait?: number; peers?: number; features?: string };
    const abort = new AbortController();
    reply.raw.once('close', () => abort.abort());
    const key = `${req.agent!.cluster}/${req.agent!.node}`;
    polls.get(key)?.abort();
    polls.set(key, abort);
    if (closing) abort.abort();
    const waitMs = Math.max(0, (q.wait !== undefined ? Math.min(q.wait * 1000, service.longPollMs) : service.longPollMs) - (heldMs.get(req) ?? 0));
    try {
      const desired = await service.desired(req.agent!, q.after ?? 0, abort.signal, waitMs, { ...(q.peers !== undefined ? { peersKnown: q.peers } : {}), passwordsAt: (q.features ?? '').split(',').includes('passwords-at') });
      // The connection ends with this answer: the server's close does not wait for it to idle out.
      if (closing) reply.header('connection', 'close');
      if (!desired) return reply.code(204).send();
      if ('wake' in desired) return reply.code(202).send(desired);
      metrics?.delivered(req.agent!.cluster, req.agent!.node, desired.generation);
      return desired;
    } finally {
      if (polls.get(key) === abort) polls.delete(key);
    }
  } });
  add({ method: 'POST', url: '/v1/agent/csr', auth: 'agent', summary: 'sign a CSR for one certificate slot of this node (or "identity" to renew the agent identity)', body: CsrRequest, response: { 200: CsrResponse, ...errors }, handler: async (req) => {
    const body = req.body as { slot: string; csr: string };
    return metrics ? metrics.signing(() => service.signCsr(req.agent!, body.slot, body.csr)) : service.signCsr(req.agent!, body.slot, body.csr);
  } });
  add({ method: 'POST', url: '/v1/agent/status', auth: 'agent', summary: 'report this node\'s applied generation, phase, certificates and probes', body: StatusRequest, response: { 204: Type.Null(), ...errors }, handler: async (req, reply) => {
    await service.reportStatus(req.agent!, req.body as never);
    await metrics?.reported(req.agent!.cluster, req.agent!.node, (req.body as { generation: number }).generation, (req.body as AgentStatus).timings).catch((e) => req.log.warn({ err: e }, 'metrics: observing a report failed'));
    return reply.code(204).send();
  } });

  // --- admin -------------------------------------------------------------------------------
  add({ method: 'GET', url: '/v1/clusters', auth: 'admin', summary: 'list clusters', response: { 200: ClusterList, ...errors }, handler: async () => ({ clusters: await service.listClusters() }) });
  add({ method: 'PUT', url: '/v1/clusters/:cluster', auth: 'admin', summary: 'create or update a cluster spec (refused whole with field-named errors when invalid)', params: ClusterParams, docBody: ClusterSpec, response: { 200: ClusterResponse, ...errors }, handler: async (req) => {
    const { cluster } = req.params as { cluster: string };
    const r = await service.putCluster(cluster, req.body);
    return { generation: r.generation, spec: r.spec, warnings: r.warnings };
  } });
  add({ method: 'GET', url: '/v1/clusters/:cluster', auth: 'admin', summary: 'the stored cluster spec and its generation', params: ClusterParams, response: { 200: ClusterResponse, ...errors }, handler: async (req) => service.getCluster((req.params as { cluster: string }).cluster) });
  add({ method: 'DELETE', url: '/v1/clusters/:cluster', auth: 'admin', summary: 'delete a cluster (its agents are told their node is gone)', params: ClusterParams, response: { 204: Type.Null(), ...errors }, handler: async (req, reply) => {
    await service.deleteCluster((req.params as { cluster: string }).cluster);
    return reply.code(204).send();
  } });
  add({ method: 'POST', url: '/v1/clusters/:cluster/plan', auth: 'admin', summary: 'dry run: what each node would get and what would change; stores nothing', params: ClusterParams, docBody: ClusterSpec, response: { 200: PlanResponse, ...errors }, handler: async (req) => service.plan((req.params as { cluster: string }).cluster, req.body) });
  add({ method: 'GET', url: '/v1/clusters/:cluster/status', auth: 'admin', summary: 'per-node generations, phase, certificates, probes', params: ClusterParams, response: { 200: ClusterStatusResponse, ...errors }, handler: async (req) => service.status((req.params as { cluster: string }).cluster) });
  add({ method: 'POST', url: '/v1/clusters/:cluster/nodes/:node/tokens', auth: 'admin', summary: 'a single-use join token bound to one node (body: {"ttl": "1h"})', params: NodeParams, body: Type.Optional(TokenRequest), response: { 200: TokenResponse, ...errors }, handler: async (req) => {
    const { cluster, node } = req.params as { cluster: string; node: string };
    const ttlText = (req.body as { ttl?: string } | undefined)?.ttl;
    const ttl = ttlText === undefined ? undefined : parseDuration(ttlText);
    if (ttl === null) throw badRequest('E_TTL', `ttl: "${ttlText}" is not a duration (examples: 1h, 30m)`, [{ field: 'ttl', message: 'not a duration' }]);
    return service.createToken(cluster, node, ttl);
  } });
  add({ method: 'GET', url: '/v1/clusters/:cluster/certificates', auth: 'admin', summary: 'every certificate issued for the cluster, with days left', params: ClusterParams, response: { 200: CertificateListResponse, ...errors }, handler: async (req) => service.listCertificates((req.params as { cluster: string }).cluster) });
  add({ method: 'POST', url: '/v1/clusters/:cluster/certificates/:serial/revoke', auth: 'admin', summary: 'revoke a certificate: a cluster certificate goes into a new CRL (new generation: every node installs it and ends its sessions); an agent identity stops authenticating', params: SerialParams, response: { 200: RevokeResponse, ...errors }, handler: async (req) => {
    const { cluster, serial } = req.params as { cluster: string; serial: string };
    return service.revoke(cluster, serial);
  } });
  add({ method: 'POST', url: '/v1/clusters/:cluster/renew', auth: 'admin', summary: 'force early renewal (new key) of one certificate ({"serial": ...}), of a node\'s ({"node": ...}) or of every live cluster certificate ({})', params: ClusterParams, docBody: RenewRequest, response: { 200: RenewResponse, ...errors }, handler: async (req) => {
    const { cluster } = req.params as { cluster: string };
    const body = (req.body ?? {}) as { serial?: string; node?: string };
    if (!Value.Check(RenewRequest, body)) {
      const first = [...Value.Errors(RenewRequest, body)][0];
      throw badRequest('E_VALIDATION', `body${first?.path.replace(/\//g, '.') ?? ''}: ${first?.message ?? 'is invalid'} (expected {"serial": HEX} or {"node": NAME} or {})`);
    }
    return service.requestRenewal(cluster, body);
  } });
  add({ method: 'GET', url: '/v1/clusters/:cluster/ca-rotation', auth: 'admin', summary: 'where a CA rotation stands: phase (none, trust, reissue), both CAs, what each node still waits for, whether finish would be accepted', params: ClusterParams, response: { 200: CaRotationStatus, ...errors }, handler: async (req) => service.caRotationStatus((req.params as { cluster: string }).cluster) });
  add({ method: 'POST', url: '/v1/clusters/:cluster/ca-rotation/start', auth: 'admin', summary: 'start a CA rotation: a new CA joins every bundle (new generation); it issues once every node has proved the bundle, and every old leaf is then re-issued', params: ClusterParams, response: { 200: CaRotationStatus, ...errors }, handler: async (req) => service.startCaRotation((req.params as { cluster: string }).cluster) });
  add({ method: 'POST', url: '/v1/clusters/:cluster/ca-rotation/finish', auth: 'admin', summary: 'finish a CA rotation: the old CA leaves every bundle; 409 (nothing changed) until every node has proved leaves from the new CA', params: ClusterParams, response: { 200: CaRotationStatus, ...errors }, handler: async (req) => service.finishCaRotation((req.params as { cluster: string }).cluster) });
  add({ method: 'POST', url: '/v1/clusters/:cluster/rotate-passwords', auth: 'admin', summary: 'new passwords and SCRAM verifiers for every password role ({}) or one ({"role": ...}), in one new generation (servers get the verifier and clients the passfile line in the same apply)', params: ClusterParams, docBody: RotatePasswordsRequest, response: { 200: RotatePasswordsResponse, ...errors }, handler: async (req) => {
    const body = (req.body ?? {}) as { role?: string };
    if (!Value.Check(RotatePasswordsRequest, body)) throw badRequest('E_VALIDATION', 'expected {"role": NAME} or {}');
    return service.rotatePasswords((req.params as { cluster: string }).cluster, body.role);
  } });
  add({ method: 'GET', url: '/v1/clusters/:cluster/ca.crt', auth: 'admin', summary: 'the cluster CA bundle', params: ClusterParams, response: { 200: Pem, ...errors }, produces: 'application/x-pem-file', handler: async (req) => service.clusterCaPem((req.params as { cluster: string }).cluster) });
  add({ method: 'GET', url: '/v1/clusters/:cluster/crl', auth: 'admin', summary: 'the cluster CRL (PEM): what the nodes install once the cluster has revoked a certificate', params: ClusterParams, response: { 200: Pem, ...errors }, produces: 'application/pkix-crl', handler: async (req) => service.crlPem((req.params as { cluster: string }).cluster) });

  // --- status page (HTML, not part of the JSON API: outside the OpenAPI document) ------------
  const sessions = new UiSessions(adminToken);
  const page = (reply: FastifyReply, code: number, html: string) => reply.code(code).headers(pageHeaders()).send(html);
  app.register(async (ui) => {
    // The login form's encoding, for these routes only: every other route stays JSON-only (415).
    ui.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 4096 }, (_req, body, done) => done(null, new URLSearchParams(body as string)));
    ui.get('/ui', async (req, reply) => {
      if (!sessions.valid(req.headers.cookie, Date.now())) return page(reply, 401, renderLoginPage(null));
      const names = (await service.listClusters()).map((c) => c.name);
      return page(reply, 200, renderStatusPage(await Promise.all(names.map((n) => service.status(n))), new Date()));
    });
    ui.post('/ui/login', async (req, reply) => {
      const form = req.body instanceof URLSearchParams ? req.body : new URLSearchParams();
      if (!bearerMatches(`Bearer ${form.get('token') ?? ''}`, adminToken)) return page(reply, 401, renderLoginPage('That is not the admin token.'));
      return reply.code(303).header('set-cookie', sessions.issue(Date.now())).header('location', '/ui').headers(pageHeaders()).send('');
    });
    ui.post('/ui/logout', async (_req, reply) => reply.code(303).header('set-cookie', UiSessions.clear()).header('location', '/ui').headers(pageHeaders()).send(''));
  });

  const plain = (s: TSchema) => JSON.parse(JSON.stringify(s)) as unknown;
  let doc: unknown = null;
  function openapi(): unknown {
    if (doc) return doc;
    const paths: Record<string, Record<string, unknown>> = {};
    for (const r of routes) {
      const path = r.url.replace(/:(\w+)/g, '{$1}');
      const params = r.params ? Object.keys((plain(r.params) as { properties: object }).properties) : [];
      const query = r.querystring ? Object.entries((plain(r.querystring) as { properties: Record<string, unknown> }).properties) : [];
      const body = r.body ?? r.docBody;
      paths[path] ??= {};
      paths[path]![r.method.toLowerCase()] = {
        summary: r.summary,
        security: r.auth === 'admin' ? [{ adminToken: [] }] : r.auth === 'agent' ? [{ agentCertificate: [] }] : [],
        parameters: [
          ...params.map((name) => ({ name, in: 'path', required: true, schema: (plain(r.params!) as { properties: Record<string, unknown> }).properties[name] })),
          ...query.map(([name, schema]) => ({ name, in: 'query', required: false, schema })),
        ],
        ...(body ? { requestBody: { required: true, content: { 'application/json': { schema: plain(body) } } } } : {}),
        responses: Object.fromEntries(Object.entries(r.response).map(([code, schema]) => [code, {
          description: code === '200' ? 'OK' : code === '204' ? 'no content' : 'error',
          ...(code === '204' ? {} : { content: { [code === '200' && r.produces ? r.produces : 'application/json']: { schema: plain(schema) } } }),
        }])),
      };
    }
    doc = {
      openapi: '3.1.0',
      info: { title: 'pgaccord coordinator', version: '1' },
      paths,
      components: { securitySchemes: { adminToken: { type: 'http', scheme: 'bearer' }, agentCertificate: { type: 'mutualTLS', description: 'agent identity certificate issued by the coordinator CA at enrollment' } } },
    };
    return doc;
  }

  return { app, openapi };
}
