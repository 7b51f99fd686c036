// The OpenAPI document, from the routes themselves: every route with a summary is recorded as
// it is added (the server's onRoute hook), with its auth, its declared (or documented) schemas
// and its answers.
import type { FastifyContextConfig, FastifySchema } from 'fastify';
import type { TSchema } from '@sinclair/typebox';

interface Recorded {
  method: string;
  url: string;
  auth: string;
  summary: string;
  params?: TSchema | undefined;
  querystring?: TSchema | undefined;
  body?: TSchema | undefined;
  response: Record<string, TSchema>;
  produces?: string | undefined;
}

type Properties = { properties: Record<string, unknown> };
/** A schema as plain JSON (TypeBox's symbols dropped). */
const plain = (s: TSchema): unknown => JSON.parse(JSON.stringify(s));
const properties = (s: TSchema): Record<string, unknown> => (plain(s) as Properties).properties;

export class OpenApi {
  readonly #routes: Recorded[] = [];
  #doc: Record<string, unknown> | null = null;

  /** Called for every route added (onRoute). */
  record(route: { method: string | string[]; url: string; schema?: FastifySchema | undefined; config?: FastifyContextConfig | undefined }): void {
    const { config, schema } = route;
    // HEAD routes fastify adds for each GET, and routes outside the JSON API, are not documented.
    if (!config?.summary || route.method === 'HEAD') return;
    this.#routes.push({
      method: String(route.method),
      url: route.url,
      auth: config.auth ?? 'none',
      summary: config.summary,
      params: schema?.params as TSchema | undefined,
      querystring: schema?.querystring as TSchema | undefined,
      body: (schema?.body as TSchema | undefined) ?? config.docBody,
      response: (schema?.response ?? {}) as Record<string, TSchema>,
      produces: config.produces,
    });
  }

  document(): Record<string, unknown> {
    if (this.#doc) return this.#doc;
    const paths: Record<string, Record<string, unknown>> = {};
    for (const r of this.#routes) {
      const path = r.url.replace(/:(\w+)/g, '{$1}');
      const params = r.params ? Object.entries(properties(r.params)) : [];
      const query = r.querystring ? Object.entries(properties(r.querystring)) : [];
      paths[path] ??= {};
      paths[path]![r.method.toLowerCase()] = {
        summary: r.summary,
        security: r.auth === 'admin' ? [{ adminToken: [] }] : r.auth === 'agent' ? [{ agentCertificate: [] }] : [],
        parameters: [
          ...params.map(([name, schema]) => ({ name, in: 'path', required: true, schema })),
          ...query.map(([name, schema]) => ({ name, in: 'query', required: false, schema })),
        ],
        ...(r.body ? { requestBody: { required: true, content: { 'application/json': { schema: plain(r.body) } } } } : {}),
        responses: Object.fromEntries(Object.entries(r.response).map(([code, schema]) => [code, {
          description: code === '200' ? 'OK' : code === '204' ? 'no content' : 'error',
          ...(code === '204' ? {} : { content: { [code === '200' && r.produces ? r.produces : 'application/json']: { schema: plain(schema) } } }),
        }])),
      };
    }
    this.#doc = {
      openapi: '3.1.0',
      info: { title: 'pgaccord coordinator', version: '1' },
      paths,
      components: {
        securitySchemes: {
          adminToken: { type: 'http', scheme: 'bearer' },
          agentCertificate: { type: 'mutualTLS', description: 'agent identity certificate issued by the coordinator CA at enrollment' },
        },
      },
    };
    return this.#doc;
  }
}
