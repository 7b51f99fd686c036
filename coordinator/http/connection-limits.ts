// How many HTTPS connections the coordinator holds open, apart from server.ts (fastify) so that
// `pgaccord coordinator` can check --max-connections and show the default without loading it.
export const DEFAULT_MAX_CONNECTIONS = 1000;
/** The most --max-connections accepts (each is a file descriptor; the open-files limit bounds it too). */
export const MAX_CONNECTIONS_LIMIT = 1_000_000;

export const validMaxConnections = (n: number): boolean => Number.isInteger(n) && n >= 1 && n <= MAX_CONNECTIONS_LIMIT;

/** --max-connections N: a whole number of connections, 1..MAX_CONNECTIONS_LIMIT. */
export function parseMaxConnections(text: string): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!validMaxConnections(n)) throw new Error(`--max-connections: "${text}" is not a number of connections (1..${MAX_CONNECTIONS_LIMIT})`);
  return n;
}
