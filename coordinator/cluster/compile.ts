// Compile a validated cluster spec into each node's desired state. Pure: no clock, no
// randomness, no I/O; the same inputs give the same output, byte for byte.
import type { CertificateSlot, ClusterSpec, Edge, HbaRule, IdentLine, NodeDesired, NodeSpec, RoleDesired } from '../../shared/contract/schema.ts';
import { parseDuration } from './duration.ts';
import { hostCidr, isIP } from '../../shared/pgconf/net.ts';
import { PROFILES, type ProfileLink, type ProfileRole } from '../../shared/pgconf/profiles.ts';
import { renderHbaLine } from '../../shared/pgconf/render.ts';
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
  /** The client's own sslmode when it differs from the spec's (TimescaleDB: require). */
  sslmode?: 'require';
}

export const nodeAddress = (n: NodeSpec): string => n.address ?? n.host;
export const nodePort = (n: NodeSpec): number => n.port ?? 5432;
export const clientCertId = (role: string): string => `client-${role}`;

/** Every connection of the cluster, link by link (O(n^2) in a full mesh: compile uses one node's share). */
export function connections(spec: ClusterSpec): Connection[] {
  const out: Connection[] = [];
  for (const link of PROFILES[spec.profile].links) {
    const roles = link.roles(spec);
    for (const server of spec.nodes.filter((n) => n.kind === link.to)) {
      for (const client of spec.nodes.filter((n) => n.kind === link.from && (link.includeSelf === true || n.name !== server.name))) {
        for (const role of roles) out.push(linkConnection(spec, link, client, server, role));
      }
    }
  }
  return out;
}

/**
 * The spec's nodes by name and by kind: one node's connections are then found without a scan of
 * every pair of nodes (a full mesh of n nodes has n*(n-1) of them).
 */
export interface SpecIndex {
  spec: ClusterSpec;
  byName: Map<string, NodeSpec>;
  byKind: Map<string, NodeSpec[]>;
}

export function indexSpec(spec: ClusterSpec): SpecIndex {
  const byName = new Map<string, NodeSpec>();
  const byKind = new Map<string, NodeSpec[]>();
  for (const n of spec.nodes) {
    byName.set(n.name, n);
    const same = byKind.get(n.kind);
    if (same) same.push(n);
    else byKind.set(n.kind, [n]);
  }
  return { spec, byName, byKind };
}

function requireNode(ix: SpecIndex, name: string): NodeSpec {
  const n = ix.byName.get(name);
  if (!n) throw new Error(`cluster ${ix.spec.name} has no node ${name}`);
  return n;
}

/**
 * The connections `node` serves (`server`) or makes (`client`), in the order of
 * connections(spec): O(its own edges), the other end found by kind through the index.
 */
function connectionsAt(ix: SpecIndex, node: string, side: 'server' | 'client'): Connection[] {
  const self = requireNode(ix, node);
  const out: Connection[] = [];
  for (const link of PROFILES[ix.spec.profile].links) {
    if ((side === 'server' ? link.to : link.from) !== self.kind) continue;
    const roles = link.roles(ix.spec);
    for (const other of ix.byKind.get(side === 'server' ? link.from : link.to) ?? []) {
      if (link.includeSelf !== true && other.name === self.name) continue;
      const [client, server] = side === 'server' ? [other, self] : [self, other];
      for (const role of roles) out.push(linkConnection(ix.spec, link, client, server, role));
    }
  }
  return out;
}

export const incomingConnections = (ix: SpecIndex, node: string): Connection[] => connectionsAt(ix, node, 'server');
export const outgoingConnections = (ix: SpecIndex, node: string): Connection[] => connectionsAt(ix, node, 'client');

function linkConnection(spec: ClusterSpec, link: ProfileLink, client: NodeSpec, server: NodeSpec, role: string): Connection {
  return { client, server, role, databases: link.databases, dbname: link.dbname(spec), replication: link.replication, sslmode: link.sslmode };
}

/** A role as the cluster manages it: the profile's own, or one from the spec. */
export type ClusterRole = ProfileRole;

/** Every role the cluster manages on some node, profile roles first. */
export function clusterRoles(spec: ClusterSpec): ClusterRole[] {
  return [...PROFILES[spec.profile].roles, ...(spec.roles ?? []).map((r) => ({ name: r.name, replication: false, inRoles: [] }))];
}

/** The roles managed on nodes of one kind. */
export function nodeRoles(spec: ClusterSpec, kind: string): ClusterRole[] {
  return clusterRoles(spec).filter((r) => r.kinds === undefined || r.kinds.includes(kind));
}

export function rolesNeedingPasswords(spec: ClusterSpec): string[] {
  return spec.auth === 'scram-sha-256' ? clusterRoles(spec).filter((r) => r.password !== false).map((r) => r.name) : [];
}

/** The id and CN of the client certificate a role connects with under cert auth. */
export function clientIdentity(spec: ClusterSpec, role: string): { id: string; commonName: string } {
  const shared = PROFILES[spec.profile].certIdentity;
  return shared ? { id: clientCertId(shared.commonName), commonName: shared.commonName } : { id: clientCertId(role), commonName: role };
}

export function certLifetimeSeconds(spec: ClusterSpec): number {
  return parseDuration(spec.tls.certLifetime ?? DEFAULT_CERT_LIFETIME) ?? 90 * 86400;
}

/**
 * The managed rules of one node: one per (client address, databases, role) of its incoming
 * connections; a node that connects to itself and a peer at the same address need only one line.
 */
function managedHbaRules(spec: ClusterSpec, node: NodeSpec, incoming: Connection[]): HbaRule[] {
  const tls = spec.tls.sslmode !== 'disable';
  const certMap = spec.auth === 'cert' ? PROFILES[spec.profile].certIdentity : undefined;
  const hba: HbaRule[] = [];
  const seenRules = new Set<string>();
  for (const c of incoming) {
    const address = hostCidr(nodeAddress(c.client));
    const key = JSON.stringify([address, c.databases, c.role]);
    if (seenRules.has(key)) continue;
    seenRules.add(key);
    hba.push({
      type: tls ? 'hostssl' : 'host',
      databases: c.databases,
      users: [{ name: c.role }],
      address,
      method: spec.auth,
      ...(certMap ? { options: { map: certMap.map } } : {}),
      comment: `${c.client.name} -> ${node.name} as ${c.role}`,
    });
  }
  return hba;
}

/** The spec's operator rules as every node renders them, after the managed ones: hba[i] gives the i-th. */
function operatorHbaRules(spec: ClusterSpec): HbaRule[] {
  const tokens = (v: string | string[], keywords: string[]) =>
    (Array.isArray(v) ? v : [v]).map((name) => (keywords.includes(name) ? { keyword: name as 'all' } : { name }));
  return (spec.hba ?? []).map((rule) => ({
    type: rule.type,
    databases: tokens(rule.database, ['all', 'replication', 'sameuser', 'samerole']),
    users: tokens(rule.user, ['all']),
    ...(rule.address !== undefined ? { address: rule.address.includes('/') ? rule.address : hostCidr(rule.address) } : {}),
    method: rule.method,
    comment: 'operator rule from the cluster spec',
  }));
}

/**
 * INSECURE warnings, one per kind of rendered rule that lets a client in with no credential at
 * all (method trust): the managed rules under auth "trust" (their method is the auth model,
 * managedHbaRules; flagged even before a node has a peer to admit, as the next node added gets
 * them), and each operator rule with method trust, quoted as the pg_hba.conf line every node
 * renders. Empty: no node renders a trust rule. This is what `insecure` and the INSECURE
 * warnings of PUT, GET, plan and status say; it compiles no node, so it costs nothing per node.
 */
export function trustWarnings(spec: ClusterSpec): string[] {
  const w: string[] = [];
  if (spec.auth === 'trust') w.push('INSECURE: auth "trust" lets any peer address in without a password or certificate');
  operatorHbaRules(spec).forEach((rule, i) => {
    if (rule.method !== 'trust') return;
    const who = rule.users.map((u) => ('keyword' in u ? u.keyword : u.name)).join(',');
    w.push(`INSECURE: operator rule hba[${i}] "${renderHbaLine(rule)}" lets ${rule.type === 'local' ? 'any local OS user' : `any client from ${rule.address}`} in as ${who} without a password or certificate`);
  });
  return w;
}

/**
 * Where a node's compile reads role credentials: the verifier every server of the role stores,
 * and the password, which only a node that connects as the role is given (the coordinator opens
 * a sealed password only when such a node is compiled). Both throw when the role has none.
 */
export interface CredentialSource {
  verifier(role: string): string;
  password(role: string): string;
}

export function credentialRecord(credentials: Record<string, RoleCredential>): CredentialSource {
  return { verifier: (role) => requireCredential(credentials, role).verifier, password: (role) => requireCredential(credentials, role).password };
}

/** What one node's compile reads: the indexed spec and the cluster's secrets and trust files. */
export interface NodeCompileInput {
  index: SpecIndex;
  generation: number;
  credentials: CredentialSource;
  caBundle: string;
  crl: string | null;
}

export function compileCluster(input: CompileInput): Map<string, NodeDesired> {
  const nodeInput: NodeCompileInput = { index: indexSpec(input.spec), generation: input.generation, credentials: credentialRecord(input.credentials), caBundle: input.caBundle, crl: input.crl };
  const result = new Map<string, NodeDesired>();
  for (const node of input.spec.nodes) result.set(node.name, compileNode(nodeInput, node.name));
  return result;
}

/**
 * The certificate slots of one node: its server certificate (when TLS is on) and, under cert
 * auth, one client certificate per identity it connects as. What a CSR for a slot is checked
 * against, without compiling anything else.
 */
export function certificateSlots(ix: SpecIndex, nodeName: string, outgoing = outgoingConnections(ix, nodeName)): CertificateSlot[] {
  const { spec } = ix;
  const node = requireNode(ix, nodeName);
  const certificates: CertificateSlot[] = [];
  if (spec.tls.sslmode !== 'disable') {
    const address = nodeAddress(node);
    certificates.push({
      id: 'server',
      usage: 'server',
      commonName: node.host,
      dnsNames: isIP(node.host) ? [] : [node.host],
      ipAddresses: [...new Set([address, ...(isIP(node.host) ? [node.host] : [])])].filter((a) => isIP(a)),
    });
  }
  if (spec.auth === 'cert') {
    const seenIds = new Set<string>();
    for (const role of outgoingRoles(outgoing)) {
      const { id, commonName } = clientIdentity(spec, role);
      if (seenIds.has(id)) continue;
      seenIds.add(id);
      certificates.push({ id, usage: 'client', commonName, dnsNames: [], ipAddresses: [] });
    }
  }
  certificates.push(...(PROFILES[spec.profile].extraCertificates?.(spec, node) ?? []));
  return certificates;
}

const outgoingRoles = (outgoing: Connection[]): string[] => [...new Set(outgoing.map((c) => c.role))].sort();

/** One node's desired state: O(that node's connections), whatever the size of the cluster. */
export function compileNode(input: NodeCompileInput, nodeName: string): NodeDesired {
  const { index, credentials } = input;
  const { spec } = index;
  const node = requireNode(index, nodeName);
  const tls = spec.tls.sslmode !== 'disable';
  const incoming = incomingConnections(index, nodeName);
  const outgoing = outgoingConnections(index, nodeName);

  const profile = PROFILES[spec.profile];
  const certMap = spec.auth === 'cert' ? profile.certIdentity : undefined;
  const hba = [...managedHbaRules(spec, node, incoming), ...operatorHbaRules(spec)];

  // The certificate's CN mapped to each role it connects to this node as (seed 003).
  const ident: IdentLine[] = certMap
    ? [...new Set(incoming.map((c) => c.role))].sort().map((role) => ({ map: certMap.map, systemUser: certMap.commonName, databaseUser: role }))
    : [];
  const roles: RoleDesired[] = nodeRoles(spec, node.kind).map((r) => ({
    name: r.name,
    login: true,
    replication: r.replication,
    inRoles: r.inRoles,
    verifier: spec.auth === 'scram-sha-256' && r.password !== false ? credentials.verifier(r.name) : null,
    ...(r.superuser !== undefined ? { superuser: r.superuser } : {}),
    ...(r.connectionLimit !== undefined ? { connectionLimit: r.connectionLimit } : {}),
    ...(r.external ? { external: true } : {}),
  }));

  const certificates = certificateSlots(index, nodeName, outgoing);
  const knownPasswords = new Map(clusterRoles(spec).filter((r) => r.knownPassword !== undefined).map((r) => [r.name, r.knownPassword!]));

  const edges: Edge[] = outgoing.map((c) => ({
    to: c.server.name,
    role: c.role,
    host: c.server.host,
    port: nodePort(c.server),
    dbname: c.dbname,
    replication: c.replication,
    sslmode: spec.tls.sslmode !== 'disable' && c.sslmode !== undefined ? c.sslmode : spec.tls.sslmode,
    clientCertificate: spec.auth === 'cert' ? clientIdentity(spec, c.role).id : null,
    usesPassfile: spec.auth === 'scram-sha-256',
  }));

  const settings: Record<string, string> = { ...profile.settings };
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
    // Written only when not the default: an rsa-2048 cluster's desired state is unchanged.
    ...(spec.tls.keyType === 'ecdsa-p256' ? { keyType: spec.tls.keyType } : {}),
    hba,
    ident,
    settings,
    roles,
    certificates,
    clientSecrets: spec.auth === 'scram-sha-256'
      ? outgoingRoles(outgoing).map((role) => ({ role, password: knownPasswords.get(role) ?? credentials.password(role) }))
      : [],
    edges,
    caBundle: input.caBundle,
    crl: input.crl,
    ...(profile.clientLayout ? { clientLayout: profile.clientLayout } : {}),
    ...(profile.stableServerFiles ? { stableServerFiles: true } : {}),
    ...(spec.nodes.length === 1 ? { alone: true as const } : {}),
  };
}

function requireCredential(credentials: Record<string, RoleCredential>, role: string): RoleCredential {
  const c = credentials[role];
  if (!c) throw new Error(`no credential for role ${role}`);
  return c;
}
