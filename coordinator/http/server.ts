// The coordinator's HTTPS server, assembled: TLS with optional client certificates (agents
// authenticate with mTLS), the limits one client may hold, the auth and metrics hooks, one
// error shape, and the routes, one plugin per resource under routes/. Every route declares its
// response schemas: fastify serialises only declared fields, so nothing else can leak.
import Fastify, { LogController, type FastifyError, type FastifyReply, type FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { Logger } from 'pino';
import type { ErrorBody } from '../../shared/contract/api.ts';
import { ApiError } from '../errors.ts';
import type { CoordinatorService } from '../service.ts';
import { authenticate } from './auth.ts';
import { DEFAULT_MAX_CONNECTIONS, MAX_CONNECTIONS_LIMIT, validMaxConnections } from './connection-limits.ts';
import type { CoordinatorMetrics } from './metrics.ts';
import { OpenApi } from './openapi.ts';
import { AGENT_RATE_LIMIT, RateLimiter, type RateLimit } from './rate-limit.ts';
import type { RouteDeps } from './route-kit.ts';
import { agentRoutes } from './routes/agent.ts';
import { caRotationRoutes } from './routes/ca-rotation.ts';
import { certificateRoutes } from './routes/certificates.ts';
import { clusterRoutes } from './routes/clusters.ts';
import { passwordRoutes } from './routes/passwords.ts';
import { publicRoutes } from './routes/public.ts';
import { tokenRoutes } from './routes/tokens.ts';
import { trustRoutes } from './routes/trust.ts';
import { uiRoutes } from './routes/ui.ts';

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

/** The one error body: an ApiError as it is, fastify's validation as field-named E_VALIDATION, anything else E_INTERNAL. */
function errorReply(err: FastifyError, req: FastifyRequest): { status: number; body: ErrorBody } {
  if (err instanceof ApiError) {
    if (err.status >= 500) req.log.error({ err }, err.message);
    return { status: err.status, body: { code: err.code, message: err.message, ...(err.errors ? { errors: err.errors } : {}) } };
  }
  if (err.validation) {
    const fieldErrors = err.validation.map((v) => {
      const extra = v.params?.additionalProperty ? `.${String(v.params.additionalProperty)}` : '';
      return { field: `${err.validationContext ?? 'body'}${(v.instancePath ?? '').replace(/\//g, '.')}${extra}`, message: v.message ?? 'is invalid' };
    });
    return { status: 400, body: { code: 'E_VALIDATION', message: fieldErrors.map((f) => `${f.field}: ${f.message}`).join('; '), errors: fieldErrors } };
  }
  if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
    return { status: err.statusCode, body: { code: err.code ?? 'E_BAD_REQUEST', message: err.message } };
  }
  req.log.error({ err }, 'request failed');
  return { status: 500, body: { code: 'E_INTERNAL', message: 'internal error (see the coordinator log)' } };
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
    // Closing, a request on a connection already open is served (the store is still there; a
    // long-poll answers at once) with "connection: close", not refused with fastify's 503, which
    // is neither our error body nor true: the agent would count a failure and back off.
    return503OnClosing: false,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();
  const maxConnections = opts.limits?.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  if (!validMaxConnections(maxConnections)) throw new Error(`maxConnections: ${maxConnections} is not a number of connections (1..${MAX_CONNECTIONS_LIMIT})`);
  app.server.maxConnections = maxConnections;
  app.decorateRequest('agent', null);
  app.decorateRequest('storeWaitMs', 0);

  // Closing (SIGTERM): what holds a request open (the long-poll) answers at once.
  const closing = new AbortController();
  app.addHook('preClose', async () => closing.abort());

  const openapi = new OpenApi();
  app.addHook('onRoute', (route) => {
    // Fail closed: a route that does not say who may call it is a mistake, not a public route.
    if (!route.config?.auth) throw new Error(`route ${String(route.method)} ${route.url} declares no config.auth`);
    openapi.record(route);
    const type = route.config.produces;
    if (!type) return;
    const handler = route.handler;
    route.handler = async function (req, reply) {
      const out: unknown = await handler.call(this, req, reply);
      if (typeof out === 'string') reply.type(type);
      return out;
    };
  });

  // One agent looping on its routes must not take the event loop from the others.
  const limiter = new RateLimiter(opts.limits?.agentRateLimit ?? AGENT_RATE_LIMIT);
  app.addHook('onRequest', authenticate({ service, adminToken, limiter, closing: closing.signal }));
  // By route pattern (req.routeOptions.url), never the raw URL: bounded label values.
  if (metrics) app.addHook('onResponse', async (req, reply) => metrics.request(req.method, req.routeOptions.url, reply.statusCode));

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const { status, body } = errorReply(err, req);
    return reply.code(status).send(body);
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ code: 'E_NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` }));

  // In this order in the OpenAPI document: public, agent, admin.
  const deps: RouteDeps = { service, metrics, closing: closing.signal, openapi: () => openapi.document() };
  for (const plugin of [publicRoutes, agentRoutes, clusterRoutes, tokenRoutes, certificateRoutes, caRotationRoutes, passwordRoutes, trustRoutes]) {
    await app.register(plugin, deps);
  }
  await app.register(uiRoutes, { ...deps, adminToken });

  return { app, openapi: () => openapi.document() };
}
