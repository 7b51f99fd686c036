// The REST contract between coordinator, agents and admin clients (v1). Request and response
// schemas live here, so both sides validate against the same definitions, and every route
// declares what it may return (fastify serialises only the declared fields).
import { Type, type Static } from '@sinclair/typebox';
import { ClusterSpec, NodeDesired } from './schema.ts';
import { AgentStatus, ApplyTimings, Phase, ProbeResult, CertReport, SeedCheckReport } from './status.ts';

export const API_PREFIX = '/v1';

export const ErrorBody = Type.Object({
  code: Type.String(),
  message: Type.String(),
  /** For a refused spec: every problem, each naming its field. */
  errors: Type.Optional(Type.Array(Type.Object({ field: Type.String(), message: Type.String() }))),
});
export type ErrorBody = Static<typeof ErrorBody>;

// --- agent calls --------------------------------------------------------------------------

/** Join token, as printed by `pgaccord token create`: "pga1." + base64url(JSON of this). */
export const JoinTokenPayload = Type.Object({
  v: Type.Literal(1),
  /** Coordinator URL the agent may use if it was not given one. */
  url: Type.String(),
  /** Every coordinator sharing the store, first = url (tokens of several coordinators only: older agents read url). */
  urls: Type.Optional(Type.Array(Type.String(), { minItems: 1, maxItems: 16 })),
  cluster: Type.String(),
  node: Type.String(),
  /** Token id (public) and secret (hashed in the store). */
  id: Type.String(),
  secret: Type.String(),
  /** sha256 of the DER of the coordinator CA certificate, hex: the agent pins it. */
  caFingerprint: Type.String(),
});
export type JoinTokenPayload = Static<typeof JoinTokenPayload>;

export const EnrollRequest = Type.Object({ token: Type.String(), csr: Type.String() }, { additionalProperties: false });
export type EnrollRequest = Static<typeof EnrollRequest>;

export const EnrollResponse = Type.Object({
  cluster: Type.String(),
  node: Type.String(),
  /** The agent's identity certificate (mTLS client), PEM. */
  certificate: Type.String(),
  /** The coordinator CA (signs the coordinator's server certificate and agent identities), PEM. */
  coordinatorCa: Type.String(),
});
export type EnrollResponse = Static<typeof EnrollResponse>;

/** GET /v1/agent/desired?after=GEN: 200 with this when a newer generation exists, 204 after the wait. */
export const DesiredResponse = NodeDesired;

/**
 * GET /v1/agent/desired?after=GEN&peers=N: 202 with this when the desired state is unchanged but
 * more than N other nodes of the cluster have applied (and proved) GEN or newer: the agent
 * re-probes its edges to the ones it had not seen, without applying anything, and polls again
 * with peers set to the length of this list. Sent only to an agent that asks (`peers`): an older
 * agent never sees a 202.
 */
export const PeerWake = Type.Object({
  wake: Type.Literal('peers-applied'),
  /** Every other node at GEN or newer, as last reported. */
  applied: Type.Array(Type.Object({ node: Type.String(), generation: Type.Integer({ minimum: 0 }) }, { additionalProperties: false })),
}, { additionalProperties: false });
export type PeerWake = Static<typeof PeerWake>;

/** POST /v1/agent/csr: sign a CSR for one certificate slot of the node's desired state, or (slot "identity") renew the agent identity. */
export const CsrRequest = Type.Object({ slot: Type.String(), csr: Type.String() }, { additionalProperties: false });
export type CsrRequest = Static<typeof CsrRequest>;
export const CsrResponse = Type.Object({ certificate: Type.String(), serial: Type.String(), notAfter: Type.String() });
export type CsrResponse = Static<typeof CsrResponse>;

export const StatusRequest = AgentStatus;

// --- admin calls --------------------------------------------------------------------------

export const ClusterResponse = Type.Object({ generation: Type.Integer(), spec: ClusterSpec, warnings: Type.Array(Type.String()) });
export type ClusterResponse = Static<typeof ClusterResponse>;

export const PlanNode = Type.Object({
  node: Type.String(),
  /** Rendered pg_hba.conf block, pg_ident.conf block and settings include the node would get. */
  hba: Type.String(),
  ident: Type.String(),
  settings: Type.Record(Type.String(), Type.String()),
  roles: Type.Array(Type.String()),
  certificates: Type.Array(Type.String()),
  files: Type.Array(Type.String()),
  /** Human-readable differences from the current generation. */
  changes: Type.Array(Type.String()),
});
export const PlanResponse = Type.Object({ cluster: Type.String(), generation: Type.Integer(), nodes: Type.Array(PlanNode), warnings: Type.Array(Type.String()) });
export type PlanResponse = Static<typeof PlanResponse>;

/**
 * Expiry level of a certificate (or CA): `warning` when less than a third of its lifetime is left
 * (its renewal, due at about two thirds, is overdue), `critical` when less than a tenth is left,
 * `expired` past notAfter. For a CA, also `warning` below twice the leaf lifetime and `critical`
 * below one leaf lifetime (leaves are then cut short to the CA's end).
 */
export const ExpiryLevel = Type.Union([Type.Literal('ok'), Type.Literal('warning'), Type.Literal('critical'), Type.Literal('expired')]);
export type ExpiryLevel = Static<typeof ExpiryLevel>;

export const CertExpiry = Type.Object({
  id: Type.String(),
  serial: Type.String(),
  notAfter: Type.String(),
  daysLeft: Type.Number(),
  level: ExpiryLevel,
  /** served: seen in a TLS handshake with the server; installed: a pair on disk; identity: the agent's coordinator identity. */
  source: Type.Union([Type.Literal('served'), Type.Literal('installed'), Type.Literal('identity')]),
});
export type CertExpiry = Static<typeof CertExpiry>;

export const NodeStatusView = Type.Object({
  node: Type.String(),
  desiredGeneration: Type.Integer(),
  appliedGeneration: Type.Integer(),
  phase: Phase,
  enrolled: Type.Boolean(),
  lastContact: Type.Union([Type.String(), Type.Null()]),
  /** When the agent last sent its status (phase, errors, probes): what the rest of this view says is as of then. */
  reportedAt: Type.Union([Type.String(), Type.Null()]),
  stale: Type.Boolean(),
  errors: Type.Array(Type.Object({ code: Type.String(), message: Type.String() })),
  servedCertificate: Type.Union([CertReport, Type.Null()]),
  certificates: Type.Array(CertReport),
  probes: Type.Array(ProbeResult),
  pendingRestart: Type.Array(Type.String()),
  /** Days left of every certificate the node uses: the served one (from a real handshake), the installed pairs, the agent identity. */
  expiry: Type.Optional(Type.Array(CertExpiry)),
  /** The earliest instant something of this node expires if the coordinator stays away (certificates, CRL). */
  survivesUntil: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  /** The profile's verification queries after the node's last apply (pgd), as the agent reported them. */
  checks: Type.Optional(Type.Array(SeedCheckReport)),
  /** How long each phase of the node's apply of its current generation took, as the agent reported it. */
  timings: Type.Optional(ApplyTimings),
});
export type NodeStatusView = Static<typeof NodeStatusView>;

export const ClusterStatusResponse = Type.Object({
  cluster: Type.String(),
  generation: Type.Integer(),
  auth: Type.String(),
  sslmode: Type.String(),
  insecure: Type.Boolean(),
  converged: Type.Boolean(),
  nodes: Type.Array(NodeStatusView),
  /** The cluster CA(s): the current one first, during a rotation the other. */
  ca: Type.Optional(Type.Array(Type.Object({ serial: Type.String(), notAfter: Type.String(), daysLeft: Type.Number(), level: ExpiryLevel }))),
  /** Lifecycle warnings: a CA nearing its end, certificates past their renewal time. */
  warnings: Type.Optional(Type.Array(Type.String())),
});
export type ClusterStatusResponse = Static<typeof ClusterStatusResponse>;

export const TokenResponse = Type.Object({ token: Type.String(), expiresAt: Type.String() });

export const CertificateView = Type.Object({
  serial: Type.String(),
  node: Type.String(),
  slot: Type.String(),
  commonName: Type.String(),
  notBefore: Type.String(),
  notAfter: Type.String(),
  daysLeft: Type.Number(),
  revoked: Type.Boolean(),
  level: Type.Optional(ExpiryLevel),
  /** Still in use: the newest of its node and slot, neither revoked nor expired. */
  current: Type.Optional(Type.Boolean()),
  renewRequested: Type.Optional(Type.Boolean()),
});
export const CertificateListResponse = Type.Object({ cluster: Type.String(), certificates: Type.Array(CertificateView) });

export const RevokeResponse = Type.Object({
  cluster: Type.String(),
  serial: Type.String(),
  revokedAt: Type.String(),
  generation: Type.Integer(),
  alreadyRevoked: Type.Boolean(),
  /** Live certificates of the same node revoked with it because they carry the same key. */
  sameKey: Type.Array(Type.String()),
});
export const RenewRequest = Type.Object({ serial: Type.Optional(Type.String({ pattern: '^[0-9a-fA-F:]{1,95}$' })), node: Type.Optional(Type.String()) }, { additionalProperties: false });
export const RenewResponse = Type.Object({ cluster: Type.String(), generation: Type.Integer(), serials: Type.Array(Type.String()) });

/** GET/POST /v1/clusters/{c}/ca-rotation[/start|/finish]: where a CA rotation stands. */
export const CaRotationStatus = Type.Object({
  cluster: Type.String(),
  /** none: no rotation; trust: both CAs trusted, the old one issues; reissue: the new one issues, old leaves being replaced. */
  phase: Type.Union([Type.Literal('none'), Type.Literal('trust'), Type.Literal('reissue')]),
  generation: Type.Integer(),
  startedAt: Type.Union([Type.String(), Type.Null()]),
  trustGeneration: Type.Union([Type.Integer(), Type.Null()]),
  reissueGeneration: Type.Union([Type.Integer(), Type.Null()]),
  /** The CAs in the bundle: the issuing one first. */
  cas: Type.Array(Type.Object({ role: Type.Union([Type.Literal('issuing'), Type.Literal('old'), Type.Literal('new')]), serial: Type.String(), commonName: Type.String(), notAfter: Type.String() })),
  /** Per node, what the next step still waits for (empty: this node is ready). */
  nodes: Type.Array(Type.Object({ node: Type.String(), waiting: Type.Array(Type.String()) })),
  /** True when --finish would be accepted now. */
  canFinish: Type.Boolean(),
});
export type CaRotationStatus = Static<typeof CaRotationStatus>;

export const RotatePasswordsRequest = Type.Object({ role: Type.Optional(Type.String({ minLength: 1 })) }, { additionalProperties: false });
export const RotatePasswordsResponse = Type.Object({ cluster: Type.String(), generation: Type.Integer(), roles: Type.Array(Type.String()) });
