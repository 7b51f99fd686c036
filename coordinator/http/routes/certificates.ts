// Certificates of a cluster (admin): the list with days left, revocation (a cluster certificate
// goes into a new CRL; an agent identity stops authenticating), and forced early renewal.
import { Value } from '@sinclair/typebox/value';
import { CertificateListResponse, RenewRequest, RenewResponse, RevokeResponse } from '../../../shared/contract/api.ts';
import { badRequest } from '../../errors.ts';
import type { RoutePlugin } from '../route-kit.ts';
import { ClusterParams, SerialParams, errors } from '../schemas.ts';

export const certificateRoutes: RoutePlugin = async (app, { service }) => {
  app.get('/v1/clusters/:cluster/certificates', {
    config: { auth: 'admin', summary: 'every certificate issued for the cluster, with days left' },
    schema: { params: ClusterParams, response: { 200: CertificateListResponse, ...errors } },
  }, async (req) => service.listCertificates(req.params.cluster));

  app.post('/v1/clusters/:cluster/certificates/:serial/revoke', {
    config: {
      auth: 'admin',
      summary: 'revoke a certificate: a cluster certificate goes into a new CRL (new generation: every node installs it and ends its sessions); '
        + 'an agent identity stops authenticating',
    },
    schema: { params: SerialParams, response: { 200: RevokeResponse, ...errors } },
  }, async (req) => service.revoke(req.params.cluster, req.params.serial));

  // The body is optional ({} when absent) and checked here, for the message naming the three shapes.
  app.post('/v1/clusters/:cluster/renew', {
    config: {
      auth: 'admin',
      docBody: RenewRequest,
      summary: 'force early renewal (new key) of one certificate ({"serial": ...}), of a node\'s ({"node": ...}) or of every live cluster certificate ({})',
    },
    schema: { params: ClusterParams, response: { 200: RenewResponse, ...errors } },
  }, async (req) => {
    const body = req.body ?? {};
    if (!Value.Check(RenewRequest, body)) {
      const first = [...Value.Errors(RenewRequest, body)][0];
      const where = `body${first?.path.replace(/\//g, '.') ?? ''}`;
      throw badRequest('E_VALIDATION', `${where}: ${first?.message ?? 'is invalid'} (expected {"serial": HEX} or {"node": NAME} or {})`);
    }
    return service.requestRenewal(req.params.cluster, body);
  });
};
