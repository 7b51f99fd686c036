// bench:fleet's admin client: the coordinator's admin API with its bearer token, over one undici
// pool. A connection refused or reset (the coordinator at its connection limit) is retried up to
// five times, and counted.
import { Agent, request } from 'undici';

export interface AdminApi {
  call(method: 'GET' | 'PUT' | 'POST', path: string, body?: unknown): Promise<any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  /** Attempts retried so far. */
  readonly retries: number;
  destroy(): Promise<void>;
}

export function adminApi(url: string, token: string, caPem: string, connections: number): AdminApi {
  const dispatcher = new Agent({ connect: { ca: caPem }, connections });
  let retries = 0;
  const retry = async <T>(fn: () => Promise<T>): Promise<T> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        if (attempt >= 5) throw e;
        retries += 1;
        await new Promise((r) => setTimeout(r, 200 * attempt));
      }
    }
  };
  return {
    async call(method, path, body) {
      const headers = { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) };
      const r = await retry(() => request(`${url}${path}`, { method, dispatcher, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) }));
      const text = await r.body.text();
      if (r.statusCode >= 300) throw new Error(`${method} ${path}: ${r.statusCode} ${text}`);
      return text ? JSON.parse(text) : null;
    },
    get retries() {
      return retries;
    },
    destroy: () => dispatcher.destroy(),
  };
}
