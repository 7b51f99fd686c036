// Address checks for the spec: pure, no DNS.
import { isIP } from 'node:net';

export { isIP };

/** A CIDR (a.b.c.d/n or v6/n) with host bits allowed, or a bare IP. */
export function parseCidr(text: string): { ip: string; prefix: number; family: 4 | 6 } | null {
  // isIP accepts IPv6 zone IDs (fe80::1%eth0); an HBA address cannot carry one.
  if (text.includes('%')) return null;
  const [ip, prefixText, ...rest] = text.split('/');
  if (rest.length > 0 || ip === undefined) return null;
  const family = isIP(ip) as 0 | 4 | 6;
  if (family === 0) return null;
  const max = family === 4 ? 32 : 128;
  if (prefixText === undefined) return { ip, prefix: max, family };
  if (!/^\d{1,3}$/.test(prefixText)) return null;
  const prefix = Number(prefixText);
  if (prefix > max) return null;
  return { ip, prefix, family };
}

/** The HBA address for one peer: its exact address as a host-length CIDR. */
export function hostCidr(ip: string): string {
  return isIP(ip) === 6 ? `${ip}/128` : `${ip}/32`;
}

const HOSTNAME = /^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/;
export function isHostname(text: string): boolean {
  return HOSTNAME.test(text);
}
