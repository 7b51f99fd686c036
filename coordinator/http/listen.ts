// The addresses the coordinator serves on (--listen, --metrics-listen): parsed by the command line
// before anything starts (coordinator/command.ts) and by the runtime (coordinator/main.ts).
import { isIP } from 'node:net';

export const DEFAULT_LISTEN = '127.0.0.1:7432';

export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!m || !host || port > 65535 || (m[1] !== undefined && isIP(m[1]) !== 6)) {
    throw new Error(`--listen: "${text}" is not HOST:PORT (e.g. 127.0.0.1:7432, [::1]:7432)`);
  }
  return { host, port };
}

/** --metrics-listen: HOST:PORT, or a bare PORT on loopback. */
export function parseMetricsListen(text: string): { host: string; port: number } {
  try {
    return parseListen(/^\d{1,5}$/.test(text) ? `127.0.0.1:${text}` : text);
  } catch {
    throw new Error(`--metrics-listen: "${text}" is not HOST:PORT or PORT (e.g. 9464, 127.0.0.1:9464, [::1]:9464)`);
  }
}
