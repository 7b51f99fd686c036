// The agent's HTTPS client to the coordinator. Trust is bootstrapped from the join token: the
// coordinator CA is fetched once without verification, accepted only if its sha256 matches the
// fingerprint the token carries, and pinned for every later call. Every agent call after
// enrolment uses mTLS with the identity key (kept by agent/runtime/identity.ts), which is
// generated on the node and never leaves it.
import { Value } from '@sinclair/typebox/value';
import type { TSchema, Static } from '@sinclair/typebox';
import { Agent, request, type Dispatcher } from './undici-lean.ts';
import { CsrResponse, EnrollResponse, JoinTokenPayload, PeerWake, type CsrRequest, type EnrollRequest } from '../../shared/contract/api.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { fingerprint256, splitPemBundle, type CertInfo } from '../../shared/crypto/x509.ts';
import { CodedError } from '../../shared/contract/problem.ts';
import { failoverDelay, sleep, type Random } from './backoff.ts';
import { normaliseFingerprint, parseJoinToken } from '../../shared/contract/join-token.ts';

export type CoordinatorErrorCode =
  | 'E_TOKEN' // join token malformed or for another node
  | 'E_PIN' // coordinator CA does not match the token's fingerprint
  | 'E_UNREACHABLE' // network / TLS failure
  | 'E_HTTP' // the coordinator answered with an error status
  | 'E_RESPONSE' // the answer does not match its schema
  | 'E_NODE_REMOVED' // 410: the node is no longer in the cluster
  | 'E_IDENTITY'; // no usable identity and no join token

/** A coded error: what went wrong with the coordinator, and the HTTP status when there was one. */
export class CoordinatorError extends CodedError {
  declare readonly code: CoordinatorErrorCode;

  constructor(
    code: CoordinatorErrorCode,
    message: string,
    readonly status?: number,
    options?: { cause?: unknown; apiCode?: string; retryAfter?: string },
  ) {
    super(code, message, options);
    this.apiCode = options?.apiCode;
    this.retryAfter = options?.retryAfter;
  }

  /** The coordinator's own error code (E_KEY_REVOKED, E_SLOT...), when it answered with one. */
  readonly apiCode: string | undefined;
  /** The answer's Retry-After header as sent (seconds or an HTTP date; see retryAfterMs), when it had one. */
  readonly retryAfter: string | undefined;
}

/** Decode and check a join token; a malformed one is an E_TOKEN error that never echoes it. */
export function decodeJoinToken(token: string): JoinTokenPayload {
  const parsed = parseJoinToken(token);
  if (!parsed.ok) throw new CoordinatorError('E_TOKEN', parsed.reason);
  return parsed.payload;
}

/**
 * Accept a fetched coordinator CA only if it is exactly one certificate whose fingerprint is the
 * pinned one. Returns the PEM to pin.
 */
export function checkPinnedCa(pem: string, expectedFingerprint: string): string {
  const certs = splitPemBundle(pem);
  if (certs.length !== 1) throw new CoordinatorError('E_PIN', `expected one coordinator CA certificate, got ${certs.length}`);
  const got = fingerprint256(certs[0]!);
  const want = normaliseFingerprint(expectedFingerprint);
  if (got !== want) {
    throw new CoordinatorError('E_PIN', `coordinator CA fingerprint ${got} does not match the join token's ${want}: refusing to trust this coordinator`);
  }
  return certs[0]!;
}

export interface Identity {
  keyPem: string;
  certPem: string;
  info: CertInfo;
}

export interface HttpOptions {
  /**
   * Coordinator base URL, or several coordinators sharing one store, in the order to try them:
   * a call that cannot reach one (or gets 502/503/504) moves on to the next after a short
   * jittered pause (failoverDelay) and stays there; once every one has failed the call throws
   * and the caller backs off (the reconcile loop's jittered exponential backoff).
   */
  baseUrl: string | readonly string[];
  /** Randomness of the failover pause (tests seed it); Math.random otherwise. */
  random?: Random;
  /** Told when a call moves from one coordinator to the next (the agent logs it). */
  onFailover?: (e: { from: string; to: string; reason: string }) => void;
  /** Pinned coordinator CA, PEM. */
  caPem: string;
  identity?: Identity;
  /** Long-poll answers may take this long before headers arrive. */
  longPollTimeoutMs?: number;
}

interface Answer {
  status: number;
  body: unknown;
  /** The Retry-After header, when the answer had one (a 429 or 503 saying when to come back). */
  retryAfter?: string;
}

/** Answers that say "this coordinator cannot serve now", not "the request is wrong": try another. */
const FAILOVER_STATUSES = new Set([502, 503, 504]);

interface CallOptions {
  /** Safe to send twice (a read, a status report): moved to the next coordinator on any failure. */
  idempotent?: boolean;
  /** The path to send to the next coordinator instead (a long-poll asks it to answer at once). */
  retryPath?: string;
  /** A long-poll: held on the agent's one kept connection, the others made meanwhile beside it. */
  longPoll?: boolean;
}

/** Failures of the connection itself, before any byte of the request left: nothing was done. */
const NOT_SENT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT']);

/** The same long-poll path with wait=0. */
function answerAtOnce(path: string): string {
  const u = new URL(path, 'https://x');
  u.searchParams.set('wait', '0');
  return `${u.pathname}${u.search}`;
}

function neverSent(e: CoordinatorError): boolean {
  const c = e.cause as { code?: string; cause?: { code?: string } } | undefined;
  const code = c?.cause?.code ?? c?.code;
  return code !== undefined && NOT_SENT_CODES.has(code);
}

/** Sent with every long-poll: passwords-at, this agent applies NodeDesired.passwordsAt. */
export const AGENT_FEATURES = 'passwords-at';

export class CoordinatorClient {
  // One kept connection per coordinator (`dispatcher`): the long-poll, and every call made in
  // turn with it. Each connection is a file descriptor of a coordinator that holds thousands of
  // agents: undici opens a new one for a request made less than an event-loop turn after the
  // last answer (it waits that turn before it reuses a socket), so one at most, and the request
  // queues for the turn. A call made while a long-poll holds it does not wait the long-poll: it
  // goes `beside`, on a connection closed as soon as it is answered (reset) rather than kept
  // idle for the keep-alive (the coordinator's 10 s, undici's 8 s of it).
  private dispatcher: Agent;
  private beside: Agent;
  /** Long-polls in flight on `dispatcher`. */
  private longPolls = 0;
  private identity: Identity | undefined;
  private readonly urls: readonly string[];
  /** The coordinator calls go to until it fails. */
  private current = 0;

  constructor(private readonly opts: HttpOptions) {
    this.identity = opts.identity;
    this.urls = typeof opts.baseUrl === 'string' ? [opts.baseUrl] : opts.baseUrl;
    if (this.urls.length === 0) throw new CoordinatorError('E_UNREACHABLE', 'no coordinator URL');
    this.dispatcher = this.makeDispatcher(1);
    this.beside = this.makeDispatcher();
  }

  /** The coordinator the next call goes to. */
  get coordinatorUrl(): string {
    return this.urls[this.current]!;
  }

  private makeDispatcher(connections?: number): Agent {
    return new Agent({
      ...(connections ? { connections } : {}),
      connect: {
        ca: this.opts.caPem,
        rejectUnauthorized: true,
        ...(this.identity ? { key: this.identity.keyPem, cert: this.identity.certPem } : {}),
      },
      headersTimeout: this.opts.longPollTimeoutMs ?? 120_000,
      bodyTimeout: 60_000,
      connectTimeout: 10_000,
    });
  }

  get currentIdentity(): Identity | undefined {
    return this.identity;
  }

  /** Switch to a new identity (after renewal): later calls present it. */
  async setIdentity(identity: Identity): Promise<void> {
    const old = [this.dispatcher, this.beside];
    this.identity = identity;
    this.dispatcher = this.makeDispatcher(1);
    this.beside = this.makeDispatcher();
    await Promise.all(old.map((d) => d.close().catch(() => undefined)));
  }

  async close(): Promise<void> {
    await Promise.all([this.dispatcher, this.beside].map((d) => d.destroy().catch(() => undefined)));
  }

  /**
   * One call, on the current coordinator, moving on to the next when it cannot be reached or
   * answers 502/503/504, each coordinator tried at most once per call. The one that answered
   * stays current; after a failure the next call starts at the next one.
   */
  private async call(method: 'GET' | 'POST', path: string, body?: unknown, signal?: AbortSignal, how: CallOptions = {}): Promise<Answer> {
    for (let tried = 1; ; tried++) {
      const base = this.urls[this.current]!;
      let failure: CoordinatorError;
      try {
        const a = await this.callOne(base, method, tried > 1 && how.retryPath ? how.retryPath : path, body, signal, how.longPoll === true);
        // Not idempotent (a CSR): only a 503 says for sure nothing was done; a proxy's 502/504 does not.
        const moveOn = FAILOVER_STATUSES.has(a.status) && (how.idempotent === true || a.status === 503);
        if (this.urls.length === 1 || !moveOn) return a;
        if (tried >= this.urls.length) {
          this.current = (this.current + 1) % this.urls.length;
          return a;
        }
        failure = httpError(method, path, a);
      } catch (e) {
        if (!(e instanceof CoordinatorError) || e.code !== 'E_UNREACHABLE' || this.urls.length === 1) throw e;
        failure = e;
        // A request that may have reached the coordinator is sent again elsewhere only when that
        // is harmless: a CSR signed by a coordinator that died before answering would otherwise
        // be signed a second time by the next. It fails; the caller retries with a new key.
        if (how.idempotent !== true && !neverSent(e)) {
          this.current = (this.current + 1) % this.urls.length;
          throw e;
        }
      }
      this.current = (this.current + 1) % this.urls.length;
      if (tried >= this.urls.length) throw failure;
      this.opts.onFailover?.({ from: base, to: this.urls[this.current]!, reason: failure.message });
      await sleep(failoverDelay(tried - 1, this.opts.random ?? Math.random), signal);
      if (signal?.aborted) throw signal.reason ?? new Error('aborted');
    }
  }

  private async callOne(baseUrl: string, method: 'GET' | 'POST', path: string, body?: unknown, signal?: AbortSignal, longPoll = false): Promise<Answer> {
    const url = new URL(path, baseUrl).toString();
    const beside = !longPoll && this.longPolls > 0;
    if (longPoll) this.longPolls += 1;
    let res: Dispatcher.ResponseData;
    let text: string;
    try {
      try {
        res = await request(url, {
          method,
          dispatcher: beside ? this.beside : this.dispatcher,
          ...(beside ? { reset: true } : {}),
          ...(body !== undefined ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } } : {}),
          ...(signal ? { signal } : {}),
        });
      } catch (e) {
        if (signal?.aborted) throw e;
        throw new CoordinatorError('E_UNREACHABLE', `${method} ${path}: ${describeNetworkError(e)}`, undefined, { cause: e });
      }
      text = await res.body.text();
    } finally {
      if (longPoll) this.longPolls -= 1;
    }
    let parsed: unknown = null;
    if (text.length > 0) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = text;
      }
    }
    const retryAfter = res.headers['retry-after'];
    return { status: res.statusCode, body: parsed, ...(typeof retryAfter === 'string' ? { retryAfter } : {}) };
  }

  private expect<T extends TSchema>(method: string, path: string, answer: Answer, schema: T, ok = 200): Static<T> {
    if (answer.status !== ok) throw httpError(method, path, answer);
    if (!Value.Check(schema, answer.body)) {
      const first = [...Value.Errors(schema, answer.body)][0];
      throw new CoordinatorError('E_RESPONSE', `${method} ${path}: answer does not match its schema${first ? ` at ${first.path || '/'}: ${first.message}` : ''}`, answer.status);
    }
    return answer.body as Static<T>;
  }

  async enroll(req: EnrollRequest): Promise<EnrollResponse> {
    // Idempotent for the same key: a coordinator that spent the token and died before answering
    // is followed by the next, which answers the same CSR with the certificate issued at the spend.
    const a = await this.call('POST', '/v1/agent/enroll', req, undefined, { idempotent: true });
    return this.expect('POST', '/v1/agent/enroll', a, EnrollResponse);
  }

  async csr(req: CsrRequest): Promise<CsrResponse> {
    const a = await this.call('POST', '/v1/agent/csr', req);
    return this.expect('POST', '/v1/agent/csr', a, CsrResponse);
  }

  async status(status: AgentStatus): Promise<void> {
    const a = await this.call('POST', '/v1/agent/status', status, undefined, { idempotent: true });
    if (a.status < 200 || a.status >= 300) throw httpError('POST', '/v1/agent/status', a);
  }

  /**
   * Long-poll for a generation newer than `after`. The body of a 200 is returned unvalidated
   * (`unknown`): the reconcile loop decides whether to accept it, so that a garbled answer is
   * reported as a refused desired state rather than as a transport error.
   */
  async desired(after: number, signal?: AbortSignal, waitSeconds?: number, peersKnown?: number): Promise<{ kind: 'newer'; body: unknown } | { kind: 'unchanged' } | { kind: 'removed' } | { kind: 'peers'; body: PeerWake }> {
    // waitSeconds: hold at most this long (0: answer at once, e.g. the first poll after an outage).
    // peersKnown: also answer (202) once more than that many other nodes applied `after` (see PeerWake).
    // features: what this agent understands in a desired state beyond the fields every agent knows.
    const path = `/v1/agent/desired?after=${after}${waitSeconds !== undefined ? `&wait=${Math.max(0, Math.floor(waitSeconds))}` : ''}${peersKnown !== undefined ? `&peers=${Math.max(0, Math.floor(peersKnown))}` : ''}&features=${AGENT_FEATURES}`;
    // Moved to another coordinator: it answers at once, so that the report that is this agent's
    // heartbeat does not wait a whole long-poll on top of the one that failed.
    const a = await this.call('GET', path, undefined, signal, { idempotent: true, retryPath: answerAtOnce(path), longPoll: waitSeconds !== 0 });
    if (a.status === 200) return { kind: 'newer', body: a.body };
    if (a.status === 202 && peersKnown !== undefined) return { kind: 'peers', body: this.expect('GET', path, a, PeerWake, 202) };
    if (a.status === 204) return { kind: 'unchanged' };
    if (a.status === 410) return { kind: 'removed' };
    throw httpError('GET', path, a);
  }
}

function httpError(method: string, path: string, a: Answer): CoordinatorError {
  const b = a.body as { code?: unknown; message?: unknown } | null;
  const detail = b && typeof b === 'object' && typeof b.message === 'string' ? `${typeof b.code === 'string' ? `${b.code}: ` : ''}${b.message}` : `HTTP ${a.status}`;
  return new CoordinatorError(a.status === 410 ? 'E_NODE_REMOVED' : 'E_HTTP', `${method} ${path}: ${detail}`, a.status, {
    ...(b && typeof b.code === 'string' ? { apiCode: b.code } : {}),
    ...(a.retryAfter !== undefined ? { retryAfter: a.retryAfter } : {}),
  });
}

function describeNetworkError(e: unknown): string {
  const err = e as { code?: string; message?: string; cause?: { code?: string; message?: string } };
  const code = err.cause?.code ?? err.code;
  const msg = err.cause?.message ?? err.message ?? String(e);
  return code ? `${code}: ${msg}` : msg;
}

/**
 * GET the coordinator CA once without verifying the server (there is nothing to verify it with
 * yet), and accept it only if it matches the fingerprint pinned by the join token.
 */
export async function fetchPinnedCa(baseUrl: string | readonly string[], expectedFingerprint: string): Promise<string> {
  if (typeof baseUrl !== 'string') {
    // Several coordinators: the first that answers. A CA that does not match the pin is never
    // passed over for the next one: that is refused, loudly.
    let last: unknown;
    for (const u of baseUrl) {
      try {
        return await fetchPinnedCa(u, expectedFingerprint);
      } catch (e) {
        if (!(e instanceof CoordinatorError) || (e.code !== 'E_UNREACHABLE' && e.code !== 'E_HTTP')) throw e;
        last = new CoordinatorError(e.code, `${u}: ${e.message}`, e.status, { cause: e });
      }
    }
    throw last ?? new CoordinatorError('E_UNREACHABLE', 'no coordinator URL');
  }
  const dispatcher = new Agent({ connect: { rejectUnauthorized: false }, connectTimeout: 10_000, headersTimeout: 30_000, bodyTimeout: 30_000 });
  try {
    let res: Dispatcher.ResponseData;
    try {
      res = await request(new URL('/v1/coordinator-ca.crt', baseUrl).toString(), { method: 'GET', dispatcher });
    } catch (e) {
      throw new CoordinatorError('E_UNREACHABLE', `GET /v1/coordinator-ca.crt: ${describeNetworkError(e)}`, undefined, { cause: e });
    }
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new CoordinatorError('E_HTTP', `GET /v1/coordinator-ca.crt: HTTP ${res.statusCode}`, res.statusCode);
    return checkPinnedCa(text, expectedFingerprint);
  } finally {
    await dispatcher.destroy().catch(() => undefined);
  }
}
