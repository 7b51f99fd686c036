// bench:fleet's shape, from its FLEET_* variables (README "Benchmarks"), and the cluster specs
// it applies: one address of its own for every node, one HBA rule that differs each round.
import { availableParallelism } from 'node:os';
import type { ClusterSpec, ProfileName } from '../shared/contract/schema.ts';
import { PROFILES } from '../shared/pgconf/profiles.ts';
import { keyType } from './fleet-keys.ts';

const env = (name: string, dflt: number) => {
  const v = process.env[name];
  const n = v === undefined || v === '' ? dflt : Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name}: "${v}" is not a non-negative integer`);
  return n;
};
export const CLUSTERS = env('FLEET_CLUSTERS', 50);
export const NODES = env('FLEET_NODES', 4);
export const PROFILE = (process.env.FLEET_PROFILE ?? 'pgd') as ProfileName;
if (!(PROFILE in PROFILES)) throw new Error(`FLEET_PROFILE: "${PROFILE}" is not one of ${Object.keys(PROFILES).join(', ')}`);
export const PROCS = Math.max(1, Math.min(env('FLEET_PROCS', availableParallelism()), CLUSTERS * NODES));
export const KEY = keyType(process.env.FLEET_KEY);
export const CHANGES = env('FLEET_CHANGES', 3);
export const REPORTS = env('FLEET_REPORTS', 5);
export const STATUS_CONCURRENCY = Math.max(1, env('FLEET_STATUS_CONCURRENCY', 200));
export const ENROLL_CONCURRENCY = Math.max(1, env('FLEET_ENROLL_CONCURRENCY', 16));
/** Agents between their start and their first answer at once, over all agent processes ('first'; bench/fleet-agent-worker.ts 'run'). */
export const START_WINDOW = Math.max(1, env('FLEET_START_WINDOW', 512));
export const PUT_CONCURRENCY = Math.max(1, env('FLEET_PUT_CONCURRENCY', 8));
export const SINGLE = env('FLEET_SINGLE', 20);
export const RESTART = env('FLEET_RESTART', 1) !== 0;
export const STORM = env('FLEET_STORM', 1) !== 0;
export const LOG_LEVEL = process.env.FLEET_LOG_LEVEL ?? 'info';
export const TIMEOUT_MS = env('FLEET_TIMEOUT_S', 600) * 1000;
export const AGENTS = CLUSTERS * NODES;
// Loopback source addresses: one 127.0.0.1 -> coordinator pair has ~28k ephemeral ports, and a
// big fleet holds up to two connections per agent plus the enrolment connections in TIME_WAIT.
export const SOURCES = env('FLEET_SOURCE_ADDRS', AGENTS > 3000 ? Math.ceil(AGENTS / 2500) : 1);
export const PROBES = 8;

if (!(CLUSTERS >= 1 && NODES >= 1)) throw new Error('FLEET_CLUSTERS and FLEET_NODES must be >= 1');

/** The first node is the profile's first kind (primary, monitor, access node), the others its last. */
function kindOf(profile: ProfileName, i: number): string {
  const { kinds } = PROFILES[profile];
  return i === 0 ? kinds[0]! : kinds.at(-1)!;
}

/** 10.x.y.z of a number: an address of its own for every node of the fleet. */
const ip = (n: number) => `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`;

export function spec(name: string, c: number, nodes: number, profile: ProfileName, change: number): ClusterSpec {
  return {
    name,
    profile,
    auth: 'cert',
    tls: { sslmode: 'verify-full', certLifetime: '90d', keyType: KEY },
    nodes: Array.from({ length: nodes }, (_, i) => ({
      name: `n${i}`, host: `n${i}.${name}.fleet.test`, address: ip(c * nodes + i + 1), port: 5432, kind: kindOf(profile, i),
    })),
    // The users a TimescaleDB access node connects to its data nodes as (the profile needs one).
    ...(profile === 'timescaledb-multinode' ? { roles: [{ name: 'app' }] } : {}),
    // The change of each round: one HBA rule that differs (a new generation, same shape).
    ...(change > 0
      ? { hba: [{ type: 'hostssl' as const, database: 'postgres', user: 'fleet_bench', address: `10.250.${change % 256}.0/24`, method: 'reject' as const }] }
      : {}),
  };
}
