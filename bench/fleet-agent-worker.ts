// One process of bench:fleet's simulated agents (bench/fleet.ts forks a few). Each agent has its
// own key, enrols with its own join token and then runs the real agent's loop against the
// coordinator over its own mTLS connections (undici, its identity certificate): long-poll the
// desired state, report status after every answer (the heartbeat), at most one cycle a second,
// and after a failure back off with the agent's own jittered backoff (agent/runtime/backoff.ts) and
// ask again with wait=0. Nothing is applied: the bench measures the coordinator.
// Events (a generation received, a long-poll held again, contact lost) go to the parent in
// batches, each stamped with the wall clock when it happened (one clock for every process).
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createSecureContext, type SecureContext } from 'node:tls';
import { Agent, request, type Dispatcher } from 'undici';
import { backoffDelay, sleep } from '../agent/runtime/backoff.ts';
import { createCsr } from '../shared/crypto/csr.ts';
import { newKey, type KeyType } from './fleet-keys.ts';

export interface AgentAssignment {
  /** Index in the whole fleet. */
  i: number;
  cluster: string;
  node: string;
  token: string;
  /** Source address for its connections ('' for the default). */
  localAddress: string;
}

export type ToWorker =
  | { type: 'init'; url: string; caPem: string; key: KeyType; agents: AgentAssignment[] }
  | { type: 'enroll'; concurrency: number }
  | { type: 'run'; window: number }
  | { type: 'status'; reports: number; concurrency: number }
  | { type: 'storm-prepare' }
  | { type: 'storm' }
  | { type: 'lag' }
  | { type: 'failures' }
  | { type: 'stop' };

/** [kind, agent index, generation, wall-clock ms]. gen: a new generation; up: a long-poll sent after a new generation or regained contact; down: contact lost. */
export type FleetEvent = ['gen' | 'up' | 'down', number, number, number];

export type FromWorker =
  | { type: 'ready'; keygenMs: number }
  | { type: 'enrolled'; latencies: number[]; start: number; end: number; failures: string[] }
  | { type: 'ev'; ev: FleetEvent[] }
  | { type: 'status-done'; latencies: number[]; start: number; end: number; codes: Record<string, number> }
  | { type: 'storm-ready' }
  | { type: 'lag'; p50: number; p99: number; max: number }
  | { type: 'failures'; codes: Record<string, number>; before_first: number[] }
  | { type: 'storm-done'; latencies: number[]; start: number; end: number; codes: Record<string, number> }
  | { type: 'counters'; codes: Record<string, number> };

/** Wall clock with sub-millisecond resolution, comparable between processes. */
export const wallMs = () => performance.timeOrigin + performance.now();

interface SimAgent extends AgentAssignment {
  keyPem: string;
  certPem: string;
  dispatcher: Dispatcher | null;
  /** For the calls made beside the held long-poll, as agent/runtime/client.ts: closed once answered. */
  beside: Dispatcher | null;
  generation: number;
  slots: string[];
  failures: number;
  /** Failed calls before its first desired state (how often it connected again). */
  beforeFirst: number;
  /** In contact: the last call got an answer. */
  up: boolean;
  /** A long-poll is out since the last new generation (or since contact was regained). */
  held: boolean;
  storm: { slot: string; csr: string } | null;
  /** Frees its place in the process's window of starting agents ('run'), once its first call is answered or failed. */
  release: (() => void) | null;
}

/** At most n holders at once; the others wait in turn (first come, first served). */
class Gate {
  #free: number;
  readonly #waiting: (() => void)[] = [];

  constructor(n: number) {
    this.#free = Math.max(1, n);
  }

  async enter(): Promise<() => void> {
    if (this.#free > 0) this.#free -= 1;
    else await new Promise<void>((r) => this.#waiting.push(r));
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free += 1;
    };
  }
}

let url = '';
let caPem = '';
let keyKind: KeyType = 'ecdsa-p256';
let agents: SimAgent[] = [];
const stop = new AbortController();
/** Answers by status code in the loop (429s would mean the rate limiter throttles the bench). */
const loopCodes: Record<string, number> = {};
/** The loop's calls that got no answer, by error code (a connect timeout, a reset), since the last 'failures' message. */
let failureCodes: Record<string, number> = {};
let pending: FleetEvent[] = [];
// This process's event-loop delay since the last 'lag' message: the time stamps of its events lag by as much.
const lag = monitorEventLoopDelay({ resolution: 10 });
lag.enable();

const send = (m: FromWorker) => {
  if (process.connected) process.send!(m);
};
// The bench is gone (it failed, or was interrupted): so are its agents.
process.on('disconnect', () => process.exit(0));
function emit(e: FleetEvent): void {
  pending.push(e);
}
setInterval(() => {
  if (pending.length === 0) return;
  send({ type: 'ev', ev: pending });
  pending = [];
}, 20).unref();

function dispatcher(a: { localAddress: string }, identity?: SecureContext, connections?: number): Dispatcher {
  return new Agent({
    // With an identity, its TLS context made once (CA, key, certificate parsed once, ~1 ms of the
    // simulator's CPU a connection otherwise): a real agent parses its own on its own host.
    connect: { rejectUnauthorized: true, ...(identity ? { secureContext: identity } : { ca: caPem }) },
    // A client option (undici hands it to its connector), not a connect option.
    ...(a.localAddress ? { localAddress: a.localAddress } : {}),
    // As agent/runtime/client.ts: one kept connection (the long-poll and the calls made in turn
    // with it; a call less than an event-loop turn after an answer waits the turn undici takes
    // before it reuses a socket, instead of opening another), and `beside` for the calls made
    // while the long-poll is held, each on a connection closed once answered (reset).
    ...(connections ? { connections } : {}),
    // As agent/runtime/client.ts: a long-poll may take its whole length before the headers arrive.
    headersTimeout: 120_000,
    bodyTimeout: 60_000,
    connectTimeout: 10_000,
  });
}

async function call(d: Dispatcher, method: 'GET' | 'POST', path: string, body?: unknown, signal?: AbortSignal, reset = false): Promise<{ status: number; body: any }> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const res = await request(`${url}${path}`, { method, dispatcher: d, reset, ...(body !== undefined ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } } : {}), ...(signal ? { signal } : {}) });
  const text = await res.body.text();
  return { status: res.statusCode, body: text && String(res.headers['content-type'] ?? '').includes('json') ? JSON.parse(text) : null };
}

/** Run `fn` over items with at most `n` in flight. */
async function pool<T>(items: T[], n: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

const count = (codes: Record<string, number>, k: string | number) => (codes[k] = (codes[k] ?? 0) + 1);

function report(a: SimAgent) {
  const at = new Date().toISOString();
  const certificates = a.slots.map((id, k) => ({ id, serial: `${(a.i + 1).toString(16)}0${k}`, notAfter: new Date(Date.now() + 80 * 86400e3).toISOString() }));
  return {
    generation: a.generation,
    phase: 'converged',
    errors: [],
    files: [],
    servedCertificate: certificates[0] ?? null,
    certificates,
    probes: [{ to: 'peer', role: 'replicator', ok: true, conninfo: 'host=10.0.0.1 sslmode=verify-full', tlsVersion: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', error: null, at }],
    pendingRestart: [],
    coordinatorReachable: true,
    versions: { agent: 'bench-fleet', postgres: '15' },
  };
}

/** The agent loop (agent/runtime/loop.ts run/pollOnce), minus the apply. */
async function loop(a: SimAgent): Promise<void> {
  while (!stop.signal.aborted) {
    const started = Date.now();
    const immediate = a.failures > 0;
    let ok = false;
    try {
      if (!immediate && !a.held) {
        a.held = true;
        a.up = true;
        emit(['up', a.i, a.generation, wallMs()]);
      }
      const r = await call(a.dispatcher!, 'GET', `/v1/agent/desired?after=${a.generation}${immediate ? '&wait=0' : ''}`, undefined, stop.signal)
        .finally(() => a.release?.());
      count(loopCodes, r.status);
      if (r.status === 200) {
        a.generation = r.body.generation as number;
        a.slots = (r.body.certificates as { id: string }[]).map((c) => c.id);
        a.held = false;
        emit(['gen', a.i, a.generation, wallMs()]);
        ok = true;
      } else if (r.status === 204) ok = true;
      if (ok) {
        // The heartbeat report after every answer (the real loop reconciles, then reports).
        const s = await call(a.dispatcher!, 'POST', '/v1/agent/status', report(a), stop.signal).catch(() => null);
        if (s) count(loopCodes, `status-${s.status}`);
      }
    } catch (e) {
      if (stop.signal.aborted) return;
      count(failureCodes, (e as { code?: string }).code ?? (e as Error).name);
    }
    if (ok) {
      a.failures = 0;
      const elapsed = Date.now() - started;
      if (elapsed < 1000) await sleep(1000 - elapsed, stop.signal);
    } else {
      if (a.up) emit(['down', a.i, a.generation, wallMs()]);
      a.up = false;
      a.held = false;
      const delay = backoffDelay(Math.min(a.failures, 30), Math.random);
      a.failures += 1;
      if (a.generation === 0) a.beforeFirst += 1;
      await sleep(delay, stop.signal);
    }
  }
}

process.on('message', (m: ToWorker) => {
  void handle(m).catch((e: unknown) => {
    console.error(`fleet worker ${process.pid}: ${(e as Error).stack ?? String(e)}`);
    process.exit(1);
  });
});

async function handle(m: ToWorker): Promise<void> {
  switch (m.type) {
    case 'init': {
      ({ url, caPem } = m);
      keyKind = m.key;
      const t0 = performance.now();
      agents = [];
      // RSA keys come from OpenSSL's thread pool: a few at a time keeps the pool busy.
      await pool(m.agents, 8, async (x) => {
        agents.push({ ...x, keyPem: await newKey(keyKind), certPem: '', dispatcher: null, beside: null, generation: 0, slots: [], failures: 0, beforeFirst: 0, up: false, held: false, storm: null, release: null });
      });
      agents.sort((p, q) => p.i - q.i);
      send({ type: 'ready', keygenMs: performance.now() - t0 });
      return;
    }
    case 'enroll': {
      const latencies: number[] = [];
      const failures: string[] = [];
      // One connection per agent as a real agent makes (no shared keep-alive between agents).
      const csrs = new Map(agents.map((a) => [a.i, createCsr(a.keyPem, 'whatever')]));
      const start = wallMs();
      await pool(agents, m.concurrency, async (a) => {
        const d = dispatcher(a);
        const t = wallMs();
        try {
          const r = await call(d, 'POST', '/v1/agent/enroll', { token: a.token, csr: csrs.get(a.i) });
          if (r.status !== 200) failures.push(`${a.cluster}/${a.node}: ${r.status} ${JSON.stringify(r.body)}`);
          else a.certPem = r.body.certificate as string;
        } catch (e) {
          failures.push(`${a.cluster}/${a.node}: ${(e as Error).message}`);
        } finally {
          latencies.push(wallMs() - t);
          await d.destroy();
        }
      });
      send({ type: 'enrolled', latencies, start, end: wallMs(), failures });
      return;
    }
    case 'run': {
      // Every agent starts at once, but at most `window` of this process's agents are between their
      // start and their first answer: a few thousand simulated agents share one process and its
      // share of the cores, and with all their handshakes in flight at once each one waited behind
      // the others' client-side crypto in this process, past undici's 10 s connect timeout (1,049
      // of 2,500 agents connected again, each after 10 s and a backoff, while the coordinator sat
      // idle 40% of the time): that measured the simulator. Real agents each have their own CPU.
      const gate = new Gate(m.window);
      for (const a of agents) {
        const identity = createSecureContext({ ca: caPem, key: a.keyPem, cert: a.certPem });
        a.dispatcher = dispatcher(a, identity, 1);
        a.beside = dispatcher(a, identity);
        void gate.enter().then((release) => {
          a.release = release;
          return loop(a);
        });
      }
      return;
    }
    case 'status': {
      const latencies: number[] = [];
      const codes: Record<string, number> = {};
      const start = wallMs();
      // `concurrency` agents at a time, each beside its held long-poll on a second connection
      // closed once answered (each report pays its handshake, as the real agent's beside its
      // long-poll), so that all of them at once do not measure the coordinator's connection
      // limit instead of its reports.
      await pool(agents, m.concurrency, async (a) => {
        for (let k = 0; k < m.reports; k++) {
          const t = wallMs();
          const r = await call(a.beside!, 'POST', '/v1/agent/status', report(a), undefined, true).catch((e: Error) => ({ status: e.message }));
          latencies.push(wallMs() - t);
          count(codes, r.status);
        }
      });
      send({ type: 'status-done', latencies, start, end: wallMs(), codes });
      return;
    }
    case 'storm-prepare':
      // New keys and CSRs before the storm: what is timed is the coordinator, not key generation.
      await pool(agents, 8, async (a) => {
        const slot = process.env.FLEET_STORM_SLOT ?? a.slots[0] ?? 'identity';
        a.storm = { slot, csr: createCsr(await newKey(keyKind), 'renewal') };
      });
      send({ type: 'storm-ready' });
      return;
    case 'storm': {
      const latencies: number[] = [];
      const codes: Record<string, number> = {};
      const start = wallMs();
      await Promise.all(agents.map(async (a) => {
        const t = wallMs();
        const r = await call(a.beside!, 'POST', '/v1/agent/csr', a.storm!, undefined, true).catch((e: Error) => ({ status: e.message }));
        latencies.push(wallMs() - t);
        count(codes, r.status);
      }));
      send({ type: 'storm-done', latencies, start, end: wallMs(), codes });
      return;
    }
    case 'lag': {
      const ms = (ns: number) => Math.round(ns / 1e5) / 10;
      send({ type: 'lag', p50: ms(lag.percentile(50)), p99: ms(lag.percentile(99)), max: ms(lag.max) });
      lag.reset();
      return;
    }
    case 'failures':
      send({ type: 'failures', codes: failureCodes, before_first: agents.map((a) => a.beforeFirst) });
      failureCodes = {};
      return;
    case 'stop':
      stop.abort();
      send({ type: 'counters', codes: loopCodes });
      await Promise.all(agents.flatMap((a) => [a.dispatcher, a.beside].map((d) => d?.destroy().catch(() => undefined))));
      process.disconnect(); // and so exits
      return;
  }
}
