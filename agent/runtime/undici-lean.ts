// The two pieces of undici the agent uses: its connection pool (Agent) and the promise form of
// `request`. undici's index also loads fetch, WebSocket, EventSource, the mock and cache layers
// and the interceptors: +31 MB of resident memory against +16 MB for these two (measured on
// undici 7.30, node 24, RSS after gc), for an agent whose goal is 60 MB in all. undici has no
// "exports" map, so these files are reachable; test/unit/undici-lean.test.ts pins that they still
// are, and still work, with the installed version.
import { createRequire } from 'node:module';
import type * as Undici from 'undici';

const require = createRequire(import.meta.url);

export type { Dispatcher } from 'undici';
export const Agent = require('undici/lib/dispatcher/agent.js') as typeof Undici.Agent;
export type Agent = Undici.Agent;

// undici's index attaches it to Dispatcher.prototype (Object.assign(Dispatcher.prototype, api));
// called with the dispatcher as `this` here instead, so no prototype is touched.
const apiRequest = require('undici/lib/api/api-request.js') as (this: Undici.Dispatcher, opts: Undici.Dispatcher.RequestOptions) => Promise<Undici.Dispatcher.ResponseData>;

export type RequestOptions = Omit<Undici.Dispatcher.RequestOptions, 'origin' | 'path'> & { dispatcher: Undici.Dispatcher };

/** undici's `request(url, { dispatcher, ... })`, with the dispatcher required (no global one). */
export function request(url: string, opts: RequestOptions): Promise<Undici.Dispatcher.ResponseData> {
  const { dispatcher, ...rest } = opts;
  const u = new URL(url);
  return apiRequest.call(dispatcher, { ...rest, origin: u.origin, path: `${u.pathname}${u.search}` });
}
