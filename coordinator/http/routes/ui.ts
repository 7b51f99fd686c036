// The status page (HTML, not part of the JSON API: no summary, so outside the OpenAPI
// document). Its routes are public to the auth hook: the page checks its own session cookie,
// which /ui/login issues for the admin token (ui-session.ts).
import type { FastifyReply } from 'fastify';
import { bearerMatches } from '../auth.ts';
import type { RoutePlugin } from '../route-kit.ts';
import { pageHeaders, renderLoginPage, renderStatusPage } from '../status-page.ts';
import { UiSessions } from '../ui-session.ts';

export const uiRoutes: RoutePlugin<{ adminToken: string }> = async (app, { service, adminToken }) => {
  const sessions = new UiSessions(adminToken);
  const page = (reply: FastifyReply, code: number, html: string) => reply.code(code).headers(pageHeaders()).send(html);
  // The login form's encoding, for these routes only: every other route stays JSON-only (415).
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 4096 }, (_req, body, done) => {
    done(null, new URLSearchParams(String(body)));
  });
  const config = { auth: 'none' } as const;

  app.get('/ui', { config }, async (req, reply) => {
    if (!sessions.valid(req.headers.cookie, Date.now())) return page(reply, 401, renderLoginPage(null));
    const names = (await service.listClusters()).map((c) => c.name);
    return page(reply, 200, renderStatusPage(await Promise.all(names.map((n) => service.status(n))), new Date()));
  });
  app.post('/ui/login', { config }, async (req, reply) => {
    const form = req.body instanceof URLSearchParams ? req.body : new URLSearchParams();
    if (!bearerMatches(`Bearer ${form.get('token') ?? ''}`, adminToken)) return page(reply, 401, renderLoginPage('That is not the admin token.'));
    return reply.code(303).header('set-cookie', sessions.issue(Date.now())).header('location', '/ui').headers(pageHeaders()).send('');
  });
  app.post('/ui/logout', { config }, async (_req, reply) => {
    return reply.code(303).header('set-cookie', UiSessions.clear()).header('location', '/ui').headers(pageHeaders()).send('');
  });
};
