// The signing pool: CSR checks and certificate and CRL signatures run in worker threads, so the
// event loop keeps answering long-polls and status reports while a renewal storm is signed.
// What is signed, and with which serial or CRL number, is decided on the main thread inside the
// caller's transaction; a worker only computes. A CA's key is cloned to a worker once, in memory,
// through its MessagePort (a KeyObject: never text, never written, never logged).
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { randomSerial, type CertificateAuthority, type CrlRequest, type IssuedCertificate, type LeafRequest } from './ca.ts';
import { ApiError } from '../errors.ts';
import { X509Error } from '../../shared/crypto/x509.ts';
import type { SubjectPublicKey } from '../../shared/crypto/csr.ts';
import type { WorkerReply, WorkerRequest } from './signing-worker.ts';

/**
 * Requests waiting for signing work, over all workers, beyond which new ones are refused (503
 * E_SIGNING_BUSY): jobs submitted and not answered, and requests waiting outside the pool for
 * their turn to submit one (reserveWait: the CSR gate's queue). Each is a request waiting (a CSR
 * of a few kB): a storm of 10,000 agents renewing at once fits, a runaway does not grow the
 * process without end.
 */
export const DEFAULT_MAX_QUEUE = 16_384;
/** CAs one worker keeps; the least recently used is forgotten past it (2,500 clusters fit). */
const MAX_CAS_PER_WORKER = 4096;
/**
 * Jobs posted to one worker at a time; the rest wait here, signatures first. A worker's own
 * message queue is FIFO: with every job posted at once, a signature (its caller holds a store
 * connection, a transaction and the cluster row's lock) waited behind every CSR check of a
 * renewal storm, and so did every request waiting for a store connection (issue 13).
 */
const IN_FLIGHT_PER_WORKER = 2;

export interface SigningPoolOptions {
  /** Worker threads (default: one per core). */
  size?: number;
  maxQueue?: number;
}

// Compiled, this module is dist/coordinator/signing-pool.js beside signing-worker.js; under tsx
// (tests, benches) it is the .ts source and the worker, which inherits --import tsx, is too.
const WORKER_URL = new URL(import.meta.url.endsWith('.ts') ? './signing-worker.ts' : './signing-worker.js', import.meta.url);

export const signingBusy = (waiting: number) => new ApiError(503, 'E_SIGNING_BUSY', `the signing queue is full (${waiting} requests waiting): retry shortly`);
const signingUnavailable = (why: string) => new ApiError(503, 'E_SIGNING_UNAVAILABLE', `signing is unavailable: ${why}`);

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
  op: string;
}

interface Queued extends Pending {
  job: number;
  message: WorkerRequest;
  ca: CertificateAuthority | undefined;
}

interface Slot {
  worker: Worker;
  inFlight: Map<number, Pending>;
  /** CA ids this worker holds, least recently used first. */
  cas: Map<string, true>;
}

export class SigningPool {
  readonly size: number;
  readonly maxQueue: number;
  readonly #slots: (Slot | null)[];
  /** Submitted, not yet posted to a worker: signatures (a caller's transaction waits) before CSR checks. */
  readonly #urgent: Queued[] = [];
  readonly #normal: Queued[] = [];
  #nextJob = 1;
  #depth = 0;
  /** Requests holding a reserveWait place. */
  #waitingOutside = 0;
  #answered = 0;
  #closed = false;
  #drained: (() => void) | null = null;

  constructor(opts: SigningPoolOptions = {}) {
    const size = opts.size ?? availableParallelism();
    if (!Number.isInteger(size) || size < 1 || size > 256) throw new Error(`signing workers: ${size} is not 1..256`);
    const maxQueue = opts.maxQueue ?? DEFAULT_MAX_QUEUE;
    if (!Number.isInteger(maxQueue) || maxQueue < 1) throw new Error(`signing queue bound: ${maxQueue} is not a positive integer`);
    this.size = size;
    this.maxQueue = maxQueue;
    // Threads start with their first job: a coordinator (or a test) that signs nothing starts none.
    this.#slots = Array.from({ length: size }, () => null);
  }

  /** Jobs submitted and not yet answered (what pgaccord_signing_queue_depth reports). */
  get queueDepth(): number {
    return this.#depth;
  }

  /**
   * A place for one request waiting outside the pool for its turn to submit (the CSR gate's
   * queue), counted against maxQueue with the jobs: E_SIGNING_BUSY past it. Returns what gives
   * the place back, once the request stops waiting.
   */
  reserveWait(): () => void {
    const waiting = this.#depth + this.#waitingOutside;
    if (waiting >= this.maxQueue) throw signingBusy(waiting);
    this.#waitingOutside++;
    let given = false;
    return () => {
      if (!given) this.#waitingOutside--;
      given = true;
    };
  }

  /** Threads running now. */
  get threads(): number {
    return this.#slots.filter((s) => s !== null).length;
  }

  /** Jobs a worker has answered since the pool was made. */
  get answered(): number {
    return this.#answered;
  }

  /** Parse a CSR, check its key against the policy and verify its signature; X509Error as readCsrKey throws it. */
  async readCsrKey(pem: string): Promise<{ publicKey: SubjectPublicKey; commonName: string | null }> {
    const r = (await this.#submit((job) => ({ op: 'csr', job, pem }))) as { publicKey: SubjectPublicKey; commonName: string | null };
    // A Buffer crosses a MessagePort as a plain Uint8Array.
    return { publicKey: { ...r.publicKey, spki: Buffer.from(r.publicKey.spki) }, commonName: r.commonName };
  }

  /** Issue a leaf as `ca`; the serial is allocated here, on the calling thread, when the caller has not. */
  async issue(ca: CertificateAuthority, req: LeafRequest): Promise<IssuedCertificate> {
    const full = { ...req, serial: req.serial ?? randomSerial() };
    return (await this.#submit((job) => ({ op: 'issue', job, ca: ca.id, req: full }), ca)) as IssuedCertificate;
  }

  async issueCrl(ca: CertificateAuthority, req: CrlRequest): Promise<string> {
    return (await this.#submit((job) => ({ op: 'crl', job, ca: ca.id, req }), ca)) as string;
  }

  /** The threadId of the worker that runs a job (tests: proof the work is off the main thread). */
  async workerThreadId(): Promise<number> {
    return (await this.#submit((job) => ({ op: 'whoami', job }))) as number;
  }

  /**
   * Refuse new jobs, let those submitted finish (bounded), then stop every thread. Jobs still
   * unanswered after `drainMs` fail with E_SIGNING_UNAVAILABLE.
   */
  async close(drainMs = 5000): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#depth > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((resolve) => (this.#drained = resolve)),
        new Promise<void>((resolve) => (timer = setTimeout(resolve, drainMs))),
      ]);
      clearTimeout(timer);
    }
    // Not posted to a worker within the drain: failed, as the jobs the threads still hold are.
    for (const q of this.#urgent.splice(0).concat(this.#normal.splice(0))) {
      this.#depth--;
      q.reject(signingUnavailable('the coordinator is stopping'));
    }
    await Promise.all(this.#slots.map(async (slot, i) => {
      if (!slot) return;
      this.#slots[i] = null;
      await slot.worker.terminate();
      this.#fail(slot, 'the coordinator is stopping');
    }));
  }

  #submit(make: (job: number) => WorkerRequest, ca?: CertificateAuthority): Promise<unknown> {
    if (this.#closed) return Promise.reject(signingUnavailable('the coordinator is stopping'));
    const job = this.#nextJob;
    const message = make(job);
    const urgent = message.op === 'issue' || message.op === 'crl';
    // The requests waiting outside leave no room for CSR checks; a signature (its caller holds a
    // store transaction, so they are few) is refused only by the jobs: a request already past
    // the gate is not thrown away at its last step by those still waiting there.
    const waiting = this.#depth + (urgent ? 0 : this.#waitingOutside);
    if (waiting >= this.maxQueue) return Promise.reject(signingBusy(waiting));
    this.#nextJob++;
    return new Promise((resolve, reject) => {
      this.#depth++;
      (urgent ? this.#urgent : this.#normal).push({ resolve, reject, op: message.op, job, message, ca });
      this.#pump();
    });
  }

  /** Post queued jobs, signatures first, to workers with room (started when not running). */
  #pump(): void {
    for (;;) {
      const queue = this.#urgent.length > 0 ? this.#urgent : this.#normal;
      if (queue.length === 0) return;
      const slot = this.#pick();
      if (!slot) return;
      const q = queue.shift()!;
      if (q.ca) this.#ensureCa(slot, q.ca);
      slot.inFlight.set(q.job, q);
      // Referenced only while it has work: an idle pool does not keep the process alive.
      if (slot.inFlight.size === 1) slot.worker.ref();
      slot.worker.postMessage(q.message);
    }
  }

  /** The least loaded thread with room (started if it is not running), or null when all are full. */
  #pick(): Slot | null {
    let best = -1;
    for (let i = 0; i < this.#slots.length; i++) {
      const s = this.#slots[i];
      if (!s) return this.#start(i);
      if (s.inFlight.size < IN_FLIGHT_PER_WORKER && (best === -1 || s.inFlight.size < this.#slots[best]!.inFlight.size)) best = i;
    }
    return best === -1 ? null : this.#slots[best]!;
  }

  #start(i: number): Slot {
    const worker = new Worker(WORKER_URL, { name: `pgaccord-signing-${i}` });
    worker.unref();
    const slot: Slot = { worker, inFlight: new Map(), cas: new Map() };
    worker.on('message', (reply: WorkerReply) => this.#answer(slot, reply));
    // A thread that dies (an uncaught error, out of memory) fails its jobs; the next job starts another.
    worker.on('error', (e) => {
      if (this.#slots[i] === slot) this.#slots[i] = null;
      this.#fail(slot, `a signing worker failed (${e.message})`);
    });
    worker.on('exit', (code) => {
      if (this.#slots[i] === slot) this.#slots[i] = null;
      this.#fail(slot, `a signing worker stopped (exit code ${code})`);
    });
    this.#slots[i] = slot;
    return slot;
  }

  #ensureCa(slot: Slot, ca: CertificateAuthority): void {
    if (slot.cas.has(ca.id)) {
      slot.cas.delete(ca.id);
      slot.cas.set(ca.id, true);
      return;
    }
    if (slot.cas.size >= MAX_CAS_PER_WORKER) {
      const oldest = slot.cas.keys().next().value!;
      slot.cas.delete(oldest);
      slot.worker.postMessage({ op: 'forget', id: oldest } satisfies WorkerRequest);
    }
    const { certPem, key } = ca.signingMaterial();
    slot.worker.postMessage({ op: 'ca', id: ca.id, certPem, key } satisfies WorkerRequest);
    slot.cas.set(ca.id, true);
  }

  #answer(slot: Slot, reply: WorkerReply): void {
    const p = slot.inFlight.get(reply.job);
    if (!p) return;
    this.#answered++;
    this.#settled(slot, reply.job);
    this.#pump();
    if (reply.ok) p.resolve(reply.result);
    else if (reply.x509Code && p.op === 'csr') p.reject(new X509Error(reply.message, reply.x509Code));
    else p.reject(new ApiError(500, 'E_SIGNING_FAILED', `signing failed: ${reply.message}`));
  }

  #settled(slot: Slot, job: number): void {
    slot.inFlight.delete(job);
    this.#depth--;
    if (slot.inFlight.size === 0) slot.worker.unref();
    if (this.#depth === 0) this.#drained?.();
  }

  #fail(slot: Slot, why: string): void {
    for (const [job, p] of [...slot.inFlight]) {
      this.#settled(slot, job);
      p.reject(signingUnavailable(why));
    }
    // The jobs still queued go to the other threads, or to one started for them.
    this.#pump();
  }
}
