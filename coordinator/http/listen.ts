// The addresses the coordinator serves on (--listen, --metrics-listen): parsed by the command line
// before anything starts (coordinator/command.ts) and by the runtime (coordinator/main.ts).
import { isIP } from 'node:net';

export const DEFAULT_LISTEN = '127.0.0.1:7432';

/**
 * The HTTPS listener's accept queue: as long as the kernel allows (Linux caps it at
 * net.core.somaxconn, silently). Node's default, 511, overflowed when a fleet connected at once
 * (a coordinator restart): the kernel dropped the SYNs beyond it and each agent waited out TCP's
 * 1, 3, 7, 15 s retransmits (issue 13). Raise somaxconn for fleets beyond a few thousand agents.
 */
export const LISTEN_BACKLOG = 65535;

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
