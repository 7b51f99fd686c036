// Password rotation (admin): new passwords and SCRAM verifiers in one new generation, so that
// servers get the verifier and clients the passfile line in the same apply.
import { Value } from '@sinclair/typebox/value';
import { RotatePasswordsRequest, RotatePasswordsResponse } from '../../../shared/contract/api.ts';
import { badRequest } from '../../errors.ts';
import type { RoutePlugin } from '../route-kit.ts';
import { ClusterParams, errors } from '../schemas.ts';

export const passwordRoutes: RoutePlugin = async (app, { service }) => {
  // The body is optional ({} when absent) and checked here, for the message naming both shapes.
  app.post('/v1/clusters/:cluster/rotate-passwords', {
    config: {
      auth: 'admin',
      docBody: RotatePasswordsRequest,
      summary: 'new passwords and SCRAM verifiers for every password role ({}) or one ({"role": ...}), in one new generation '
        + '(servers get the verifier and clients the passfile line in the same apply)',
    },
    schema: { params: ClusterParams, response: { 200: RotatePasswordsResponse, ...errors } },
  }, async (req) => {
    const body = req.body ?? {};
    if (!Value.Check(RotatePasswordsRequest, body)) throw badRequest('E_VALIDATION', 'expected {"role": NAME} or {}');
    return service.rotatePasswords(req.params.cluster, body.role);
  });
};
