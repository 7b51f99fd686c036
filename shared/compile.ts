// Compile a validated cluster spec into each node's desired state. Pure: no clock, no
// randomness, no I/O; the same inputs give the same output, byte for byte.
import type { CertificateSlot, ClusterSpec, Edge, HbaRule, IdentLine, NodeDesired, NodeSpec, RoleDesired } from './schema.ts';
import { parseDuration } from './duration.ts';
import { hostCidr, isIP } from './net.ts';
import { PROFILES } from './profiles.ts';
import { DEFAULT_CERT_LIFETIME } from './spec.ts';

export interface RoleCredential {
  /** Plaintext: only ever sent to the connecting side, for its passfile. */
  password: string;
  /** SCRAM-SHA-256 verifier: what the servers store. */
  verifier: string;
}

export interface CompileInput {
  spec: ClusterSpec;
  generation: number;
  /** Credentials for every role returned by rolesNeedingPasswords(spec), when auth is scram. */
  credentials: Record<string, RoleCredential>;
  caBundle: string;
  crl: string | null;
}

/** A single inter-node connection: client node to server node as role. */
export interface Connection {
  client: NodeSpec;
  server: NodeSpec;
  role: string;
  databases: HbaRule['databases'];
  dbname: string;
  replication: boolean;
}

export const nodeAddress = (n: NodeSpec): string => n.address ?? n.host;
export const nodePort = (n: NodeSpec): number => n.port ?? 5432;
export const clientCertId = (role: string): string => `client-${role}`;

export function connections(spec: ClusterSpec): Connection[] {
  const out: Connection[] = [];
  for (const link of PROFILES[spec.profile].links) {
    const roles = link.roles(spec);
    for (const server of spec.nodes.filter((n) => n.kind === link.to)) {
      for (const client of spec.nodes.filter((n) => n.kind === link.from && n.name !== server.name)) {
        for (const role of roles) {
          out.push({ client, server, role, databases: link.databases, dbname: link.dbname, replication: link.replication });
        }
      }
    }
  }
  return out;
}

/** Every role the cluster creates, profile roles first. */
export function clusterRoles(spec: ClusterSpec): { name: string; replication: boolean; inRoles: string[] }[] {
  return [...PROFILES[spec.profile].roles, ...(spec.roles ?? []).map((r) => ({ name: r.name, replication: false, inRoles: [] }))];
}

export function rolesNeedingPasswords(spec: ClusterSpec): string[] {
  return spec.auth === 'scram-sha-256' ? clusterRoles(spec).map((r) => r.name) : [];
}

export function certLifetimeSeconds(spec: ClusterSpec): number {
  return parseDuration(spec.tls.certLifetime ?? DEFAULT_CERT_LIFETIME) ?? 90 * 86400;
}

export function compileCluster(input: CompileInput): Map<string, NodeDesired> {
  const { spec } = input;
  const all = connections(spec);
  const result = new Map<string, NodeDesired>();
  for (const node of spec.nodes) result.set(node.name, compileNode(input, node, all));
  return result;
}

function compileNode(input: CompileInput, node: NodeSpec, all: Connection[]): NodeDesired {
  const { spec, credentials } = input;
  const tls = spec.tls.sslmode !== 'disable';
  const incoming = all.filter((c) => c.server.name === node.name);
  const outgoing = all.filter((c) => c.client.name === node.name);

  const hba: HbaRule[] = incoming.map((c) => ({
    type: tls ? 'hostssl' : 'host',
    databases: c.databases,
    users: [{ name: c.role }],
    address: hostCidr(nodeAddress(c.client)),
    method: spec.auth,
    comment: `${c.client.name} -> ${node.name} as ${c.role}`,
  }));
  for (const rule of spec.hba ?? []) {
    const tokens = (v: string | string[], keywords: string[]) =>
      (Array.isArray(v) ? v : [v]).map((name) => (keywords.includes(name) ? { keyword: name as 'all' } : { name }));
    hba.push({
      type: rule.type,
      databases: tokens(rule.database, ['all', 'replication', 'sameuser', 'samerole']),
      users: tokens(rule.user, ['all']),
      ...(rule.address !== undefined ? { address: rule.address.includes('/') ? rule.address : hostCidr(rule.address) } : {}),
      method: rule.method,
      comment: 'operator rule from the cluster spec',
    });
  }

  const ident: IdentLine[] = [];
  const roles: RoleDesired[] = clusterRoles(spec).map((r) => ({
    name: r.name,
    login: true,
    replication: r.replication,
    inRoles: r.inRoles,
    verifier: spec.auth === 'scram-sha-256' ? requireCredential(credentials, r.name).verifier : null,
  }));

  const certificates: CertificateSlot[] = [];
  if (tls) {
    const address = nodeAddress(node);
    certificates.push({
      id: 'server',
      usage: 'server',
      commonName: node.host,
      dnsNames: isIP(node.host) ? [] : [node.host],
      ipAddresses: [...new Set([address, ...(isIP(node.host) ? [node.host] : [])])].filter((a) => isIP(a)),
    });
  }
  const outgoingRoles = [...new Set(outgoing.map((c) => c.role))].sort();
  if (spec.auth === 'cert') {
    for (const role of outgoingRoles) {
      certificates.push({ id: clientCertId(role), usage: 'client', commonName: role, dnsNames: [], ipAddresses: [] });
    }
  }

  const edges: Edge[] = outgoing.map((c) => ({
    to: c.server.name,
    role: c.role,
    host: c.server.host,
    port: nodePort(c.server),
    dbname: c.dbname,
    replication: c.replication,
    sslmode: spec.tls.sslmode,
    clientCertificate: spec.auth === 'cert' ? clientCertId(c.role) : null,
    usesPassfile: spec.auth === 'scram-sha-256',
  }));

  const settings: Record<string, string> = { ...PROFILES[spec.profile].settings };
  if (tls) {
    settings.ssl = 'on';
    settings.ssl_min_protocol_version = 'TLSv1.2';
  }
  if (spec.auth === 'scram-sha-256') settings.password_encryption = 'scram-sha-256';

  return {
    apiVersion: 1,
    cluster: spec.name,
    node: node.name,
    kind: node.kind,
    generation: input.generation,
    profile: spec.profile,
    auth: spec.auth,
    sslmode: spec.tls.sslmode,
    tls,
    certLifetimeSeconds: certLifetimeSeconds(spec),
    hba,
    ident,
    settings,
    roles,
    certificates,
    clientSecrets: spec.auth === 'scram-sha-256'
      ? outgoingRoles.map((role) => ({ role, password: requireCredential(credentials, role).password }))
      : [],
    edges,
    caBundle: input.caBundle,
    crl: input.crl,
  };
}

function requireCredential(credentials: Record<string, RoleCredential>, role: string): RoleCredential {
  const c = credentials[role];
  if (!c) throw new Error(`no credential for role ${role}`);
  return c;
}
