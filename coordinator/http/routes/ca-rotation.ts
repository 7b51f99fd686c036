// CA rotation of a cluster (admin): where it stands, start, finish. The new CA joins every
// bundle before it issues anything; finish is refused (409, nothing changed) until every node
// has proved leaves from the new CA.
import { CaRotationStatus } from '../../../shared/contract/api.ts';
import type { RoutePlugin } from '../route-kit.ts';
import { ClusterParams, errors } from '../schemas.ts';

const schema = { params: ClusterParams, response: { 200: CaRotationStatus, ...errors } };

export const caRotationRoutes: RoutePlugin = async (app, { service }) => {
  app.get('/v1/clusters/:cluster/ca-rotation', {
    config: {
      auth: 'admin',
      summary: 'where a CA rotation stands: phase (none, trust, reissue), both CAs, what each node still waits for, whether finish would be accepted',
    },
    schema,
  }, async (req) => service.caRotationStatus(req.params.cluster));

  app.post('/v1/clusters/:cluster/ca-rotation/start', {
    config: {
      auth: 'admin',
      summary: 'start a CA rotation: a new CA joins every bundle (new generation); it issues once every node has proved the bundle, '
        + 'and every old leaf is then re-issued',
    },
    schema,
  }, async (req) => service.startCaRotation(req.params.cluster));

  app.post('/v1/clusters/:cluster/ca-rotation/finish', {
    config: {
      auth: 'admin',
      summary: 'finish a CA rotation: the old CA leaves every bundle; 409 (nothing changed) until every node has proved leaves from the new CA',
    },
    schema,
  }, async (req) => service.finishCaRotation(req.params.cluster));
};
