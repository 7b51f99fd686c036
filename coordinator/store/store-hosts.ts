// The store's hosts and failing over between them. A store made highly available (a primary and
// standbys, or pg_auto_failover's pair) is named like libpq names it:
//   postgresql://user:pw@h1:5432,h2:5432/pgaccord?target_session_attrs=read-write
// node-postgres parses neither the host list nor target_session_attrs, so the list is split here
// into one single-host URL per host (pg parses each), and the pool's connections go to the host
// last found acceptable. When one fails (refused, terminated, read-only), the hosts are tried in
// order again, as libpq would, and the first acceptable one is used from then on.
import { EventEmitter } from 'node:events';
import pg from 'pg';
import type { Logger } from 'pino';
import { ApiError } from '../errors.ts';

/** libpq's target_session_attrs, the values that make sense for a store the coordinator writes to. */
export type SessionAttrs = 'any' | 'read-write' | 'primary';
const SESSION_ATTRS: readonly SessionAttrs[] = ['any', 'read-write', 'primary'];

export interface StoreHost {
  /** HOST:PORT as written in the URL, for logs and messages: never the credentials. */
  name: string;
  config: pg.ClientConfig;
}

export interface StoreTargets {
  hosts: StoreHost[];
  /** Default read-write: the coordinator writes, so a read-only server is never its store. */
  attrs: SessionAttrs;
}

/** A connection attempt, a probe or a query waits at most this long for a server to answer a connect. */
export const CONNECT_TIMEOUT_MS = 5000;
/** A scan that found no host is not repeated sooner: a burst of requests during an outage costs one scan, not one each. */
export const RESCAN_MIN_MS = 250;

/** The store cannot be used right now (no acceptable host, or the connection failed): 503, retry later. */
export class StoreUnavailableError extends ApiError {
  constructor(detail: string, options?: { cause?: unknown }) {
    // The detail names hosts and server messages: kept for the log (detail), not sent to clients.
    super(503, 'E_STORE_UNAVAILABLE', 'the store is unavailable (failing over, or down): retry shortly; details in the coordinator log', undefined, options);
    this.detail = detail;
  }
  readonly detail: string;
}

/**
 * Every connection of the pool stayed in use for the pool's whole queue bound: 503, retry later.
 * The store answers (it is busy, not away): no rescan, no failover, the connections are kept.
 */
export class StoreBusyError extends ApiError {
  /** `why`: what is full, e.g. "all 10 of its connections in use for 30 s". */
  constructor(why: string) {
    super(503, 'E_STORE_BUSY', `the store is busy (${why}): retry shortly`);
  }
}

// A host entry of a list: a name, an IPv4 address or a bracketed IPv6 one, and an optional port.
const HOST_ENTRY = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(?::\d{1,5})?$/;

/**
 * The hosts of a connection (pure). A connectionString that is a postgres[ql]:// URL may carry a
 * host list and target_session_attrs; anything else (a ClientConfig, a socket path) is one host.
 */
export function parseStoreTargets(connection: pg.ClientConfig): StoreTargets {
  const url = connection.connectionString;
  const one = (name: string): StoreTargets => ({ hosts: [{ name, config: connection }], attrs: 'read-write' });
  if (url === undefined) return one(`${connection.host ?? 'localhost'}:${connection.port ?? 5432}`);
  const m = /^(postgres(?:ql)?:\/\/)([^/?#]*)([^?#]*)(?:\?([^#]*))?$/.exec(url);
  if (!m) return one('(connection string)');
  const [, scheme, authority, path, query = ''] = m as unknown as [string, string, string, string, string | undefined];
  const at = authority.lastIndexOf('@');
  const userinfo = at >= 0 ? authority.slice(0, at + 1) : '';
  const entries = authority.slice(at + 1).split(',');
  const params = query === '' ? [] : query.split('&');
  const isAttrs = (p: string) => p.startsWith('target_session_attrs=');
  const rest = params.filter((p) => !isAttrs(p));
  const given = params.filter(isAttrs).at(-1);
  const attrs = given === undefined ? 'read-write' : decodeURIComponent(given.slice('target_session_attrs='.length));
  if (!SESSION_ATTRS.includes(attrs as SessionAttrs)) {
    throw new Error(`database URL: target_session_attrs=${attrs} does not fit a store the coordinator writes to (use read-write, primary or any)`);
  }
  if (entries.length > 1) {
    for (const e of entries) if (!HOST_ENTRY.test(e)) throw new Error(`database URL: "${e}" in the host list is not HOST or HOST:PORT`);
    // pg lets host=/port= parameters override the address: with a list that would silently use one.
    if (rest.some((p) => /^(host|port)=/.test(p))) throw new Error('database URL: a host list together with host= or port= parameters is ambiguous: use one of them');
  }
  const socket = rest.find((p) => p.startsWith('host='));
  return {
    attrs: attrs as SessionAttrs,
    hosts: entries.map((e) => ({
      name: e || (socket ? decodeURIComponent(socket.slice(5)) : 'localhost'),
      config: { ...connection, connectionString: `${scheme}${userinfo}${e}${path}${rest.length > 0 ? `?${rest.join('&')}` : ''}` },
    })),
  };
}

/** The SQL that tells whether a session fits target_session_attrs (null: any session does). */
export function acceptanceQuery(attrs: SessionAttrs): string | null {
  // libpq: read-write is `SHOW transaction_read_only` = off; primary is not in recovery.
  return attrs === 'read-write' ? `SELECT current_setting('transaction_read_only') = 'off' AS ok` : attrs === 'primary' ? 'SELECT NOT pg_is_in_recovery() AS ok' : null;
}

/** Errors meaning the store (not the statement) failed: connection lost or refused, server going down, read-only. */
export function isStoreFailure(e: unknown): boolean {
  if (e instanceof StoreUnavailableError) return true;
  const err = e as { code?: unknown; message?: unknown } | null;
  if (!err || typeof err !== 'object') return false;
  const code = typeof err.code === 'string' ? err.code : '';
  // SQLSTATE class 08 (connection exception), 57P01-03 (shutdown, crash, cannot connect now), 25006 (read-only transaction).
  if (/^08...$/.test(code) || ['57P01', '57P02', '57P03', '25006'].includes(code)) return true;
  if (['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN'].includes(code)) return true;
  // node-postgres gives these no code.
  return typeof err.message === 'string' && /^(Connection terminated|Client has encountered a connection error)/.test(err.message);
}

/** A store failure as the coded 503 (anything else unchanged). */
export function asStoreError(e: unknown): unknown {
  if (e instanceof StoreUnavailableError || !isStoreFailure(e)) return e;
  return new StoreUnavailableError((e as Error).message, { cause: e });
}

/**
 * Which host the store's connections go to. `epoch` grows each time the hosts are scanned again,
 * so connections made before (to a host that may be gone or read-only) are recognised and dropped.
 * 'moved' is emitted after every successful scan.
 */
export class StoreHosts extends EventEmitter {
  current = 0;
  epoch = 0;
  #scanning: Promise<void> | null = null;
  #lastFailure: { at: number; error: StoreUnavailableError } | null = null;

  constructor(readonly targets: StoreTargets, private readonly log: Logger) {
    super();
  }

  get host(): StoreHost {
    return this.targets.hosts[this.current]!;
  }

  /** Settings of a new connection to the current host. */
  clientConfig(): pg.ClientConfig {
    return { ...this.host.config, connectionTimeoutMillis: CONNECT_TIMEOUT_MS, keepAlive: true };
  }

  /** Does this session fit target_session_attrs? */
  async acceptable(c: Pick<pg.ClientBase, 'query'>): Promise<boolean> {
    const sql = acceptanceQuery(this.targets.attrs);
    return sql === null || (await c.query<{ ok: boolean }>(sql)).rows[0]?.ok === true;
  }

  /**
   * Find the host to use again, unless that was done since `seen` (the epoch the caller's failed
   * connection belonged to). One scan at a time; callers share it. Throws StoreUnavailableError
   * when no host is acceptable.
   */
  resolve(seen: number): Promise<void> {
    if (this.epoch !== seen) return Promise.resolve();
    const failed = this.#lastFailure;
    if (!this.#scanning && failed && Date.now() - failed.at < RESCAN_MIN_MS) return Promise.reject(failed.error);
    this.#scanning ??= this.#scan().finally(() => (this.#scanning = null));
    return this.#scanning;
  }

  /** After a failure seen outside a connect (a query on a connection that died): rescan in the background. */
  suspect(seen: number): void {
    this.resolve(seen).catch(() => undefined); // #scan logs its outcome
  }

  async #scan(): Promise<void> {
    const problems: string[] = [];
    for (const [i, h] of this.targets.hosts.entries()) {
      const c = new pg.Client({ ...h.config, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
      c.on('error', () => undefined); // an error after the probe is done changes nothing
      try {
        await c.connect();
        if (await this.acceptable(c)) {
          if (i !== this.current) this.log.warn({ from: this.host.name, to: h.name }, 'store: moving to another host');
          this.current = i;
          this.epoch += 1;
          this.#lastFailure = null;
          this.emit('moved');
          return;
        }
        problems.push(`${h.name}: ${this.targets.attrs === 'primary' ? 'in recovery' : 'read-only'}`);
      } catch (e) {
        problems.push(`${h.name}: ${(e as Error).message}`);
      } finally {
        await c.end().catch(() => undefined);
      }
    }
    const detail = `no ${this.targets.attrs === 'any' ? 'reachable' : 'writable'} store host (${problems.join('; ')})`;
    this.log.warn({ problems }, 'store: no acceptable host');
    const error = new StoreUnavailableError(detail);
    this.#lastFailure = { at: Date.now(), error };
    throw error;
  }
}

type StoreClient = pg.PoolClient & { storeEpoch: number; storeChecked?: boolean };

/**
 * A pg.Pool whose new connections go to the current host; on checkout it drops connections of an
 * earlier epoch, checks new ones against target_session_attrs, and on a failure scans the hosts
 * once more before giving up with StoreUnavailableError. Query errors meaning the store failed
 * come out as StoreUnavailableError too (and start a rescan).
 */
export class FailoverPool extends pg.Pool {
  /**
   * `queueWaitMs` bounds a checkout's wait for a connection of a full pool (StoreBusyError after
   * it): our own timer, not pg-pool's connectionTimeoutMillis, whose timeout was known only by its
   * message's wording. Connecting is bounded apart, by each connection's own CONNECT_TIMEOUT_MS.
   */
  constructor(readonly hosts: StoreHosts, readonly opts: { max: number; queueWaitMs: number }) {
    const Client = class extends pg.Client {
      readonly storeEpoch = hosts.epoch;
      constructor() {
        super(hosts.clientConfig());
      }
    };
    super({ max: opts.max, Client });
    const query = this.query.bind(this) as (...a: unknown[]) => unknown;
    this.query = ((...a: unknown[]) => {
      const epoch = hosts.epoch;
      const r = query(...a);
      if (!(r instanceof Promise)) return r;
      return r.catch((e: unknown) => {
        throw this.failed(e, epoch);
      });
    }) as typeof this.query;
  }

  /** A failure of a query on a connection of `epoch`: coded, and the hosts rescanned when it was the store's. */
  failed(e: unknown, epoch: number): unknown {
    const out = asStoreError(e);
    if (out !== e || e instanceof StoreUnavailableError) this.hosts.suspect(epoch);
    return out;
  }

  override connect(): Promise<pg.PoolClient>;
  override connect(callback: (err: Error | undefined, client: pg.PoolClient | undefined, done: (release?: unknown) => void) => void): void;
  override connect(callback?: (err: Error | undefined, client: pg.PoolClient | undefined, done: (release?: unknown) => void) => void): Promise<pg.PoolClient> | void {
    const p = this.#checkout();
    if (!callback) return p;
    p.then((c) => callback(undefined, c, (r) => c.release(r as boolean | Error | undefined)), (e: unknown) => callback(e as Error, undefined, () => undefined));
  }

  /**
   * pg.Pool's checkout. One that queues (every connection in use) waits until `deadline`, then
   * StoreBusyError; the connection it was to get goes back to the pool when it comes.
   */
  #take(deadline: number): Promise<pg.PoolClient> {
    const queued = this.waitingCount > 0 || (this.idleCount === 0 && this.totalCount >= this.opts.max);
    const taking = super.connect();
    if (!queued) return taking;
    return new Promise<pg.PoolClient>((resolve, reject) => {
      let late = false;
      const timer = setTimeout(() => {
        late = true;
        reject(new StoreBusyError(`all ${this.opts.max} of its connections in use for ${Math.round(this.opts.queueWaitMs / 1000)} s`));
      }, Math.max(0, deadline - Date.now()));
      timer.unref();
      taking.then((c) => {
        clearTimeout(timer);
        if (late) c.release();
        else resolve(c);
      }, (e: unknown) => {
        clearTimeout(timer);
        if (!late) reject(e);
      });
    });
  }

  async #checkout(): Promise<pg.PoolClient> {
    const deadline = Date.now() + this.opts.queueWaitMs;
    let rescanned = false;
    for (;;) {
      const epoch = this.hosts.epoch;
      let failure: unknown;
      try {
        const c = (await this.#take(deadline)) as StoreClient;
        if (c.storeEpoch !== this.hosts.epoch) {
          c.release(true); // made before the last scan: perhaps to a host no longer used
          continue;
        }
        if (c.storeChecked) return c;
        const ok = await this.hosts.acceptable(c).catch((e: unknown) => {
          c.release(true);
          throw e;
        });
        if (ok) {
          c.storeChecked = true;
          return c;
        }
        c.release(true);
        failure = new StoreUnavailableError(`${this.hosts.host.name} does not accept writes (target_session_attrs=${this.hosts.targets.attrs})`);
      } catch (e) {
        // Waited in the queue of a full pool: busy, not failed (a rescan would drop every connection).
        if (e instanceof StoreBusyError) throw e;
        failure = e;
      }
      if (rescanned) {
        // A connection that fails right after a good scan: the store, whatever the error says.
        const coded = asStoreError(failure);
        throw coded instanceof StoreUnavailableError ? coded : new StoreUnavailableError((failure as Error).message, { cause: failure });
      }
      await this.hosts.resolve(epoch).catch((e: unknown) => {
        // Both in the log: what this connection met, and what the scan found (maybe an earlier one's).
        throw e instanceof StoreUnavailableError ? new StoreUnavailableError(`${(failure as Error).message}; then ${e.detail}`, { cause: failure }) : e;
      });
      rescanned = true;
    }
  }
}
