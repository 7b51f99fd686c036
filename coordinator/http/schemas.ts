// The schemas only the HTTP layer needs (path parameters, the desired route's query, small
// bodies and answers); the request and response documents both sides share are in
// shared/contract/api.ts. Each is at once what fastify validates, the handler's type (through
// the TypeBox type provider) and a piece of the OpenAPI document.
import { Type } from '@sinclair/typebox';
import { ErrorBody } from '../../shared/contract/api.ts';
import { NAME_PATTERN } from '../../shared/contract/schema.ts';

const Name = Type.String({ pattern: NAME_PATTERN });
export const ClusterParams = Type.Object({ cluster: Name });
export const NodeParams = Type.Object({ cluster: Name, node: Name });
export const SerialParams = Type.Object({ cluster: Name, serial: Type.String({ pattern: '^[0-9a-f]{1,64}$' }) });

export const Health = Type.Object({ ok: Type.Boolean() });
export const ClusterList = Type.Object({ clusters: Type.Array(Type.Object({ name: Type.String(), generation: Type.Integer() })) });
/** The token route's body, itself optional. */
export const TokenRequest = Type.Optional(Type.Object({ ttl: Type.Optional(Type.String()) }, { additionalProperties: false }));
export const Pem = Type.String({ description: 'PEM' });
export const NoContent = Type.Null();
export const AnyObject = Type.Object({}, { additionalProperties: true });

/** GET /v1/agent/desired: after a generation, wait at most (s), peers known applied, features the agent understands. */
export const DesiredQuery = Type.Object({
  after: Type.Optional(Type.Integer({ minimum: 0 })),
  wait: Type.Optional(Type.Integer({ minimum: 0, maximum: 300 })),
  peers: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000 })),
  features: Type.Optional(Type.String({ maxLength: 200 })),
});

/**
 * Every refusal an API route may answer with; 413, 414, 415 are fastify's own (body over
 * bodyLimit, a path parameter over maxParamLength, a body that is not JSON).
 */
export const errors = {
  400: ErrorBody,
  401: ErrorBody,
  403: ErrorBody,
  404: ErrorBody,
  409: ErrorBody,
  410: ErrorBody,
  413: ErrorBody,
  414: ErrorBody,
  415: ErrorBody,
  429: ErrorBody,
  500: ErrorBody,
  501: ErrorBody,
  503: ErrorBody,
};

/** Content types of the non-JSON 200 answers. */
export const PEM_FILE = 'application/x-pem-file';
export const PKIX_CRL = 'application/pkix-crl';
