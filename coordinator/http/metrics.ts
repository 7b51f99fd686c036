// Prometheus metrics of the coordinator (prom-client). Fleet gauges (certificates, CRLs, nodes,
// probes) are read from the store when scraped (metrics-fleet.ts) and shared by every gauge of one
// scrape (cached for a few seconds): never a compile per node. Histograms and counters are what
// this process saw (deliveries, reports, requests). Served on a listener of its own (plain HTTP,
// loopback by default): see serveMetrics.
import { createServer, type Server } from 'node:http';
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ApplyTimings } from '../../shared/contract/status.ts';
import type { Store } from '../store/store.ts';
import { readFleet, type FleetSeries, type Sample } from './metrics-fleet.ts';

export const METRICS_PATH = '/metrics';
const DEFAULT_CACHE_MS = 2000;

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
    const fleetGauge = (name: string, labelNames: string[], pick: (f: FleetSeries) => Sample[], help: string) => {
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
    fleetGauge('pgaccord_certificate_expiration_timestamp_seconds', cert, (f) => f.certExpiration,
      'notAfter of a certificate a node uses (served, installed, agent identity), Unix seconds');
    fleetGauge('pgaccord_certificate_not_before_timestamp_seconds', cert, (f) => f.certNotBefore, 'notBefore of a certificate a node uses, Unix seconds');
    fleetGauge('pgaccord_certificate_renewal_timestamp_seconds', cert, (f) => f.certRenewal,
      'when the agent renews the certificate at the latest (two thirds of its lifetime, or a requested renewal), Unix seconds');
    fleetGauge('pgaccord_crl_next_update_timestamp_seconds', ['cluster'], (f) => f.crlNextUpdate, 'nextUpdate of the cluster CRL, Unix seconds');
    fleetGauge('pgaccord_crl_this_update_timestamp_seconds', ['cluster'], (f) => f.crlThisUpdate, 'thisUpdate of the cluster CRL, Unix seconds');
    fleetGauge('pgaccord_cluster_generation', ['cluster'], (f) => f.clusterGeneration, 'current generation of the cluster spec');
    fleetGauge('pgaccord_node_desired_generation', node, (f) => f.desired, 'generation the node should apply (the cluster generation)');
    fleetGauge('pgaccord_node_applied_generation', node, (f) => f.applied, 'generation the node last applied and proved, as reported (0: none yet)');
    fleetGauge('pgaccord_node_phase', [...node, 'phase'], (f) => f.phase, 'phase of the node as last reported: 1 for its phase, 0 for the others');
    fleetGauge('pgaccord_node_last_report_timestamp_seconds', node, (f) => f.lastReport, 'when the agent last reported its status, Unix seconds');
    fleetGauge('pgaccord_node_last_contact_timestamp_seconds', node, (f) => f.lastContact,
      'when the agent last called the coordinator (any authenticated call, long-polls included), Unix seconds');
    fleetGauge('pgaccord_node_pending_restarts', node, (f) => f.pendingRestarts, 'settings the node applied that wait for a server restart');
    fleetGauge('pgaccord_probe_success', ['cluster', 'from', 'to', 'role'], (f) => f.probe,
      'last inter-node connection probe from one node to another as one role: 1 succeeded, 0 failed');
    fleetGauge('pgaccord_probe_pass_seconds', node, (f) => f.probePass,
      'the node\'s last probe-only pass of its applied generation (a peer\'s wake, or the safety timer: where most edges are probed), as its agent timed it, seconds');
    new Gauge({
      name: 'pgaccord_store_up', help: '1 when the read of the store for this scrape succeeded', registers,
      async collect() {
        this.set((await self.#fleet()) ? 1 : 0);
      },
    });
    this.#signing = new Gauge({
      name: 'pgaccord_signing_operations_in_flight', help: 'enrolments and CSR requests in progress (their store work and their signing)', registers,
    });
    const signing = opts.signing;
    if (signing) {
      new Gauge({
        name: 'pgaccord_signing_queue_depth', registers,
        help: 'jobs (CSR checks, certificate and CRL signatures) handed to the signing threads and not yet answered',
        collect() {
          this.set(signing.queueDepth);
        },
      });
      new Gauge({ name: 'pgaccord_signing_workers', help: 'signing threads the coordinator may run', registers }).set(signing.size);
    }
    this.#requests = new Counter({
      name: 'pgaccord_api_requests_total', help: 'API requests answered, by method, route pattern and status code', labelNames: ['method', 'route', 'code'], registers,
    });
    const buckets = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900];
    this.#applyDuration = new Histogram({
      name: 'pgaccord_apply_duration_seconds', labelNames: ['cluster'], buckets, registers,
      help: 'the node\'s pass that applied and proved a generation, certificates to probes, as its agent timed it '
        + '(agents that do not report timings: from handing the generation to the node to its report, as seen by this coordinator)',
    });
    this.#applyPhase = new Histogram({
      name: 'pgaccord_apply_phase_seconds', labelNames: ['cluster', 'phase'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers,
      help: 'one phase (certs, render, install, validate, reload, prove, finish, probe, report) of the pass that applied a generation, as the agent timed it',
    });
    this.#convergence = new Histogram({
      name: 'pgaccord_convergence_latency_seconds', labelNames: ['cluster'], buckets, registers,
      help: 'from the creation of a generation to a node\'s report of it applied and proved',
    });
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
    const rows = await this.#opts.store.query<{ generation: number; updated_at: Date }>(`SELECT generation, updated_at FROM clusters WHERE name = $1`, [cluster]);
    const row = rows[0];
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
export async function serveMetrics(
  metrics: CoordinatorMetrics, host: string, port: number, log: Logger,
): Promise<{ server: Server; port: number; url: string }> {
  if (!LOOPBACK.has(host)) {
    log.warn({ host }, 'metrics listener on a non-loopback address: cluster and node names and certificate serials are readable by whoever reaches it');
  }
  const server = createServer({ requestTimeout: 10_000, headersTimeout: 10_000 }, (req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path !== METRICS_PATH || (req.method !== 'GET' && req.method !== 'HEAD')) {
      const known = path === METRICS_PATH;
      res.writeHead(known ? 405 : 404, { 'content-type': 'text/plain' }).end(known ? 'GET only\n' : `no route; metrics are at ${METRICS_PATH}\n`);
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
