// The agent's internal seams: configuration, what the runtime hands to the apply engine (the
// installed pairs are shared/pgconf/types.ts, the planner's), and what one apply reports.
import type { Logger } from 'pino';
import type { NodeDesired } from '../../shared/contract/schema.ts';
import type { CertReport, FileReport, Phase } from '../../shared/contract/status.ts';
import type { OsUser } from '../../shared/system/pgserver.ts';
import type { ClientConnection, InstalledCertificate } from '../../shared/pgconf/types.ts';
import type { Problem } from '../../shared/contract/problem.ts';
import type { Static } from '@sinclair/typebox';

export interface AgentConfig {
  coordinatorUrl: string;
  cluster: string;
  node: string;
  /** PostgreSQL data directory (its owner is the OS user files are written for). */
  pgdata: string;
  /** Unix socket directory or host of the local server. */
  pgHost: string;
  pgPort: number;
  /** Database role the agent connects as over the local socket (peer auth). */
  pgUser: string;
  /** Where keys, certificates, passfiles and the last good desired state live (0700). */
  stateDir: string;
  /** Home directory of the profile's client when not the PGDATA owner's passwd home. */
  clientHome?: string;
  joinToken?: string;
}

/** Where the apply engine finds local PostgreSQL and whom files belong to. */
export interface NodeContext {
  pgdata: string;
  pgHost: string;
  pgPort: number;
  pgUser: string;
  stateDir: string;
  /** Owner of PGDATA: every managed file is written for this user. */
  serverOsUser: OsUser;
  /** The OS user the agent runs as (root or postgres), allowed in by the anti-lockout rule. */
  agentOsUser: string;
  log: Logger;
}

export interface ApplyInput {
  desired: NodeDesired;
  certificates: InstalledCertificate[];
}

export interface ApplyResult {
  phase: Phase;
  /** Whether any file or role changed (and a reload happened). */
  changed: boolean;
  errors: Problem[];
  files: Static<typeof FileReport>[];
  pendingRestart: string[];
  servedCertificate: CertReport | null;
  /** One per outgoing edge, for the probes and for status. */
  clientConnections: ClientConnection[];
  /** The seed's verification queries and their results (pgd), for status. */
  checks?: import('./verify.ts').SeedCheck[];
  /** Milliseconds per phase of the apply (render, install, validate, reload, prove, finish). */
  phases?: Record<string, number>;
}

export type { NodeDesired };
