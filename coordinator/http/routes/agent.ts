// The agent's routes: enrollment (a join token, no certificate yet) and, with its identity
// certificate (mTLS, checked by the auth hook), the desired-state long-poll, CSRs for its
// certificate slots and its status reports. An agent only ever gets its own node's share:
// every call takes the node from the authenticated principal, never from the request. Each
// route writes the node's last_contact once (a status report with its own upsert of node_status).
import { CsrRequest, CsrResponse, DesiredResponse, EnrollRequest, EnrollResponse, PeerWake, StatusRequest } from '../../../shared/contract/api.ts';
import { agentOf, type RoutePlugin } from '../route-kit.ts';
import { DesiredQuery, NoContent, errors } from '../schemas.ts';

export const agentRoutes: RoutePlugin = async (app, { service, metrics, closing }) => {
  const signed = <T>(sign: () => Promise<T>): Promise<T> => (metrics ? metrics.signing(sign) : sign());

  app.post('/v1/agent/enroll', {
    config: { auth: 'none', summary: 'exchange a join token and a CSR for the agent identity certificate' },
    schema: { body: EnrollRequest, response: { 200: EnrollResponse, ...errors } },
  }, async (req) => signed(() => service.enroll(req.body.token, req.body.csr)));

  // One long-poll per node: a newer one replaces the older, which answers at once. Closing
  // (SIGTERM): every held long-poll answers at once, as "nothing newer" (204), and one arriving
  // now does not wait: the agent simply polls again (another coordinator when it has several),
  // which is neither a failure nor a backoff for it. Otherwise app.close() waits the whole
  // long-poll (30 s) while new requests get 503, and a restart costs the fleet a minute.
  const polls = new Map<string, AbortController>();
  closing.addEventListener('abort', () => {
    for (const abort of polls.values()) abort.abort();
  }, { once: true });

  app.get('/v1/agent/desired', {
    config: {
      auth: 'agent',
      longPoll: true,
      summary: 'long-poll the node desired state newer than ?after=GEN (204 when none appears in time, 410 when the node is gone); '
        + 'with ?peers=N, 202 as soon as more than N other nodes have applied GEN or newer (re-probe them)',
    },
    schema: { querystring: DesiredQuery, response: { 200: DesiredResponse, 202: PeerWake, 204: NoContent, ...errors } },
  }, async (req, reply) => {
    const agent = agentOf(req);
    const q = req.query;
    const abort = new AbortController();
    reply.raw.once('close', () => abort.abort());
    const key = `${agent.cluster}/${agent.node}`;
    polls.get(key)?.abort();
    polls.set(key, abort);
    if (closing.aborted) abort.abort();
    const waitMs = Math.max(0, (q.wait !== undefined ? Math.min(q.wait * 1000, service.longPollMs) : service.longPollMs) - req.storeWaitMs);
    // The contact is written by the poll, with its first read (DesiredStates.poll).
    const opts = { ...(q.peers !== undefined ? { peersKnown: q.peers } : {}), passwordsAt: (q.features ?? '').split(',').includes('passwords-at'), contact: true };
    try {
      const desired = await service.desired(agent, q.after ?? 0, abort.signal, waitMs, opts);
      // The connection ends with this answer: the server's close does not wait for it to idle out.
      if (closing.aborted) reply.header('connection', 'close');
      if (!desired) return reply.code(204).send(null);
      if ('wake' in desired) return reply.code(202).send(desired);
      metrics?.delivered(agent.cluster, agent.node, desired.generation);
      return desired;
    } finally {
      if (polls.get(key) === abort) polls.delete(key);
    }
  });

  app.post('/v1/agent/csr', {
    config: { auth: 'agent', summary: 'sign a CSR for one certificate slot of this node (or "identity" to renew the agent identity)' },
    schema: { body: CsrRequest, response: { 200: CsrResponse, ...errors } },
  }, async (req) => {
    const agent = agentOf(req);
    await service.recordContact(agent);
    return signed(() => service.signCsr(agent, req.body.slot, req.body.csr));
  });

  app.post('/v1/agent/status', {
    config: { auth: 'agent', summary: 'report this node\'s applied generation, phase, certificates and probes' },
    schema: { body: StatusRequest, response: { 204: NoContent, ...errors } },
  }, async (req, reply) => {
    const agent = agentOf(req);
    await service.reportStatus(agent, req.body);
    await metrics?.reported(agent.cluster, agent.node, req.body.generation, req.body.timings)
      .catch((e) => req.log.warn({ err: e }, 'metrics: observing a report failed'));
    return reply.code(204).send(null);
  });
};
