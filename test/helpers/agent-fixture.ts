// A realistic node for the apply-engine tests: a throwaway PostgreSQL 15, the NodeContext the
// runtime would build for it, desired states compiled by the real compiler, and key/certificate
// pairs issued by a throwaway CA into the state directory under versioned names.
//
// The cluster is a two-peer `pgd` cluster whose both peers are this one server (127.0.0.1 on its
// port): node-1's outgoing edge to node-2 then reaches this very server, so the connection
// string the agent reports can be used as-is to prove the passfile and client certificates work.
import { randomBytes } from 'node:crypto';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import pino from 'pino';
import { compileCluster, type RoleCredential } from '../../coordinator/cluster/compile.ts';
import { runPg, type PgInstance } from '../../shared/system/pgserver.ts';
import type { AuthModel, ClusterSpec, NodeDesired, SslMode } from '../../shared/contract/schema.ts';
import { scramVerifier } from '../../shared/crypto/scram.ts';
import type { NodeContext } from '../../agent/apply/types.ts';
import type { InstalledCertificate } from '../../shared/pgconf/types.ts';
import { throwawayPg } from './pg.ts';
import { issueLeaf, makeCa, type TestCa } from './agent-certs.ts';

export const ROLE = 'pgd_replication';

export interface AgentFixture {
  pg: PgInstance;
  ctx: NodeContext;
  ca: TestCa;
  tlsDir: string;
  /** Issue a fresh server pair (new serial) and, for cert auth, the client pair. */
  issue(auth: AuthModel, opts?: { days?: number }): Promise<InstalledCertificate[]>;
  desired(o: DesiredOptions): NodeDesired;
}

export interface DesiredOptions {
  auth: AuthModel;
  sslmode: SslMode;
  generation?: number;
  password?: string;
  crl?: string | null;
  /** Extra operator rules from the spec. */
  hba?: ClusterSpec['hba'];
}

export function silentLogger() {
  return pino({ level: process.env.PGACCORD_TEST_LOG ?? 'silent' });
}

export function credentialFor(password: string, salt = Buffer.alloc(16, 7)): RoleCredential {
  return { password, verifier: scramVerifier(password, salt) };
}

export async function agentFixture(): Promise<AgentFixture> {
  const pg = await throwawayPg();
  const ca = await makeCa();
  after(() => ca.destroy()); // call agentFixture() at the top level of a test file, not in a hook
  const stateDir = join(pg.baseDir, 'state');
  const tlsDir = join(stateDir, 'tls');
  const ctx: NodeContext = {
    pgdata: pg.dataDir,
    pgHost: pg.socketDir,
    pgPort: pg.port,
    pgUser: 'postgres',
    stateDir,
    serverOsUser: pg.osUser,
    agentOsUser: userInfo().username,
    log: silentLogger(),
  };
  const spec = (o: DesiredOptions): ClusterSpec => ({
    name: 'accord',
    profile: 'pgd',
    auth: o.auth,
    tls: { sslmode: o.sslmode },
    nodes: [
      { name: 'node-1', host: '127.0.0.1', address: '127.0.0.1', port: pg.port, kind: 'peer' },
      { name: 'node-2', host: '127.0.0.1', address: '127.0.0.1', port: pg.port, kind: 'peer' },
    ],
    ...(o.hba ? { hba: o.hba } : {}),
  });
  return {
    pg,
    ctx,
    ca,
    tlsDir,
    async issue(auth, opts = {}) {
      const server = await issueLeaf(ca, { slot: 'server', commonName: '127.0.0.1', ips: ['127.0.0.1'], usage: 'server', dir: tlsDir, owner: pg.osUser, days: opts.days });
      if (auth !== 'cert') return [server];
      const client = await issueLeaf(ca, { slot: `client-${ROLE}`, commonName: ROLE, usage: 'client', dir: tlsDir, owner: pg.osUser, days: opts.days });
      return [server, client];
    },
    desired(o) {
      const credentials: Record<string, RoleCredential> = o.auth === 'scram-sha-256' ? { [ROLE]: credentialFor(o.password ?? 'correct horse battery staple') } : {};
      const nodes = compileCluster({ spec: spec(o), generation: o.generation ?? 1, credentials, caBundle: ca.certPem, crl: o.crl ?? null });
      return nodes.get('node-1')!;
    },
  };
}

export const randomPassword = (): string => randomBytes(18).toString('base64url');

/** Connect with libpq exactly as the profile's client would (as the server's OS user), run one query. */
export async function psqlAs(pg: PgInstance, conninfo: string, sql = 'SELECT current_user'): Promise<string> {
  const out = await runPg('psql', ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', conninfo, '-c', sql], pg.osUser, { env: { PGCONNECT_TIMEOUT: '5' } });
  return out.trim();
}
