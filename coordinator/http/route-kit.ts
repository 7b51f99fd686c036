// What every route plugin under routes/ is given and declares. A route says who may call it in
// `config.auth` (checked by the onRequest hook in auth.ts, before the body is read) and how the
// OpenAPI document names it (`config.summary`; openapi.ts); its schema types the handler through
// the TypeBox type provider, so no handler casts a body, a query or a path parameter.
import type { Server } from 'node:https';
import type { FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { TSchema } from '@sinclair/typebox';
import { unauthorized } from '../errors.ts';
import type { AgentPrincipal, CoordinatorService } from '../service.ts';
import type { CoordinatorMetrics } from './metrics.ts';

/** none: public; admin: the bearer admin token; agent: an agent identity certificate (mTLS) still current in the store. */
export type Auth = 'none' | 'admin' | 'agent';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Required on every route (the server refuses to start otherwise): nothing is public by omission. */
    auth?: Auth;
    /** The OpenAPI summary; a route without one (the status page) is not part of the JSON API's document. */
    summary?: string;
    /** A body documented only: the handler validates it itself (cluster specs, for field-named errors). */
    docBody?: TSchema;
    /** Content type of a non-JSON 200 answer (a string). */
    produces?: string;
    /** The long-poll: while the store is away, authentication waits for it instead of refusing. */
    longPoll?: boolean;
  }
  interface FastifyRequest {
    /** Set by the auth hook on agent routes. */
    agent: AgentPrincipal | null;
    /** How long a long-poll was held at authentication while the store was away (ms). */
    storeWaitMs: number;
  }
}

export interface RouteDeps {
  service: CoordinatorService;
  metrics?: CoordinatorMetrics | undefined;
  /** Aborted when the server starts closing (SIGTERM). */
  closing: AbortSignal;
  /** The OpenAPI document of every route with a summary. */
  openapi: () => Record<string, unknown>;
}

/** A plugin of routes; `Extra` for what only it needs (the status page: the admin token). */
export type RoutePlugin<Extra extends object = object> = FastifyPluginAsyncTypebox<RouteDeps & Extra, Server>;

/** The agent an agent route serves: the auth hook set it, or the route is not an agent route. */
export function agentOf(req: FastifyRequest): AgentPrincipal {
  if (!req.agent) throw unauthorized('agent calls need a client certificate (mTLS)');
  return req.agent;
}
