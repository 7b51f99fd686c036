// Agent status, reported to the coordinator: the phase of its last apply, the files and certificates
// it holds, its probes and timings. TypeBox schemas, as in ./schema.ts (spec and desired state).
import { Type, type Static } from '@sinclair/typebox';
import { Nullable } from './schema.ts';

export const Phase = Type.Union([
  Type.Literal('converged'),
  Type.Literal('applying'),
  Type.Literal('failed'),
  Type.Literal('pending-restart'),
  Type.Literal('stale'),
  Type.Literal('unknown'),
]);
export type Phase = Static<typeof Phase>;

export const FileReport = Type.Object(
  { path: Type.String(), sha256: Type.String(), owner: Type.String(), mode: Type.String() },
  { additionalProperties: false },
);

export const ProbeResult = Type.Object(
  {
    to: Type.String(),
    role: Type.String(),
    ok: Type.Boolean(),
    /** The connection string used, never with a password. */
    conninfo: Type.String(),
    tlsVersion: Nullable(Type.String()),
    cipher: Nullable(Type.String()),
    error: Nullable(Type.String()),
    at: Type.String(),
    /**
     * What made the agent run this probe: apply (after applying, or re-applying, its state), retry
     * (the safety timer after a failed probe), peer-applied (the coordinator said the peer applied
     * a new generation). Absent from older agents.
     */
    reason: Type.Optional(Type.String({ maxLength: 32 })),
    /**
     * The generation the peer was known to have applied when the probe began (0: not known): a
     * probe made before the peer applied the prober's generation proved its old configuration.
     * Absent from older agents.
     */
    peerGeneration: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);
export type ProbeResult = Static<typeof ProbeResult>;


/** The phases of the pass that applied the node's current generation, each in milliseconds. */
export const APPLY_PHASES = ['certs', 'render', 'install', 'validate', 'reload', 'prove', 'finish', 'probe', 'report'] as const;
export type ApplyPhaseName = (typeof APPLY_PHASES)[number];
export const ApplyTimings = Type.Object(
  {
    generation: Type.Integer({ minimum: 0 }),
    /** When the pass began (the agent's clock). */
    startedAt: Type.String(),
    /**
     * Milliseconds per phase, each measured on its own: certs (certificate pairs ensured), render,
     * install, validate, reload, prove, finish (the apply engine; finish: pending restarts,
     * clean-up, the profile's checks, file reports), probe (the inter-node probes), report
     * (the status post that carried the pass: known once it returned, so sent from the next
     * report on). A phase the pass did not reach is absent.
     */
    phases: Type.Record(Type.String({ pattern: '^[a-z][a-z-]{0,31}$' }), Type.Number({ minimum: 0 }), { maxProperties: 16 }),
    /** From the beginning of the pass to the end of its probes (report excluded). */
    totalMs: Type.Number({ minimum: 0 }),
    /**
     * The last probe-only pass of this generation (reason peer-applied: a peer's wake; retry: the
     * safety timer): most edges are probed there, not in the apply's probe phase, which covers
     * only the peers known to hold the generation. `passes`: how many ran. Absent until one ran.
     */
    probePass: Type.Optional(Type.Object(
      { startedAt: Type.String(), reason: Type.String({ maxLength: 32 }), edges: Type.Integer({ minimum: 0 }), ms: Type.Number({ minimum: 0 }), passes: Type.Integer({ minimum: 1 }) },
      { additionalProperties: false },
    )),
  },
  { additionalProperties: false },
);
export type ApplyTimings = Static<typeof ApplyTimings>;

export const CertReport = Type.Object(
  { id: Type.String(), serial: Type.String(), notAfter: Type.String() },
  { additionalProperties: false },
);
export type CertReport = Static<typeof CertReport>;

/** One of a profile's own verification queries (pgd: seed 004's three), run after each apply. */
export const SeedCheckReport = Type.Object(
  {
    name: Type.String(),
    query: Type.String(),
    ok: Type.Boolean(),
    rows: Type.Array(Type.Record(Type.String(), Type.Unknown())),
    /** e.g. "bdr not installed" */
    note: Nullable(Type.String()),
  },
  { additionalProperties: false },
);
export type SeedCheckReport = Static<typeof SeedCheckReport>;

export const AgentStatus = Type.Object(
  {
    generation: Type.Integer({ minimum: 0 }),
    phase: Phase,
    errors: Type.Array(Type.Object({ code: Type.String(), message: Type.String() }, { additionalProperties: false })),
    files: Type.Array(FileReport),
    servedCertificate: Nullable(CertReport),
    certificates: Type.Array(CertReport),
    probes: Type.Array(ProbeResult),
    pendingRestart: Type.Array(Type.String()),
    coordinatorReachable: Type.Boolean(),
    /**
     * How long the node lasts without the coordinator: the earliest of its certificates' notAfter
     * (identity included) and its CRL's nextUpdate. Absent from older agents.
     */
    survivesUntil: Type.Optional(Nullable(Type.String())),
    /** The profile's verification queries after the last apply (pgd). Absent from older agents and other profiles. */
    checks: Type.Optional(Type.Array(SeedCheckReport)),
    /** How long each phase of the pass that applied `generation` took. Absent from older agents. */
    timings: Type.Optional(ApplyTimings),
    versions: Type.Object({ agent: Type.String(), postgres: Type.String() }, { additionalProperties: false }),
  },
  { additionalProperties: false },
);
export type AgentStatus = Static<typeof AgentStatus>;
