// The coordinator's logic, independent of HTTP: cluster specs and generations, per-cluster CAs,
// role credentials, join tokens and enrollment, agent identities, desired state, status.
// The clock is a parameter (`now`), so token expiry and staleness can be tested.
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { CaRotationStatus, CertExpiry, ClusterStatusResponse, CsrResponse, EnrollResponse, NodeStatusView, PeerWake, PlanResponse } from '../shared/contract/api.ts';
import { EventEmitter } from 'node:events';
import { caLevel, daysLeft, expiryLevel } from './cluster/lifecycle.ts';
import { certLifetimeSeconds, credentialRecord, indexSpec, rolesNeedingPasswords, trustWarnings } from './cluster/compile.ts';
import { DesiredCache, type ClusterDesired, type NodeCompiler } from './cluster/desired-cache.ts';
import { previewNode } from '../shared/pgconf/plan.ts';
import { renderHbaBlock, renderHbaLine, renderIdentBlock, renderIdentLine } from '../shared/pgconf/render.ts';
import type { ClusterSpec, NodeDesired } from '../shared/contract/schema.ts';
import type { AgentStatus } from '../shared/contract/status.ts';
import { certInfo, splitPemBundle } from '../shared/crypto/x509.ts';
import { CertificateAuthority } from './ca/ca.ts';
import type { SigningPool } from './ca/signing-pool.ts';
import { badRequest, gone, notFound } from './errors.ts';
import type { SecretBox } from './store/secrets.ts';
import type { Queryable, Store } from './store/store.ts';
import { StoreUnavailableError } from './store/store-hosts.ts';
import { CaRotations } from './service/ca-rotation.ts';
import { Certificates, type Revocation } from './service/certificates.ts';
import { ClusterCas } from './service/cluster-cas.ts';
import { ServiceContext, type AgentPrincipal, type ServiceOptions } from './service/context.ts';
import { Crls } from './service/crls.ts';
import { Identities } from './service/identities.ts';
import { checkMasterKey } from './service/master-key.ts';
import { Passwords } from './service/passwords.ts';
import { canonicalJson, CLUSTER_COLUMNS, type ClusterRow } from './service/stored-specs.ts';

export { CRL_LIFETIME_S, IDENTITY_LIFETIME_S, type AgentPrincipal, type ServiceOptions } from './service/context.ts';
export { AGENT_CN, DEFAULT_TOKEN_TTL_S, IDENTITY_URI_PREFIX, identityUri, parseIdentityUri } from './service/identities.ts';
export { canonicalJson } from './service/stored-specs.ts';




function insecureWarnings(spec: ClusterSpec): string[] {
  // Every rendered rule with method trust, operator rules included (issue 14).
  const w = trustWarnings(spec);
  if (spec.tls.sslmode === 'disable') w.push('TLS is disabled: inter-node traffic and SCRAM exchanges are not encrypted');
  else if (spec.tls.sslmode === 'require') w.push('sslmode "require" does not verify the server certificate (use verify-full)');
  return w;
}

export class CoordinatorService {
  readonly #ctx: ServiceContext;
  readonly #cas: ClusterCas;
  readonly #crls: Crls;
  readonly #certificates: Certificates;
  readonly #passwords: Passwords;
  readonly #rotations: CaRotations;
  readonly #identities: Identities;
  readonly store: Store;
  readonly now: () => Date;
  readonly longPollMs: number;
  readonly identityLifetimeSeconds: number;
  readonly crlLifetimeSeconds: number;
  readonly #box: SecretBox;
  readonly #coordinatorCa: CertificateAuthority;
  readonly #signing: SigningPool;
  readonly #caFingerprint: string;
  readonly #log: Logger;
  readonly #compileNode: NodeCompiler;
  /** Each node's desired state, compiled once per cluster generation (and trust files). */
  readonly #desired: DesiredCache;
  /**
   * Per cluster, each node's last reported applied generation (seeded from node_status on first
   * use), and an 'applied' event (cluster name) when one goes up: what wakes the long-polls that
   * asked for peer wakes. In process: with several coordinators, a report to another one wakes
   * nobody here, and the agents' probe retry timer covers it.
   */
  readonly #applied = new Map<string, Promise<Map<string, number>>>();
  readonly #peerEvents = new EventEmitter().setMaxListeners(0);

  constructor(opts: ServiceOptions) {
    const ctx = (this.#ctx = new ServiceContext(opts));
    this.store = ctx.store;
    this.#box = ctx.box;
    this.#coordinatorCa = ctx.coordinatorCa;
    this.#signing = ctx.signing;
    this.#caFingerprint = ctx.caFingerprint;
    this.#log = ctx.log;
    this.now = ctx.now;
    this.longPollMs = ctx.longPollMs;
    this.identityLifetimeSeconds = ctx.identityLifetimeSeconds;
    this.crlLifetimeSeconds = ctx.crlLifetimeSeconds;
    this.#compileNode = ctx.compileNode;
    this.#desired = new DesiredCache({ compile: this.#compileNode });
    this.#identities = new Identities(ctx);
    this.#cas = new ClusterCas(ctx);
    this.#crls = new Crls(ctx, this.#cas);
    this.#certificates = new Certificates(ctx, this.#cas, this.#crls);
    this.#passwords = new Passwords(ctx);
    this.#rotations = new CaRotations(ctx, this.#cas, this.#crls);
  }

  /** Refuse to run with a master key other than the one that sealed this store's secrets. */
  checkMasterKey(): Promise<void> {
    return checkMasterKey(this.store, this.#box);
  }

  /** See StoredSpecs.resealAfterMigrations. */
  resealAfterMigrations(applied: number[]): Promise<void> {
    return this.#ctx.specs.resealAfterMigrations(applied);
  }

  /** URL written into join tokens. */
  get publicUrl(): string {
    return this.#ctx.publicUrl;
  }

  set publicUrl(url: string) {
    this.#ctx.publicUrl = url;
  }

  get coordinatorCaPem(): string {
    return this.#coordinatorCa.certPem;
  }

  get coordinatorCaFingerprint(): string {
    return this.#caFingerprint;
  }

  // --- clusters -------------------------------------------------------------------------------

  async putCluster(name: string, body: unknown): Promise<{ generation: number; spec: ClusterSpec; warnings: string[]; changed: boolean }> {
    const spec = this.#ctx.specs.validate(name, body);
    const canonical = canonicalJson(spec);
    const now = this.now();
    const existingCa = await this.store.query(`SELECT 1 FROM cluster_cas WHERE cluster = $1`, [name]);
    // Keys are made outside the transaction (tens of ms); an unused one is simply dropped.
    const newCa = existingCa.length === 0 ? await CertificateAuthority.create(`pgaccord ${name} CA`, now) : null;
    const result = await this.store.tx(async (c) => {
      const incarnation = randomUUID();
      const inserted = await c.query(
        `INSERT INTO clusters (name, spec, spec_canonical, generation, created_at, updated_at, incarnation, spec_seal) VALUES ($1, $2, $3, 1, $4, $4, $5, $6) ON CONFLICT (name) DO NOTHING`,
        [name, JSON.stringify(spec), canonical, now, incarnation, this.#ctx.specs.seal({ name, incarnation, generation: 1 }, canonical)],
      );
      const row = (await c.query<ClusterRow>(`SELECT ${CLUSTER_COLUMNS} FROM clusters WHERE name = $1 FOR UPDATE`, [name])).rows[0]!;
      let generation = row.generation;
      // A row changed behind the API (seal broken) is rewritten by applying the spec again.
      const changed = inserted.rowCount === 1 || row.spec_canonical !== canonical || !this.#ctx.specs.sealHolds(row);
      if (changed && inserted.rowCount !== 1) {
        generation += 1;
        const kept = new Set(spec.nodes.map((n) => n.name));
        const removed = row.spec.nodes.map((n) => n.name).filter((n) => !kept.has(n));
        if (removed.length > 0) await this.#crls.revokeNodes(c, name, removed, now);
        await c.query(`UPDATE clusters SET spec = $2, spec_canonical = $3, generation = $4, updated_at = $5, spec_seal = $6 WHERE name = $1`, [name, JSON.stringify(spec), canonical, generation, now, this.#ctx.specs.seal({ name, incarnation: row.incarnation, generation }, canonical)]);
      }
      if (newCa) {
        await c.query(`INSERT INTO cluster_cas (cluster, cert_pem, key_sealed, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (cluster) DO NOTHING`, [
          name,
          newCa.ca.certPem,
          this.#box.seal(newCa.keyPem, `cluster-ca:${name}`),
          now,
        ]);
      }
      await this.#passwords.ensure(c, spec, now);
      // A cluster has a CRL from its first generation: pg_autoctl create refuses an
      // --ssl-crl-file that does not exist yet, and a server should check revocation from day one.
      if (inserted.rowCount === 1) await this.#crls.issue(c, name, now);
      if (changed) await this.store.notify(c, name);
      return { generation, changed };
    });
    this.store.events.emit('cluster', name);
    this.#log.info({ cluster: name, generation: result.generation, changed: result.changed }, 'cluster spec stored');
    return { generation: result.generation, spec, warnings: insecureWarnings(spec), changed: result.changed };
  }

  async getCluster(name: string): Promise<{ generation: number; spec: ClusterSpec; warnings: string[] }> {
    const row = await this.#ctx.requireCluster(name);
    return { generation: row.generation, spec: row.spec, warnings: insecureWarnings(row.spec) };
  }

  async listClusters(): Promise<{ name: string; generation: number }[]> {
    return this.store.query<{ name: string; generation: number }>(`SELECT name, generation FROM clusters ORDER BY name`);
  }

  async deleteCluster(name: string): Promise<void> {
    await this.store.tx(async (c) => {
      const r = await c.query(`DELETE FROM clusters WHERE name = $1`, [name]);
      if (r.rowCount === 0) throw notFound(`no cluster "${name}"`);
      await this.store.notify(c, name);
    });
    this.#cas.forget(name);
    this.#desired.drop(name);
    this.#applied.delete(name);
    this.#passwords.forget(name);
    this.store.events.emit('cluster', name);
    this.#log.info({ cluster: name }, 'cluster deleted');
  }

  /**
   * The cache entry of a cluster row's generation. The trust files are read each time (one
   * indexed read) and key the entry too; the credentials only when a node is first compiled.
   */
  async #entry(row: ClusterRow): Promise<ClusterDesired> {
    const inputs = { spec: row.spec, incarnation: row.incarnation, generation: row.generation, ...(await this.#cas.trustFiles(row.name)) };
    // Only scram clusters have credentials to read (compile asks for none otherwise).
    const load = rolesNeedingPasswords(row.spec).length > 0 ? () => this.#passwords.source(row.name) : async () => credentialRecord({});
    return this.#desired.entry(row.name, inputs, load);
  }

  /** One node's desired state: compiled at most once per generation, with the renewals asked of it now. */
  async #nodeDesired(row: ClusterRow, node: string): Promise<NodeDesired> {
    const [desired, renew] = await Promise.all([this.#entry(row).then((e) => e.node(node)), this.#renewSerials(row.name, node)]);
    // The cached state is shared: a copy carries this request's renewals.
    return renew.length > 0 ? { ...desired, renewSerials: renew } : desired;
  }

  /**
   * Serials the node is asked to renew now: requested and not yet replaced, and in phase
   * 'reissue' of a CA rotation, its leaves from the old CA. Level-triggered (a replaced or
   * expired certificate leaves the list without a new generation), so read per request: O(the
   * node's certificates), never cached.
   */
  async #renewSerials(cluster: string, node: string): Promise<string[]> {
    // One read: the requested ones not yet replaced (no newer certificate for the same node and
    // slot since), and whether a CA rotation is re-issuing (only then are the old CA's leaves read).
    const r = (await this.store.query<{ renew: string[]; reissuing: boolean }>(
      `SELECT ARRAY(SELECT serial FROM certificates c WHERE cluster = $1 AND node = $3 AND renew_requested_at IS NOT NULL AND revoked_at IS NULL AND not_after > $2
                      AND NOT EXISTS (SELECT 1 FROM certificates n WHERE n.cluster = c.cluster AND n.node = c.node AND n.slot = c.slot AND n.serial <> c.serial
                                        AND n.not_before >= date_trunc('second', c.renew_requested_at) - interval '${5 * 60} seconds')) AS renew,
              EXISTS (SELECT 1 FROM ca_rotations WHERE cluster = $1 AND phase = 'reissue') AS reissuing`,
      [cluster, this.now(), node],
    ))[0]!;
    const reissue = r.reissuing ? (await this.#rotations.oldCaLeaves(cluster, node)).map((x) => x.serial) : [];
    return [...new Set([...r.renew, ...reissue])].sort();
  }

  /** Every node's desired state of a cluster row (plan's "before"), through the cache. */
  async #clusterDesired(row: ClusterRow): Promise<Map<string, NodeDesired>> {
    const entry = await this.#entry(row);
    return new Map(await Promise.all(row.spec.nodes.map(async (n) => [n.name, await entry.node(n.name)] as const)));
  }

  /** The cluster's CA bundle (during a rotation, the other CA after the issuing one). */
  clusterCaPem(name: string, c?: Queryable): Promise<string> {
    return this.#cas.bundle(name, c);
  }

  // --- certificates and CRLs (coordinator/service/certificates.ts, crls.ts) ---------------------

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

  // --- password rotation (coordinator/service/passwords.ts) ------------------------------------

  rotatePasswords(cluster: string, role?: string): Promise<{ cluster: string; generation: number; roles: string[] }> {
    return this.#passwords.rotate(cluster, role);
  }

  // --- CA rotation (coordinator/service/ca-rotation.ts) ----------------------------------------

  startCaRotation(cluster: string): Promise<CaRotationStatus> {
    return this.#rotations.start(cluster);
  }

  /** Where the rotation stands and what each node still waits for. */
  caRotationStatus(cluster: string): Promise<CaRotationStatus> {
    return this.#rotations.status(cluster);
  }

  finishCaRotation(cluster: string): Promise<CaRotationStatus> {
    return this.#rotations.finish(cluster);
  }

  async plan(name: string, body: unknown): Promise<PlanResponse> {
    const spec = this.#ctx.specs.validate(name, body);
    const current = await this.#ctx.cluster(name);
    const changed = !current || current.spec_canonical !== canonicalJson(spec);
    const generation = current ? current.generation + (changed ? 1 : 0) : 1;
    // A role without a credential yet gets one when the spec is stored.
    const credentials = await this.#passwords.source(name, { password: '(new)', verifier: '(new)' });
    const caBundle = current ? await this.#cas.bundle(name) : '';
    // A new cluster gets its CRL with its first generation; an existing one keeps its current one.
    const crl = current ? ((await this.store.query<{ pem: string }>(`SELECT pem FROM cluster_crls WHERE cluster = $1`, [name]))[0]?.pem ?? null) : '(the CRL issued with the cluster)';
    const index = indexSpec(spec);
    const proposed = new Map(spec.nodes.map((n) => [n.name, this.#compileNode({ index, generation, credentials, caBundle, crl }, n.name)]));
    const before = current ? await this.#clusterDesired(current) : new Map<string, NodeDesired>();
    const nodes = [...proposed.values()].map((d) => {
      const rendered = renderNode(d);
      const old = before.get(d.node);
      const preview = previewNode(d);
      return {
        node: d.node,
        hba: rendered.hba,
        ident: rendered.ident,
        settings: preview.settings,
        roles: d.roles.map((r) => r.name),
        certificates: d.certificates.map((c) => `${c.id}: CN=${c.commonName}${[...c.dnsNames, ...c.ipAddresses].length ? ` SAN=${[...c.dnsNames, ...c.ipAddresses].join(',')}` : ''} (${c.usage})`),
        files: preview.files,
        changes: old ? diffNodes(old, d) : ['new node: every file will be written'],
      };
    });
    const warnings = insecureWarnings(spec);
    for (const gone of before.keys()) if (!proposed.has(gone)) warnings.push(`node "${gone}" is removed from the cluster: its agent will be told it is gone`);
    return { cluster: name, generation, nodes, warnings };
  }

  // --- join tokens, enrolment, identities (coordinator/service/identities.ts) -------------------

  createToken(cluster: string, node: string, ttlSeconds?: number): Promise<{ token: string; expiresAt: string }> {
    return this.#identities.createToken(cluster, node, ttlSeconds);
  }

  /** Join token + CSR → agent identity certificate. The token is consumed atomically, once. */
  enroll(token: string, csrPem: string): Promise<EnrollResponse> {
    return this.#identities.enroll(token, csrPem);
  }

  authenticateAgent(identity: { cluster: string; node: string }, serial: string): Promise<AgentPrincipal> {
    return this.#identities.authenticate(identity, serial);
  }

  recordContact(agent: AgentPrincipal): Promise<void> {
    return this.#identities.recordContact(agent);
  }

  // --- agent API -------------------------------------------------------------------------------

  /**
   * Long-poll: the node's desired state as soon as its generation exceeds `after`; null when
   * nothing newer appears within the wait. Wakes on a change by this coordinator or (through
   * NOTIFY) another one sharing the database. With `peersKnown` (the agent asks for peer
   * wakes): a PeerWake as soon as more than that many other nodes have applied `after` or newer.
   * With `passwordsAt` (the agent understands it): a password rotation's switch instant.
   */
  async desired(agent: AgentPrincipal, after: number, signal?: AbortSignal, waitMs = this.longPollMs, opts: { peersKnown?: number; passwordsAt?: boolean } = {}): Promise<NodeDesired | PeerWake | null> {
    const { peersKnown } = opts;
    const deadline = Date.now() + waitMs;
    for (;;) {
      let woke = false;
      const onEvent = (cluster: string) => {
        if (cluster === agent.cluster || cluster === '*') woke = true;
      };
      // Subscribe before reading, so a change between the read and the wait is not missed.
      this.store.events.on('cluster', onEvent);
      if (peersKnown !== undefined) this.#peerEvents.on('applied', onEvent);
      try {
        const row = await this.#ctx.cluster(agent.cluster);
        if (!row) throw gone(`cluster "${agent.cluster}" no longer exists`);
        if (!row.spec.nodes.some((n) => n.name === agent.node)) throw gone(`node "${agent.node}" is no longer part of cluster "${agent.cluster}"`);
        if (await this.#crls.refresh(agent.cluster)) continue;
        if (row.generation > after) {
          const d = await this.#nodeDesired(row, agent.node);
          const at = opts.passwordsAt ? this.#passwords.switchAt(agent.cluster, d.generation) : undefined;
          return at ? { ...d, passwordsAt: at.toISOString() } : d;
        }
        if (peersKnown !== undefined) {
          const applied = await this.#peersApplied(agent.cluster, row.spec, agent.node, after);
          if (applied.length > peersKnown) return { wake: 'peers-applied', applied };
        }
        const remaining = deadline - Date.now();
        if (remaining <= 0 || signal?.aborted) return null;
        if (!woke) await waitFor(peersKnown !== undefined ? [this.store.events, this.#peerEvents] : [this.store.events], agent.cluster, remaining, signal);
      } catch (e) {
        // The store failing over: the long-poll is held rather than failed (the agent would back
        // off); the store wakes every waiter ('*') once its LISTEN holds again. At the deadline, the 503.
        if (!(e instanceof StoreUnavailableError) || Date.now() >= deadline || signal?.aborted) throw e;
        if (!woke) await waitFor([this.store.events], agent.cluster, deadline - Date.now(), signal);
      } finally {
        this.store.events.off('cluster', onEvent);
        this.#peerEvents.off('applied', onEvent);
      }
    }
  }

  /** The cluster's applied generations per node, read from node_status once per process. */
  #appliedOf(cluster: string): Promise<Map<string, number>> {
    let m = this.#applied.get(cluster);
    if (!m) {
      m = this.store.query<{ node: string; generation: number | null }>(`SELECT node, (report->>'generation')::int AS generation FROM node_status WHERE cluster = $1`, [cluster])
        .then((rows) => new Map(rows.filter((r) => r.generation !== null).map((r) => [r.node, r.generation!])));
      m.catch(() => this.#applied.delete(cluster));
      this.#applied.set(cluster, m);
    }
    return m;
  }

  /** The other nodes of the spec that reported `generation` or newer applied, by name. */
  async #peersApplied(cluster: string, spec: ClusterSpec, self: string, generation: number): Promise<PeerWake['applied']> {
    const applied = await this.#appliedOf(cluster);
    return spec.nodes.filter((n) => n.name !== self && (applied.get(n.name) ?? -1) >= generation).map((n) => ({ node: n.name, generation: applied.get(n.name)! }));
  }

  async reportStatus(agent: AgentPrincipal, report: AgentStatus): Promise<void> {
    const badInstants = unparsableInstants(report);
    if (badInstants.length > 0) throw badRequest('E_STATUS_INVALID', `${badInstants.map((e) => e.field).join(', ')}: not a date and time`, badInstants);
    await this.#ctx.requireNode(agent); // the node must still exist; nothing is compiled
    const now = this.now();
    await this.store.query(
      `INSERT INTO node_status (cluster, node, report, reported_at, last_contact) VALUES ($1, $2, $3, $4, $4)
       ON CONFLICT (cluster, node) DO UPDATE SET report = EXCLUDED.report, reported_at = EXCLUDED.reported_at, last_contact = EXCLUDED.last_contact`,
      [agent.cluster, agent.node, JSON.stringify(report), now],
    );
    this.#passwords.noteTimings(agent, report.timings);
    const applied = await this.#appliedOf(agent.cluster);
    const before = applied.get(agent.node);
    applied.set(agent.node, report.generation);
    if (before === undefined || report.generation > before) this.#peerEvents.emit('applied', agent.cluster);
    await this.#rotations.advance(agent.cluster).catch((e) => this.#log.error({ cluster: agent.cluster, err: e }, 'CA rotation step failed'));
  }

  // --- admin views -----------------------------------------------------------------------------

  async status(name: string): Promise<ClusterStatusResponse> {
    const row = await this.#ctx.requireCluster(name);
    const statuses = await this.store.query<{ node: string; report: AgentStatus | null; reported_at: Date | null; last_contact: Date }>(
      `SELECT node, report, reported_at, last_contact FROM node_status WHERE cluster = $1`,
      [name],
    );
    const enrolled = new Set((await this.store.query<{ node: string }>(`SELECT node FROM agents WHERE cluster = $1`, [name])).map((r) => r.node));
    const byNode = new Map(statuses.map((s) => [s.node, s]));
    const now = this.now().getTime();
    const known = new Map((await this.store.query<{ serial: string; not_before: Date; not_after: Date }>(
      `SELECT serial, not_before, not_after FROM certificates WHERE cluster = $1 AND not_after > $2`,
      [name, new Date(now - 86400_000)],
    )).map((r) => [r.serial, r]));
    const identities = new Map((await this.store.query<{ node: string; serial: string; not_before: Date; not_after: Date }>(
      `SELECT a.node, c.serial, c.not_before, c.not_after FROM agents a JOIN certificates c ON c.serial = a.identity_serial WHERE a.cluster = $1`,
      [name],
    )).map((r) => [r.node, r]));
    const crl = (await this.store.query<{ next_update: Date }>(`SELECT next_update FROM cluster_crls WHERE cluster = $1`, [name]))[0];
    const warnings: string[] = [];
    const expiryOf = (id: string, serial: string, notAfterText: string, source: CertExpiry['source']): CertExpiry => {
      const notAfter = new Date(notAfterText);
      const k = known.get(serial);
      // Lifetime from the coordinator's records; a certificate it does not know counts as 90 days.
      const notBefore = k ? k.not_before : new Date(notAfter.getTime() - 90 * 86400_000);
      return { id, serial, notAfter: notAfter.toISOString(), daysLeft: daysLeft(notAfter, now), level: expiryLevel({ notBefore, notAfter }, now), source };
    };
    const staleAfterMs = 3 * this.longPollMs;
    const nodes: NodeStatusView[] = row.spec.nodes.map((n) => {
      const s = byNode.get(n.name);
      const report = s?.report ?? null;
      const phase = report?.phase ?? 'unknown';
      const expiry: CertExpiry[] = [];
      if (report?.servedCertificate) expiry.push(expiryOf('server', report.servedCertificate.serial, report.servedCertificate.notAfter, 'served'));
      for (const c of report?.certificates ?? []) expiry.push(expiryOf(c.id, c.serial, c.notAfter, 'installed'));
      const ident = identities.get(n.name);
      if (ident) expiry.push(expiryOf('identity', ident.serial, ident.not_after.toISOString(), 'identity'));
      for (const e of expiry) if (e.level !== 'ok') warnings.push(`${n.name}: ${e.source} certificate ${e.id} (serial ${e.serial}) is ${e.level}: ${e.daysLeft} days left`);
      // What the agent says; without it, what the coordinator knows (certificates, CRL).
      let survivesUntil: string | null = report?.survivesUntil ?? null;
      if (!survivesUntil && expiry.length > 0) {
        const ends = expiry.map((e) => new Date(e.notAfter).getTime());
        if (crl) ends.push(crl.next_update.getTime());
        survivesUntil = new Date(Math.min(...ends)).toISOString();
      }
      return {
        expiry,
        survivesUntil,
        node: n.name,
        desiredGeneration: row.generation,
        appliedGeneration: report?.generation ?? 0,
        phase,
        enrolled: enrolled.has(n.name),
        lastContact: s ? s.last_contact.toISOString() : null,
        reportedAt: s?.reported_at ? s.reported_at.toISOString() : null,
        stale: phase === 'stale' || (s !== undefined && now - s.last_contact.getTime() > staleAfterMs),
        errors: report?.errors ?? [],
        servedCertificate: report?.servedCertificate ?? null,
        certificates: report?.certificates ?? [],
        probes: report?.probes ?? [],
        pendingRestart: report?.pendingRestart ?? [],
        ...(report?.checks !== undefined ? { checks: report.checks } : {}),
        ...(report?.timings !== undefined ? { timings: report.timings } : {}),
      };
    });
    const caPem = await this.#cas.bundle(name);
    const ca = splitPemBundle(caPem).map((pem) => {
      const info = certInfo(pem);
      const level = caLevel(info, certLifetimeSeconds(row.spec), now);
      if (level !== 'ok') warnings.unshift(`the cluster CA (serial ${info.serial}) ends ${info.notAfter.toISOString()}: ${level}; rotate it (pgaccord cert rotate-ca)`);
      return { serial: info.serial, notAfter: info.notAfter.toISOString(), daysLeft: daysLeft(info.notAfter, now), level };
    });
    return {
      ca,
      warnings,
      cluster: name,
      generation: row.generation,
      auth: row.spec.auth,
      sslmode: row.spec.tls.sslmode,
      insecure: trustWarnings(row.spec).length > 0,
      // Converged means proved end to end: every node applied this generation and every
      // inter-node connection it makes works with the credentials it was given.
      converged: nodes.every((n) => n.appliedGeneration === row.generation && n.phase === 'converged' && !n.stale && n.probes.every((p) => p.ok)),
      nodes,
    };
  }

}


function waitFor(emitters: NodeJS.EventEmitter[], cluster: string, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      for (const e of emitters) e.off('cluster', onEvent).off('applied', onEvent);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const onEvent = (c: string) => {
      if (c === cluster || c === '*') done();
    };
    const timer = setTimeout(done, ms);
    for (const e of emitters) e.on('cluster', onEvent).on('applied', onEvent);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** The instants status() computes days left from: one that does not parse is refused when reported, not stored to break every status view. */
function unparsableInstants(report: AgentStatus): { field: string; message: string }[] {
  const instants: [string, string][] = [
    ...(report.servedCertificate ? [['servedCertificate.notAfter', report.servedCertificate.notAfter] as [string, string]] : []),
    ...report.certificates.map((c, i): [string, string] => [`certificates[${i}].notAfter`, c.notAfter]),
  ];
  return instants.filter(([, v]) => Number.isNaN(Date.parse(v))).map(([field]) => ({ field, message: 'not a date and time (ISO 8601)' }));
}

export function renderNode(d: NodeDesired): { hba: string; ident: string } {
  const managedRoles = d.roles.filter((r) => r.external !== true).map((r) => r.name);
  return {
    hba: renderHbaBlock({ cluster: d.cluster, localRole: 'postgres', rules: d.hba, managedRoles }),
    ident: renderIdentBlock({ cluster: d.cluster, localRole: 'postgres', localOsUsers: ['postgres'], lines: d.ident }),
  };
}

function diffNodes(old: NodeDesired, next: NodeDesired): string[] {
  const changes: string[] = [];
  const lines = (d: NodeDesired) => d.hba.map(renderHbaLine);
  const a = new Set(lines(old));
  const b = new Set(lines(next));
  for (const l of b) if (!a.has(l)) changes.push(`+ hba: ${l}`);
  for (const l of a) if (!b.has(l)) changes.push(`- hba: ${l}`);
  const ia = new Set(old.ident.map(renderIdentLine));
  const ib = new Set(next.ident.map(renderIdentLine));
  for (const l of ib) if (!ia.has(l)) changes.push(`+ ident: ${l}`);
  for (const l of ia) if (!ib.has(l)) changes.push(`- ident: ${l}`);
  for (const k of new Set([...Object.keys(old.settings), ...Object.keys(next.settings)])) {
    if (old.settings[k] !== next.settings[k]) changes.push(`~ setting ${k}: ${old.settings[k] ?? '(unset)'} -> ${next.settings[k] ?? '(unset)'}`);
  }
  const ra = new Set(old.roles.map((r) => r.name));
  const rb = new Set(next.roles.map((r) => r.name));
  for (const r of rb) if (!ra.has(r)) changes.push(`+ role ${r}`);
  for (const r of ra) if (!rb.has(r)) changes.push(`- role ${r} (no longer managed; not dropped)`);
  const ca = new Map(old.certificates.map((c) => [c.id, canonicalJson(c)]));
  const cb = new Map(next.certificates.map((c) => [c.id, canonicalJson(c)]));
  for (const [id, v] of cb) if (ca.get(id) !== v) changes.push(`${ca.has(id) ? '~' : '+'} certificate ${id} (new certificate will be issued)`);
  for (const id of ca.keys()) if (!cb.has(id)) changes.push(`- certificate ${id}`);
  if (old.auth !== next.auth) changes.push(`~ auth: ${old.auth} -> ${next.auth}`);
  if (old.sslmode !== next.sslmode) changes.push(`~ sslmode: ${old.sslmode} -> ${next.sslmode}`);
  if (old.certLifetimeSeconds !== next.certLifetimeSeconds) changes.push(`~ certificate lifetime: ${old.certLifetimeSeconds}s -> ${next.certLifetimeSeconds}s`);
  return changes.length > 0 ? changes : ['no change'];
}
