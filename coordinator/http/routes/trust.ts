// What a cluster's nodes trust (admin), as PEM: the CA bundle and the CRL the nodes install
// once the cluster has revoked a certificate.
import type { RoutePlugin } from '../route-kit.ts';
import { ClusterParams, PEM_FILE, PKIX_CRL, Pem, errors } from '../schemas.ts';

export const trustRoutes: RoutePlugin = async (app, { service }) => {
  app.get('/v1/clusters/:cluster/ca.crt', {
    config: { auth: 'admin', produces: PEM_FILE, summary: 'the cluster CA bundle' },
    schema: { params: ClusterParams, response: { 200: Pem, ...errors } },
  }, async (req) => service.clusterCaPem(req.params.cluster));

  app.get('/v1/clusters/:cluster/crl', {
    config: { auth: 'admin', produces: PKIX_CRL, summary: 'the cluster CRL (PEM): what the nodes install once the cluster has revoked a certificate' },
    schema: { params: ClusterParams, response: { 200: Pem, ...errors } },
  }, async (req) => service.crlPem(req.params.cluster));
};
