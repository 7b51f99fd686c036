// Join tokens (admin): the enrolment's admin side. A token is single-use, bound to one node of
// one cluster, and short-lived (default 1 h, or the body's "ttl").
import { TokenResponse } from '../../../shared/contract/api.ts';
import { parseDuration } from '../../cluster/duration.ts';
import { badRequest } from '../../errors.ts';
import type { RoutePlugin } from '../route-kit.ts';
import { NodeParams, TokenRequest, errors } from '../schemas.ts';

export const tokenRoutes: RoutePlugin = async (app, { service }) => {
  app.post('/v1/clusters/:cluster/nodes/:node/tokens', {
    config: { auth: 'admin', summary: 'a single-use join token bound to one node (body: {"ttl": "1h"})' },
    schema: { params: NodeParams, body: TokenRequest, response: { 200: TokenResponse, ...errors } },
  }, async (req) => {
    const ttlText = req.body?.ttl;
    const ttl = ttlText === undefined ? undefined : parseDuration(ttlText);
    if (ttl === null) throw badRequest('E_TTL', `ttl: "${ttlText}" is not a duration (examples: 1h, 30m)`, [{ field: 'ttl', message: 'not a duration' }]);
    return service.createToken(req.params.cluster, req.params.node, ttl);
  });
};
