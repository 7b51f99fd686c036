// Cluster specs (admin): list, put (refused whole with field-named errors when invalid), read,
// delete, a dry-run plan, and the per-node status. A spec body is validated by the service, not
// by fastify, so that every problem names its field: it is documented (docBody), not declared.
import { ClusterResponse, ClusterStatusResponse, PlanResponse } from '../../../shared/contract/api.ts';
import { ClusterSpec } from '../../../shared/contract/schema.ts';
import type { RoutePlugin } from '../route-kit.ts';
import { ClusterList, ClusterParams, NoContent, errors } from '../schemas.ts';

export const clusterRoutes: RoutePlugin = async (app, { service }) => {
  app.get('/v1/clusters', {
    config: { auth: 'admin', summary: 'list clusters' },
    schema: { response: { 200: ClusterList, ...errors } },
  }, async () => ({ clusters: await service.listClusters() }));

  app.put('/v1/clusters/:cluster', {
    config: { auth: 'admin', docBody: ClusterSpec, summary: 'create or update a cluster spec (refused whole with field-named errors when invalid)' },
    schema: { params: ClusterParams, response: { 200: ClusterResponse, ...errors } },
  }, async (req) => {
    const r = await service.putCluster(req.params.cluster, req.body);
    return { generation: r.generation, spec: r.spec, warnings: r.warnings };
  });

  app.get('/v1/clusters/:cluster', {
    config: { auth: 'admin', summary: 'the stored cluster spec and its generation' },
    schema: { params: ClusterParams, response: { 200: ClusterResponse, ...errors } },
  }, async (req) => service.getCluster(req.params.cluster));

  app.delete('/v1/clusters/:cluster', {
    config: { auth: 'admin', summary: 'delete a cluster (its agents are told their node is gone)' },
    schema: { params: ClusterParams, response: { 204: NoContent, ...errors } },
  }, async (req, reply) => {
    await service.deleteCluster(req.params.cluster);
    return reply.code(204).send(null);
  });

  app.post('/v1/clusters/:cluster/plan', {
    config: { auth: 'admin', docBody: ClusterSpec, summary: 'dry run: what each node would get and what would change; stores nothing' },
    schema: { params: ClusterParams, response: { 200: PlanResponse, ...errors } },
  }, async (req) => service.plan(req.params.cluster, req.body));

  app.get('/v1/clusters/:cluster/status', {
    config: { auth: 'admin', summary: 'per-node generations, phase, certificates, probes' },
    schema: { params: ClusterParams, response: { 200: ClusterStatusResponse, ...errors } },
  }, async (req) => service.status(req.params.cluster));
};
