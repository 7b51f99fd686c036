// bench:fleet's probe agents: a cluster of their own, enrolled by the bench, that ask their
// desired state with wait=0 (a round trip). Two kinds of round trip:
//   once()   on the probe agent's own connection, kept (undici's keep-alive): what an agent's
//            request costs on a connection it holds, as its long-poll answer does
//   fresh()  on a new TLS connection each time (its handshake included), then closed: what an
//            agent's call beside its held long-poll costs (the agent opens a second connection
//            for it, agent/runtime/client.ts)
// In the renewal storm a probe whose connection had idled out (undici closes it after 4 s) waited
// ~3 s for its handshake behind the storm's 1,000 (every agent's CSR on a second connection) and
// ~7 ms in the coordinator: the two are measured apart (issue 13).
import { Agent, buildConnector, request, type Dispatcher } from 'undici';
import type { Socket } from 'node:net';
import { createCsr } from '../shared/crypto/csr.ts';
import { newKey } from './fleet-keys.ts';
import { wallMs } from './fleet-agent-worker.ts';
import type { KEY } from './fleet-shape.ts';

interface Probe { d: Dispatcher; gen: number; key: string; cert: string }

export class Probes {
  readonly #all: Probe[] = [];
  #turn = 0;
  /** Of each fresh() round trip: ms to the TCP connection, to the end of the TLS handshake (from the start). */
  readonly freshPhases: { tcp: number; tls: number }[] = [];

  constructor(readonly url: string, readonly caPem: string) {}

  /** Enrols a probe agent with a join token of node `node` of the probe cluster. */
  async enrol(token: string, keyType: typeof KEY): Promise<void> {
    const key = await newKey(keyType);
    const anon = new Agent({ connect: { ca: this.caPem } });
    const enrolment = JSON.stringify({ token, csr: createCsr(key, 'probe') });
    const r = await request(`${this.url}/v1/agent/enroll`, { method: 'POST', dispatcher: anon, headers: { 'content-type': 'application/json' }, body: enrolment });
    const body = (await r.body.json()) as { certificate: string };
    await anon.destroy();
    this.#all.push({ d: this.#dispatcher(key, body.certificate), gen: 0, key, cert: body.certificate });
  }

  #dispatcher(key: string, cert: string): Agent {
    return new Agent({ connect: { ca: this.caPem, key, cert } });
  }

  /** A round trip of the next probe agent on its kept connection: ms, -1 refused or reset, NaN throttled (429). */
  once(): Promise<number> {
    const p = this.#all[this.#turn++ % this.#all.length]!;
    return this.#ask(p, p.d);
  }

  /** A round trip of the first probe agent on a connection of its own, made for it and closed after. */
  async fresh(): Promise<number> {
    const p = this.#all[0]!;
    // buildConnector's connect returns the socket it makes (its typing says void).
    const base = buildConnector({ ca: this.caPem, key: p.key, cert: p.cert }) as unknown as (o: buildConnector.Options, cb: buildConnector.Callback) => Socket;
    const t0 = wallMs();
    const phase = { tcp: -1, tls: -1 };
    const d = new Agent({
      connect: (opts, cb) => {
        const socket = base(opts, (...args) => {
          phase.tls = wallMs() - t0;
          cb(...args);
        });
        socket.once('connect', () => (phase.tcp = wallMs() - t0));
        return socket;
      },
    });
    try {
      return await this.#ask(p, d);
    } finally {
      this.freshPhases.push(phase);
      await d.destroy().catch(() => undefined);
    }
  }

  async #ask(p: Probe, d: Dispatcher): Promise<number> {
    const t0 = wallMs();
    // A refused or reset connection is counted apart (-1), not a latency: the run goes on.
    const r = await request(`${this.url}/v1/agent/desired?after=${p.gen}&wait=0`, { dispatcher: d }).catch(() => null);
    if (!r) return -1;
    const text = await r.body.text();
    if (r.statusCode === 200) p.gen = (JSON.parse(text) as { generation: number }).generation;
    else if (r.statusCode === 429) return Number.NaN; // throttled: counted apart, not a latency
    else if (r.statusCode !== 204) throw new Error(`probe: ${r.statusCode} ${text}`);
    return wallMs() - t0;
  }

  /** Each probe agent asks once: every kept connection made (again) before a measurement. */
  async warm(): Promise<void> {
    for (let i = 0; i < this.#all.length; i++) await this.once();
  }

  async close(): Promise<void> {
    await Promise.all(this.#all.map((p) => p.d.destroy().catch(() => undefined)));
  }
}
