// The coordinator's logic, independent of HTTP: cluster specs and generations, per-cluster CAs,
// role credentials, join tokens and enrollment, agent identities, desired state, status.
// The clock is a parameter (`now`), so token expiry and staleness can be tested.
// A facade: each concern lives in coordinator/service/ (one module each), over one shared
// context (coordinator/service/context.ts); this class wires them and keeps the one API the
// HTTP routes, the process and the tests call.
import type { CaRotationStatus, ClusterStatusResponse, CsrResponse, EnrollResponse, PeerWake, PlanResponse } from '../shared/contract/api.ts';
import type { ClusterSpec, NodeDesired } from '../shared/contract/schema.ts';
import type { AgentStatus } from '../shared/contract/status.ts';
import type { Queryable, Store } from './store/store.ts';
import { CaRotations } from './service/ca-rotation.ts';
import { Certificates, type Revocation } from './service/certificates.ts';
import { ClusterCas } from './service/cluster-cas.ts';
import { Clusters } from './service/clusters.ts';
import { ServiceContext, type AgentPrincipal, type ServiceOptions } from './service/context.ts';
import { Crls } from './service/crls.ts';
import { DesiredStates, type PollOptions } from './service/desired-state.ts';
import { Identities } from './service/identities.ts';
import { checkMasterKey } from './service/master-key.ts';
import { Passwords } from './service/passwords.ts';
import { planCluster } from './service/preview.ts';
import { StatusReports } from './service/status.ts';

export { CRL_LIFETIME_S, IDENTITY_LIFETIME_S, type AgentPrincipal, type ServiceOptions } from './service/context.ts';
export { AGENT_CN, DEFAULT_TOKEN_TTL_S, IDENTITY_URI_PREFIX, identityUri, parseIdentityUri } from './service/identities.ts';
export { canonicalJson } from './service/stored-specs.ts';

export class CoordinatorService {
  readonly #ctx: ServiceContext;
  readonly #cas: ClusterCas;
  readonly #crls: Crls;
  readonly #certificates: Certificates;
  readonly #identities: Identities;
  readonly #passwords: Passwords;
  readonly #rotations: CaRotations;
  readonly #desired: DesiredStates;
  readonly #clusters: Clusters;
  readonly #status: StatusReports;

  constructor(opts: ServiceOptions) {
    const ctx = (this.#ctx = new ServiceContext(opts));
    const cas = (this.#cas = new ClusterCas(ctx));
    const crls = (this.#crls = new Crls(ctx, cas));
    const passwords = (this.#passwords = new Passwords(ctx));
    const rotations = (this.#rotations = new CaRotations(ctx, cas, crls));
    const identities = (this.#identities = new Identities(ctx));
    const desired = (this.#desired = new DesiredStates(ctx, { crls, passwords, rotations, recordContact: (agent) => identities.recordContact(agent) }));
    this.#certificates = new Certificates(ctx, cas, crls);
    this.#clusters = new Clusters(ctx, { cas, crls, passwords, desired });
    this.#status = new StatusReports(ctx, { cas, desired, passwords, rotations });
  }

  get store(): Store {
    return this.#ctx.store;
  }

  get now(): () => Date {
    return this.#ctx.now;
  }

  get longPollMs(): number {
    return this.#ctx.longPollMs;
  }

  /** Long-polls held now (tests wait for one to be held before the change meant to wake it). */
  get longPollsHeld(): number {
    return this.#desired.held;
  }

  get identityLifetimeSeconds(): number {
    return this.#ctx.identityLifetimeSeconds;
  }

  get crlLifetimeSeconds(): number {
    return this.#ctx.crlLifetimeSeconds;
  }

  /** URL written into join tokens. */
  get publicUrl(): string {
    return this.#ctx.publicUrl;
  }

  set publicUrl(url: string) {
    this.#ctx.publicUrl = url;
  }

  get coordinatorCaPem(): string {
    return this.#ctx.coordinatorCa.certPem;
  }

  get coordinatorCaFingerprint(): string {
    return this.#ctx.caFingerprint;
  }

  // --- the store (master-key.ts, stored-specs.ts) -----------------------------------------------

  checkMasterKey(): Promise<void> {
    return checkMasterKey(this.#ctx.store, this.#ctx.box);
  }

  resealAfterMigrations(applied: number[]): Promise<void> {
    return this.#ctx.specs.resealAfterMigrations(applied);
  }

  // --- clusters (clusters.ts, preview.ts, cluster-cas.ts) ---------------------------------------

  putCluster(name: string, body: unknown): Promise<{ generation: number; spec: ClusterSpec; warnings: string[]; changed: boolean }> {
    return this.#clusters.put(name, body);
  }

  getCluster(name: string): Promise<{ generation: number; spec: ClusterSpec; warnings: string[] }> {
    return this.#clusters.get(name);
  }

  listClusters(): Promise<{ name: string; generation: number }[]> {
    return this.#clusters.list();
  }

  deleteCluster(name: string): Promise<void> {
    return this.#clusters.delete(name);
  }

  plan(name: string, body: unknown): Promise<PlanResponse> {
    return planCluster(this.#ctx, { cas: this.#cas, passwords: this.#passwords, desired: this.#desired }, name, body);
  }

  /** The cluster's CA bundle (during a rotation, the other CA after the issuing one). */
  clusterCaPem(name: string, c?: Queryable): Promise<string> {
    return this.#cas.bundle(name, c);
  }

  // --- certificates and CRLs (certificates.ts, crls.ts) -----------------------------------------

  refreshCrl(cluster: string): Promise<boolean> {
    return this.#crls.refresh(cluster);
  }

  refreshAllCrls(): Promise<void> {
    return this.#crls.refreshAll();
  }

  crlPem(cluster: string): Promise<string> {
    return this.#crls.pem(cluster);
  }

  revoke(cluster: string, serial: string): Promise<Revocation> {
    return this.#certificates.revoke(cluster, serial);
  }

  requestRenewal(cluster: string, target: { serial?: string; node?: string }): Promise<{ cluster: string; generation: number; serials: string[] }> {
    return this.#certificates.requestRenewal(cluster, target);
  }

  listCertificates(name: string): ReturnType<Certificates['list']> {
    return this.#certificates.list(name);
  }

  /** An agent's CSR: a new identity (slot 'identity', identities.ts) or a cluster certificate for one of its node's slots. */
  async signCsr(agent: AgentPrincipal, slot: string, csrPem: string): Promise<CsrResponse> {
    const publicKey = await this.#ctx.csrPublicKey(csrPem);
    return slot === 'identity' ? this.#identities.renew(agent, publicKey) : this.#certificates.sign(agent, slot, publicKey);
  }

  // --- rotations (passwords.ts, ca-rotation.ts) -------------------------------------------------

  rotatePasswords(cluster: string, role?: string): Promise<{ cluster: string; generation: number; roles: string[] }> {
    return this.#passwords.rotate(cluster, role);
  }

  startCaRotation(cluster: string): Promise<CaRotationStatus> {
    return this.#rotations.start(cluster);
  }

  caRotationStatus(cluster: string): Promise<CaRotationStatus> {
    return this.#rotations.status(cluster);
  }

  finishCaRotation(cluster: string): Promise<CaRotationStatus> {
    return this.#rotations.finish(cluster);
  }

  // --- join tokens, enrolment, identities (identities.ts) ---------------------------------------

  createToken(cluster: string, node: string, ttlSeconds?: number): Promise<{ token: string; expiresAt: string }> {
    return this.#identities.createToken(cluster, node, ttlSeconds);
  }

  enroll(token: string, csrPem: string): Promise<EnrollResponse> {
    return this.#identities.enroll(token, csrPem);
  }

  authenticateAgent(identity: { cluster: string; node: string }, serial: string): Promise<AgentPrincipal> {
    return this.#identities.authenticate(identity, serial);
  }

  recordContact(agent: AgentPrincipal): Promise<void> {
    return this.#identities.recordContact(agent);
  }

  // --- the agent's desired state and reports (desired-state.ts, status.ts) ----------------------

  /** Long-poll for the node's desired state newer than `after` (DesiredStates.poll). */
  desired(agent: AgentPrincipal, after: number, signal?: AbortSignal, waitMs = this.longPollMs, opts: PollOptions = {}): Promise<NodeDesired | PeerWake | null> {
    return this.#desired.poll(agent, after, signal, waitMs, opts);
  }

  reportStatus(agent: AgentPrincipal, report: AgentStatus): Promise<void> {
    return this.#status.report(agent, report);
  }

  status(name: string): Promise<ClusterStatusResponse> {
    return this.#status.status(name);
  }
}
