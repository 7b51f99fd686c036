// Public routes: liveness, the coordinator CA (what an agent checks against its join token's
// fingerprint before it trusts anything), and the OpenAPI document.
import { ErrorBody } from '../../../shared/contract/api.ts';
import { ApiError } from '../../errors.ts';
import type { RoutePlugin } from '../route-kit.ts';
import { AnyObject, Health, PEM_FILE, Pem } from '../schemas.ts';

export const publicRoutes: RoutePlugin = async (app, { service, openapi }) => {
  app.get('/healthz', {
    config: { auth: 'none', summary: 'liveness and store reachability' },
    schema: { response: { 200: Health, 503: ErrorBody } },
  }, async () => {
    try {
      await service.store.query('SELECT 1');
    } catch (e) {
      // A public route: the store's error (paths, server messages) goes to the log only.
      app.log.error({ err: e }, 'healthz: the store does not answer');
      throw new ApiError(503, 'E_STORE_UNAVAILABLE', 'the store does not answer (details in the coordinator log)');
    }
    return { ok: true };
  });

  app.get('/v1/coordinator-ca.crt', {
    config: { auth: 'none', produces: PEM_FILE, summary: 'the coordinator CA certificate (agents check it against the fingerprint in their join token)' },
    schema: { response: { 200: Pem } },
  }, async () => service.coordinatorCaPem);

  app.get('/openapi.json', {
    config: { auth: 'none', summary: 'this document' },
    schema: { response: { 200: AnyObject } },
  }, async () => openapi());
};
