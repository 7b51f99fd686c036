// Prometheus metrics of the coordinator (prom-client). Fleet gauges (certificates, CRLs, nodes,
// probes) are read from the store when scraped, in three queries whatever the number of clusters,
// and shared by every gauge of one scrape (cached for a few seconds): never a compile per node.
// Histograms and counters are what this process saw (deliveries, reports, requests). Served on a
// listener of its own (plain HTTP, loopback by default): see serveMetrics.
import { createServer, type Server } from 'node:http';
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { RENEW_AT_FRACTION } from '../../shared/contract/renewal.ts';
import type { ApplyTimings, Phase } from '../../shared/contract/status.ts';
import type { Store } from '../store/store.ts';

export const METRICS_PATH = '/metrics';
/** Every phase gets a 0/1 series, so `pgaccord_node_phase{phase="failed"} == 1` needs no absent(). */
export const PHASES: readonly Phase[] = ['converged', 'applying', 'failed', 'pending-restart', 'stale', 'unknown'];
const DEFAULT_CACHE_MS = 2000;

/** One node as the store holds it: the spec's node list joined with its status, identity and CRL. */
export interface NodeRow {
  cluster: string;
  generation: number;
  node: string;
  applied: number | null;
  phase: string | null;
  reported_at: Date | null;
  last_contact: Date | null;
  pending_restarts: number | null;
  probes: { to: string; role: string; ok: boolean }[] | null;
  /** served + installed certificates as reported: {id, serial, notAfter} */
  certificates: { id: string; serial: string; notAfter: string }[] | null;
  identity_serial: string | null;
}

export interface CertRow {
  serial: string;
  not_before: Date;
  not_after: Date;
  renew_requested_at: Date | null;
}

export interface CrlRow {
  cluster: string;
  this_update: Date;
  next_update: Date;
}

export interface Sample {
  labels: Record<string, string>;
  value: number;
}

export interface FleetSeries {
  certExpiration: Sample[];
  certNotBefore: Sample[];
  certRenewal: Sample[];
  crlNextUpdate: Sample[];
  crlThisUpdate: Sample[];
  clusterGeneration: Sample[];
  desired: Sample[];
  applied: Sample[];
  phase: Sample[];
  lastReport: Sample[];
  lastContact: Sample[];
  pendingRestarts: Sample[];
  probe: Sample[];
}

const seconds = (d: Date) => d.getTime() / 1000;

/**
 * The gauges' samples from the store's rows (pure). A node's certificates are the ones it uses,
 * as status() counts them: the served and installed ones it reports, and its agent identity. Not
 * before and renewal come from the coordinator's records of the serial; the renewal instant is
 * the agent's schedule (RENEW_AT_FRACTION of the lifetime; its jitter can only bring it earlier)
 * or, when a renewal was requested and the certificate is still in use, that request.
 */
export function fleetSeries(nodes: NodeRow[], certs: CertRow[], crls: CrlRow[]): FleetSeries {
  const out: FleetSeries = { certExpiration: [], certNotBefore: [], certRenewal: [], crlNextUpdate: [], crlThisUpdate: [], clusterGeneration: [], desired: [], applied: [], phase: [], lastReport: [], lastContact: [], pendingRestarts: [], probe: [] };
  const known = new Map(certs.map((c) => [c.serial, c]));
  const clusters = new Map<string, number>();
  for (const n of nodes) {
    clusters.set(n.cluster, n.generation);
    const id = { cluster: n.cluster, node: n.node };
    out.desired.push({ labels: id, value: n.generation });
    out.applied.push({ labels: id, value: n.applied ?? 0 });
    const phase = n.phase ?? 'unknown';
    for (const p of PHASES) out.phase.push({ labels: { ...id, phase: p }, value: p === phase ? 1 : 0 });
    if (n.reported_at) out.lastReport.push({ labels: id, value: seconds(n.reported_at) });
    if (n.last_contact) out.lastContact.push({ labels: id, value: seconds(n.last_contact) });
    out.pendingRestarts.push({ labels: id, value: n.pending_restarts ?? 0 });
    // One series per edge and role (a node may reach the same peer as several roles); two
    // probes of the same edge and role (two addresses) count as failed if either failed.
    const edges = new Map<string, Sample>();
    for (const p of n.probes ?? []) {
      const key = `${p.to}\0${p.role}`;
      const seen = edges.get(key);
      if (seen) seen.value = Math.min(seen.value, p.ok ? 1 : 0);
      else edges.set(key, { labels: { cluster: n.cluster, from: n.node, to: p.to, role: p.role }, value: p.ok ? 1 : 0 });
    }
    out.probe.push(...edges.values());
    const used = new Map<string, { slot: string; serial: string; notAfter: number }>();
    for (const c of n.certificates ?? []) {
      const at = Date.parse(c.notAfter);
      if (!Number.isNaN(at)) used.set(`${c.id}\0${c.serial}`, { slot: c.id, serial: c.serial, notAfter: at / 1000 });
    }
    const ident = n.identity_serial ? known.get(n.identity_serial) : undefined;
    if (ident) used.set(`identity\0${ident.serial}`, { slot: 'identity', serial: ident.serial, notAfter: seconds(ident.not_after) });
    for (const u of used.values()) {
      const labels = { ...id, slot: u.slot, serial: u.serial };
      out.certExpiration.push({ labels, value: u.notAfter });
      const k = known.get(u.serial);
      if (!k) continue;
      const nb = seconds(k.not_before);
      out.certNotBefore.push({ labels, value: nb });
      const planned = nb + (u.notAfter - nb) * RENEW_AT_FRACTION;
      out.certRenewal.push({ labels, value: k.renew_requested_at ? Math.min(planned, seconds(k.renew_requested_at)) : planned });
    }
  }
  for (const [cluster, generation] of clusters) out.clusterGeneration.push({ labels: { cluster }, value: generation });
  for (const r of crls) {
    out.crlNextUpdate.push({ labels: { cluster: r.cluster }, value: seconds(r.next_update) });
    out.crlThisUpdate.push({ labels: { cluster: r.cluster }, value: seconds(r.this_update) });
  }
  return out;
}

// The spec's node list drives the rows (a node never enrolled shows applied 0; a removed node's
// leftover status row shows nothing). Only names are read from the spec, never compiled.
const NODES_SQL = `
  SELECT k.name AS cluster, k.generation, n.name AS node,
         (s.report->>'generation')::int AS applied, s.report->>'phase' AS phase, s.reported_at, s.last_contact,
         jsonb_array_length(COALESCE(s.report->'pendingRestart', '[]'::jsonb)) AS pending_restarts,
         (SELECT jsonb_agg(jsonb_build_object('to', p->>'to', 'role', p->>'role', 'ok', (p->>'ok')::boolean)) FROM jsonb_array_elements(COALESCE(s.report->'probes', '[]'::jsonb)) p) AS probes,
         (SELECT jsonb_agg(c) FROM (SELECT s.report->'servedCertificate' AS c WHERE jsonb_typeof(s.report->'servedCertificate') = 'object'
                                    UNION ALL SELECT jsonb_array_elements(COALESCE(s.report->'certificates', '[]'::jsonb))) x) AS certificates,
         a.identity_serial
    FROM clusters k
    CROSS JOIN LATERAL jsonb_to_recordset(COALESCE(k.spec->'nodes', '[]'::jsonb)) AS n(name text)
    LEFT JOIN node_status s ON s.cluster = k.name AND s.node = n.name
    LEFT JOIN agents a ON a.cluster = k.name AND a.node = n.name
   ORDER BY k.name, n.name`;
const CERTS_SQL = `SELECT serial, not_before, not_after, renew_requested_at FROM certificates WHERE serial = ANY($1)`;
const CRLS_SQL = `SELECT cluster, this_update, next_update FROM cluster_crls`;

/** Read the fleet from the store: three queries, whatever the number of clusters and nodes. */
export async function readFleet(store: Pick<Store, 'query'>): Promise<FleetSeries> {
  const nodes = await store.query<NodeRow & { generation: number }>(NODES_SQL);
  const serials = new Set<string>();
  for (const n of nodes) {
    for (const c of n.certificates ?? []) serials.add(c.serial);
    if (n.identity_serial) serials.add(n.identity_serial);
  }
  const [certs, crls] = await Promise.all([store.query<CertRow>(CERTS_SQL, [[...serials]]), store.query<CrlRow>(CRLS_SQL)]);
  return fleetSeries(nodes, certs, crls);
}

export interface MetricsOptions {
  store: Pick<Store, 'query'>;
  log: Logger;
  /** How long one read of the store serves scrapes (ms, default 2 s). */
  cacheMs?: number;
  now?: () => Date;
  /** The signing pool, for its queue depth and size. */
  signing?: { readonly queueDepth: number; readonly size: number };
}

/** A generation handed to a node and not yet reported applied: when, for the apply-duration histogram. */
interface Delivery {
  generation: number;
  at: number;
}

export class CoordinatorMetrics {
  readonly registry = new Registry();
  readonly #opts: MetricsOptions;
  readonly #now: () => Date;
  /** at: when the read ended (null while in progress). */
  #cached: { at: number | null; fleet: Promise<FleetSeries | null> } | null = null;
  readonly #deliveries = new Map<string, Delivery>();
  readonly #requests: Counter<'method' | 'route' | 'code'>;
  readonly #applyDuration: Histogram<'cluster'>;
  readonly #applyPhase: Histogram<'cluster' | 'phase'>;
  /** Per node, the generation whose reported timings were observed last (each observed once). */
  readonly #timed = new Map<string, { generation: number; report: boolean }>();
  readonly #convergence: Histogram<'cluster'>;
  readonly #signing: Gauge;

  constructor(opts: MetricsOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? (() => new Date());
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    // collect() runs with `this` bound to the gauge.
    const self = this;
    const fleetGauge = (name: string, help: string, labelNames: string[], pick: (f: FleetSeries) => Sample[]) => {
      new Gauge({
        name, help, labelNames, registers,
        async collect() {
          this.reset();
          const fleet = await self.#fleet();
          if (fleet) for (const s of pick(fleet)) this.set(s.labels, s.value);
        },
      });
    };
    const cert = ['cluster', 'node', 'slot', 'serial'];
    const node = ['cluster', 'node'];
    fleetGauge('pgaccord_certificate_expiration_timestamp_seconds', 'notAfter of a certificate a node uses (served, installed, agent identity), Unix seconds', cert, (f) => f.certExpiration);
    fleetGauge('pgaccord_certificate_not_before_timestamp_seconds', 'notBefore of a certificate a node uses, Unix seconds', cert, (f) => f.certNotBefore);
    fleetGauge('pgaccord_certificate_renewal_timestamp_seconds', 'when the agent renews the certificate at the latest (two thirds of its lifetime, or a requested renewal), Unix seconds', cert, (f) => f.certRenewal);
    fleetGauge('pgaccord_crl_next_update_timestamp_seconds', 'nextUpdate of the cluster CRL, Unix seconds', ['cluster'], (f) => f.crlNextUpdate);
    fleetGauge('pgaccord_crl_this_update_timestamp_seconds', 'thisUpdate of the cluster CRL, Unix seconds', ['cluster'], (f) => f.crlThisUpdate);
    fleetGauge('pgaccord_cluster_generation', 'current generation of the cluster spec', ['cluster'], (f) => f.clusterGeneration);
    fleetGauge('pgaccord_node_desired_generation', 'generation the node should apply (the cluster generation)', node, (f) => f.desired);
    fleetGauge('pgaccord_node_applied_generation', 'generation the node last applied and proved, as reported (0: none yet)', node, (f) => f.applied);
    fleetGauge('pgaccord_node_phase', 'phase of the node as last reported: 1 for its phase, 0 for the others', [...node, 'phase'], (f) => f.phase);
    fleetGauge('pgaccord_node_last_report_timestamp_seconds', 'when the agent last reported its status, Unix seconds', node, (f) => f.lastReport);
    fleetGauge('pgaccord_node_last_contact_timestamp_seconds', 'when the agent last called the coordinator (any authenticated call, long-polls included), Unix seconds', node, (f) => f.lastContact);
    fleetGauge('pgaccord_node_pending_restarts', 'settings the node applied that wait for a server restart', node, (f) => f.pendingRestarts);
    fleetGauge('pgaccord_probe_success', 'last inter-node connection probe from one node to another as one role: 1 succeeded, 0 failed', ['cluster', 'from', 'to', 'role'], (f) => f.probe);
    new Gauge({
      name: 'pgaccord_store_up', help: '1 when the read of the store for this scrape succeeded', registers,
      async collect() {
        this.set((await self.#fleet()) ? 1 : 0);
      },
    });
    this.#signing = new Gauge({ name: 'pgaccord_signing_operations_in_flight', help: 'enrolments and CSR requests in progress (their store work and their signing)', registers });
    const signing = opts.signing;
    if (signing) {
      new Gauge({
        name: 'pgaccord_signing_queue_depth', help: 'jobs (CSR checks, certificate and CRL signatures) handed to the signing threads and not yet answered', registers,
        collect() {
          this.set(signing.queueDepth);
        },
      });
      new Gauge({ name: 'pgaccord_signing_workers', help: 'signing threads the coordinator may run', registers }).set(signing.size);
    }
    this.#requests = new Counter({ name: 'pgaccord_api_requests_total', help: 'API requests answered, by method, route pattern and status code', labelNames: ['method', 'route', 'code'], registers });
    const buckets = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900];
    this.#applyDuration = new Histogram({ name: 'pgaccord_apply_duration_seconds', help: 'the node\'s pass that applied and proved a generation, certificates to probes, as its agent timed it (agents that do not report timings: from handing the generation to the node to its report, as seen by this coordinator)', labelNames: ['cluster'], buckets, registers });
    this.#applyPhase = new Histogram({ name: 'pgaccord_apply_phase_seconds', help: 'one phase (certs, render, install, validate, reload, prove, finish, probe, report) of the pass that applied a generation, as the agent timed it', labelNames: ['cluster', 'phase'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers });
    this.#convergence = new Histogram({ name: 'pgaccord_convergence_latency_seconds', help: 'from the creation of a generation to a node\'s report of it applied and proved', labelNames: ['cluster'], buckets, registers });
  }

  /**
   * One read of the store shared by every gauge of a scrape (prom-client collects them
   * concurrently: a read in progress is joined) and by the scrapes of the next cacheMs after it
   * ends. A failed read is store_up 0, not a failed scrape.
   */
  #fleet(): Promise<FleetSeries | null> {
    const c = this.#cached;
    if (c && (c.at === null || Date.now() - c.at < (this.#opts.cacheMs ?? DEFAULT_CACHE_MS))) return c.fleet;
    const entry: { at: number | null; fleet: Promise<FleetSeries | null> } = { at: null, fleet: Promise.resolve(null) };
    entry.fleet = readFleet(this.#opts.store).then(
      (f) => f,
      (e: unknown) => {
        this.#opts.log.error({ err: e }, 'metrics: reading the store failed');
        return null;
      },
    ).finally(() => {
      entry.at = Date.now();
    });
    this.#cached = entry;
    return entry.fleet;
  }

  /** The desired-state route handed `generation` to the node. */
  delivered(cluster: string, node: string, generation: number): void {
    const key = `${cluster}/${node}`;
    if (this.#deliveries.get(key)?.generation !== generation) this.#deliveries.set(key, { generation, at: this.#now().getTime() });
  }

  /**
   * The node reported `applied` (its last applied and proved generation). The first report of a
   * generation handed out here observes the apply duration; the first report of the cluster's
   * current generation its convergence latency (the creation time of older generations is not kept).
   */
  async reported(cluster: string, node: string, applied: number, timings?: ApplyTimings): Promise<void> {
    const key = `${cluster}/${node}`;
    // The agent's own timings, once per generation: the first report that carries them (its
    // report phase, known only from the next report on, is observed then).
    const timed = timings !== undefined && timings.generation === applied;
    if (timed) this.#observeTimings(cluster, key, timings);
    const d = this.#deliveries.get(key);
    if (!d || applied < d.generation) return;
    this.#deliveries.delete(key);
    const now = this.#now().getTime();
    if (applied === d.generation && !timed) this.#applyDuration.observe({ cluster }, Math.max(0, now - d.at) / 1000);
    const row = (await this.#opts.store.query<{ generation: number; updated_at: Date }>(`SELECT generation, updated_at FROM clusters WHERE name = $1`, [cluster]))[0];
    if (row && row.generation === applied) this.#convergence.observe({ cluster }, Math.max(0, now - row.updated_at.getTime()) / 1000);
  }

  #observeTimings(cluster: string, key: string, t: ApplyTimings): void {
    const seen = this.#timed.get(key);
    const fresh = seen === undefined || seen.generation < t.generation;
    if (fresh) {
      this.#applyDuration.observe({ cluster }, t.totalMs / 1000);
      for (const [phase, ms] of Object.entries(t.phases)) if (phase !== 'report') this.#applyPhase.observe({ cluster, phase }, ms / 1000);
    }
    const report = t.phases.report !== undefined && (fresh || (seen.generation === t.generation && !seen.report));
    if (report) this.#applyPhase.observe({ cluster, phase: 'report' }, t.phases.report! / 1000);
    if (fresh || report) this.#timed.set(key, { generation: t.generation, report: (fresh ? false : seen.report) || report });
  }

  /** Count one answered request; `route` is the route pattern (bounded), never the raw URL. */
  request(method: string, route: string | undefined, code: number): void {
    this.#requests.inc({ method, route: route ?? 'unmatched', code: String(code) });
  }

  /** Run one signing operation, counted in flight. */
  async signing<T>(fn: () => Promise<T>): Promise<T> {
    this.#signing.inc();
    try {
      return await fn();
    } finally {
      this.#signing.dec();
    }
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

/**
 * The metrics listener: plain HTTP, GET /metrics only, on its own address (loopback by default).
 * Not the HTTPS API with a bearer token: the only token is the admin token, which would give
 * Prometheus the power to change specs and revoke certificates. The metrics hold no secret.
 */
export async function serveMetrics(metrics: CoordinatorMetrics, host: string, port: number, log: Logger): Promise<{ server: Server; port: number; url: string }> {
  if (!LOOPBACK.has(host)) log.warn({ host }, 'metrics listener on a non-loopback address: cluster and node names and certificate serials are readable by whoever reaches it');
  const server = createServer({ requestTimeout: 10_000, headersTimeout: 10_000 }, (req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path !== METRICS_PATH || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(path === METRICS_PATH ? 405 : 404, { 'content-type': 'text/plain' }).end(path === METRICS_PATH ? 'GET only\n' : `no route; metrics are at ${METRICS_PATH}\n`);
      return;
    }
    metrics.render().then(
      (m) => res.writeHead(200, { 'content-type': m.contentType }).end(req.method === 'HEAD' ? undefined : m.body),
      (e: unknown) => {
        log.error({ err: e }, 'metrics: rendering failed');
        res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics failed (see the coordinator log)\n');
      },
    );
  });
  server.keepAliveTimeout = 10_000;
  // A scraper or two, not a crowd: whoever reaches it cannot hold the process's sockets.
  server.maxConnections = 64;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const actual = (server.address() as { port: number }).port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${actual}${METRICS_PATH}`;
  log.info({ url }, 'metrics listening');
  return { server, port: actual, url };
}
