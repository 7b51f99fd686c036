// The coordinator's state in PostgreSQL: a pool, versioned migrations (applied once, in a
// transaction, under an advisory lock so that several coordinators can share one database), and
// LISTEN/NOTIFY so a write by one coordinator wakes the long-polls held by another. A store with
// several hosts (a primary and standbys) is failed over between them: see store-hosts.ts.
import { EventEmitter } from 'node:events';
import pg from 'pg';
import type { Logger } from 'pino';
import { FailoverPool, isStoreFailure, parseStoreTargets, StoreHosts, StoreUnavailableError } from './store-hosts.ts';

export const NOTIFY_CHANNEL = 'pgaccord_generation';
const MIGRATION_LOCK = 0x70676163636f7264n; // "pgaccord"
/** The migration that added clusters.spec_seal: the only moment unsealed rows are sealed. */
export const SPEC_SEAL_MIGRATION = 4;
/** The migration that bound seals to the cluster's incarnation and generation: rows are re-sealed once, right after it. */
export const SPEC_SEAL_BINDING_MIGRATION = 5;

interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: Migration[] = [
  {
    version: 1,
    name: 'clusters, CAs, credentials, tokens, agents, certificates, status',
    sql: `
      CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
      CREATE TABLE clusters (
        name text PRIMARY KEY,
        spec jsonb NOT NULL,
        spec_canonical text NOT NULL,
        generation integer NOT NULL CHECK (generation >= 1),
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL
      );
      -- The cluster CA's private key is sealed with the master key (AES-256-GCM).
      CREATE TABLE cluster_cas (
        cluster text PRIMARY KEY REFERENCES clusters(name) ON DELETE CASCADE,
        cert_pem text NOT NULL,
        key_sealed text NOT NULL,
        created_at timestamptz NOT NULL
      );
      -- Role passwords sealed with the master key; the verifier is public by design.
      CREATE TABLE role_credentials (
        cluster text NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
        role text NOT NULL,
        password_sealed text NOT NULL,
        verifier text NOT NULL,
        created_at timestamptz NOT NULL,
        PRIMARY KEY (cluster, role)
      );
      -- Join tokens: only sha256(secret) is kept.
      CREATE TABLE join_tokens (
        id text PRIMARY KEY,
        cluster text NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
        node text NOT NULL,
        secret_sha256 bytea NOT NULL,
        created_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL,
        used_at timestamptz
      );
      CREATE TABLE agents (
        cluster text NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
        node text NOT NULL,
        identity_serial text NOT NULL,
        previous_serial text,
        enrolled_at timestamptz NOT NULL,
        PRIMARY KEY (cluster, node)
      );
      CREATE TABLE certificates (
        serial text PRIMARY KEY,
        cluster text NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
        node text NOT NULL,
        slot text NOT NULL,
        issuer text NOT NULL CHECK (issuer IN ('cluster', 'coordinator')),
        common_name text NOT NULL,
        not_before timestamptz NOT NULL,
        not_after timestamptz NOT NULL,
        revoked_at timestamptz,
        pem text NOT NULL
      );
      CREATE INDEX certificates_cluster ON certificates (cluster, node);
      CREATE TABLE node_status (
        cluster text NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
        node text NOT NULL,
        report jsonb,
        reported_at timestamptz,
        last_contact timestamptz NOT NULL,
        PRIMARY KEY (cluster, node)
      );
    `,
  },
  {
    version: 2,
    name: 'certificate lifecycle: CRLs, forced renewals',
    sql: `
      -- The cluster's CRL, once it has one (first revocation); then refreshed for good.
      CREATE TABLE cluster_crls (
        cluster text PRIMARY KEY REFERENCES clusters(name) ON DELETE CASCADE,
        pem text NOT NULL,
        number bigint NOT NULL,
        this_update timestamptz NOT NULL,
        next_update timestamptz NOT NULL
      );
      ALTER TABLE certificates ADD COLUMN renew_requested_at timestamptz;
    `,
  },
  {
    version: 3,
    name: 'CA rotation',
    sql: `
      -- A CA rotation in progress: the cluster's other CA (the new one in phase 'trust', the old
      -- one in phase 'reissue'), key sealed like cluster_cas. cluster_cas holds the issuing CA.
      CREATE TABLE ca_rotations (
        cluster text PRIMARY KEY REFERENCES clusters(name) ON DELETE CASCADE,
        phase text NOT NULL CHECK (phase IN ('trust', 'reissue')),
        other_cert_pem text NOT NULL,
        other_key_sealed text NOT NULL,
        started_at timestamptz NOT NULL,
        trust_generation integer NOT NULL,
        reissued_at timestamptz,
        reissue_generation integer
      );
    `,
  },
  {
    version: SPEC_SEAL_MIGRATION,
    name: 'stored specs sealed under the master key',
    sql: `
      -- sha256 of the canonical spec, sealed with the master key (context "cluster-spec:NAME"):
      -- a row written other than through the API (by whoever reaches the database) does not
      -- open, and is refused when read. Rows of older versions are sealed once, right after this.
      ALTER TABLE clusters ADD COLUMN spec_seal text;
    `,
  },
  {
    version: SPEC_SEAL_BINDING_MIGRATION,
    name: 'stored spec seals bound to the incarnation and generation',
    sql: `
      -- A random id per creation of a cluster row: with the generation it goes into the spec's
      -- seal, so an earlier (spec, seal) pair (of this row, or of a deleted row of the same
      -- name) no longer opens. Existing rows get one here and are re-sealed once, right after.
      ALTER TABLE clusters ADD COLUMN incarnation text NOT NULL DEFAULT gen_random_uuid()::text;
      ALTER TABLE clusters ALTER COLUMN incarnation DROP DEFAULT;
    `,
  },
  {
    version: 6,
    name: 'CRL numbers allocated in the store',
    sql: `
      -- The last CRL number of each cluster, taken by one UPSERT (a row lock held to commit) by
      -- whichever coordinator issues: numbers never repeat or go back, and a rolled-back issue
      -- gives its number back (a sequence would leave gaps). No foreign key: a cluster deleted
      -- and created again goes on from its last number.
      CREATE TABLE crl_numbers (cluster text PRIMARY KEY, last_number bigint NOT NULL CHECK (last_number >= 1));
      INSERT INTO crl_numbers (cluster, last_number) SELECT cluster, number FROM cluster_crls;
    `,
  },
  {
    version: 7,
    name: 'join tokens name the identity certified when they were spent',
    sql: `
      -- The serial of the identity certificate a token was spent for: an enrolment whose answer
      -- was lost is answered again, for the same key only (coordinator/service/identities.ts).
      -- No foreign key: certificates are never deleted but with their cluster, as tokens are.
      ALTER TABLE join_tokens ADD COLUMN identity_serial text;
    `,
  },
];

export type Queryable = Pick<pg.PoolClient, 'query'>;

export interface PoolSettings {
  max: number;
  queueWaitMs: number;
}

/**
 * Ten connections, and a query waits up to 30 s for one (then 503 E_STORE_BUSY). A busy pool is
 * a queue, not a failure: at 10,000 agents a PUT waited behind their queries for longer than the
 * 5 s that used to bound it, and that wait was taken for the store failing (issue 13).
 */
export const POOL: PoolSettings = { max: 10, queueWaitMs: 30_000 };

export class Store {
  readonly events = new EventEmitter();
  /** Migrations this process applied when it opened the store. */
  applied: number[] = [];
  #listener: pg.Client | null = null;
  /** Index of the host the listener holds its LISTEN on. */
  #listenerHost = -1;
  #closed = false;

  constructor(
    readonly pool: FailoverPool,
    readonly hosts: StoreHosts,
    private readonly log: Logger,
  ) {
    this.events.setMaxListeners(0);
    pool.on('error', (e) => {
      // Message and SQLSTATE only: node-postgres hangs its whole Client on the error (the
      // backend's cancel key, connection parameters), which must not reach a log.
      log.error({ err: e.message, code: (e as { code?: string }).code }, 'idle database connection failed');
      hosts.suspect(hosts.epoch);
    });
    // The pool found another host (a failover): LISTEN there too, or NOTIFYs sent there are missed.
    hosts.on('moved', () => {
      if (this.#listener && this.#listenerHost !== hosts.current) void this.#listener.end().catch(() => undefined);
      this.events.emit('available');
    });
  }

  /**
   * `connection`: a ClientConfig, or a connectionString that may list several hosts (see
   * store-hosts.ts). `pool`: its size and how long a query may wait for one of its connections.
   */
  static async open(connection: pg.ClientConfig, log: Logger, pool: Partial<PoolSettings> = {}): Promise<Store> {
    const hosts = new StoreHosts(parseStoreTargets(connection), log);
    const store = new Store(new FailoverPool(hosts, { ...POOL, ...pool }), hosts, log);
    store.applied = await store.migrate();
    await store.listen();
    return store;
  }

  async migrate(): Promise<number[]> {
    return this.tx(async (c) => {
      await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK.toString()]);
      await c.query(`CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
      const done = new Set((await c.query<{ version: number }>('SELECT version FROM schema_migrations')).rows.map((r) => r.version));
      const applied: number[] = [];
      for (const m of MIGRATIONS) {
        if (done.has(m.version)) continue;
        await c.query(m.sql);
        await c.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
        applied.push(m.version);
        this.log.info({ version: m.version, name: m.name }, 'applied store migration');
      }
      return applied;
    });
  }

  async tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const epoch = this.hosts.epoch;
    const c = await this.pool.connect();
    let failure: unknown;
    try {
      await c.query('BEGIN');
      const result = await fn(c);
      await c.query('COMMIT');
      return result;
    } catch (e) {
      failure = e;
      await c.query('ROLLBACK').catch(() => undefined);
      throw this.pool.failed(e, epoch);
    } finally {
      // A connection the store failed on is not handed out again.
      c.release(failure !== undefined && isStoreFailure(failure));
    }
  }

  async query<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<R[]> {
    return (await this.pool.query<R>(sql, params)).rows;
  }

  /**
   * Run `fn`; while it fails because the store is away, run it again whenever the store may be
   * back (a writable host found, LISTEN holding again) and at least every second, for at most
   * `budgetMs`; then the last StoreUnavailableError. An agent's long-poll is held this way
   * instead of refused, so a failover does not push the agent into its backoff.
   */
  async whileAway<T>(budgetMs: number, fn: () => Promise<T>): Promise<{ value: T; heldMs: number }> {
    const start = Date.now();
    for (;;) {
      try {
        return { value: await fn(), heldMs: Date.now() - start };
      } catch (e) {
        const left = start + budgetMs - Date.now();
        if (!(e instanceof StoreUnavailableError) || left <= 0 || this.#closed) throw e;
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            this.events.off('available', done);
            resolve();
          };
          const timer = setTimeout(done, Math.min(1000, left));
          this.events.on('available', done);
        });
      }
    }
  }

  /** Tell every coordinator on this database (ourselves included) that a cluster changed. */
  async notify(c: Queryable, cluster: string): Promise<void> {
    await c.query('SELECT pg_notify($1, $2)', [NOTIFY_CHANNEL, cluster]);
  }

  /**
   * LISTEN on the current host. When that connection is lost (the server died, or the pool moved
   * to another host), every long-poll is woken, and LISTEN is re-established wherever the
   * acceptable host now is, retrying until it holds; then every long-poll is woken again, to
   * re-read its cluster's generation: a change committed while we were deaf (its NOTIFY went to
   * nobody) is seen then.
   */
  private async listen(): Promise<void> {
    if (this.#closed) return;
    const at = this.hosts.current;
    const seen = this.hosts.epoch;
    const client = new pg.Client(this.hosts.clientConfig());
    let lost = false;
    const onLost = (e?: Error) => {
      if (lost) return;
      lost = true;
      if (this.#listener === client) this.#listener = null;
      void client.end().catch(() => undefined);
      if (this.#closed) return;
      this.log.warn({ err: e, host: this.hosts.targets.hosts[at]!.name }, 'LISTEN connection lost: waking every long-poll, reconnecting');
      this.events.emit('cluster', '*');
      this.#relisten(seen);
    };
    client.on('notification', (msg) => {
      if (msg.channel === NOTIFY_CHANNEL && msg.payload) this.events.emit('cluster', msg.payload);
    });
    client.on('error', onLost);
    client.on('end', () => onLost());
    try {
      await client.connect();
      if (!(await this.hosts.acceptable(client))) throw new StoreUnavailableError(`${this.hosts.targets.hosts[at]!.name} does not accept writes`);
      await client.query(`LISTEN ${NOTIFY_CHANNEL}`);
    } catch (e) {
      lost = true; // this attempt failed: the caller retries, not the handlers
      await client.end().catch(() => undefined);
      throw e;
    }
    if (this.#closed) {
      lost = true;
      await client.end().catch(() => undefined);
      return;
    }
    this.#listener = client;
    this.#listenerHost = at;
  }

  /** Retry LISTEN (rescanning the hosts first) every 250 ms doubling to 1 s, until it holds or the store closes. */
  #relisten(seen: number, attempt = 0): void {
    const timer = setTimeout(() => {
      if (this.#closed) return;
      let epoch = seen;
      void this.hosts.resolve(seen)
        .then(() => {
          epoch = this.hosts.epoch;
          return this.listen();
        })
        .then(() => {
          if (this.#closed) return;
          this.log.info({ host: this.hosts.host.name }, 'LISTEN re-established: long-polls re-read their generation');
          this.events.emit('cluster', '*');
          this.events.emit('available');
        }, (e: unknown) => {
          this.log.warn({ err: e instanceof StoreUnavailableError ? e.detail : (e as Error).message, attempt }, 'LISTEN not re-established yet; retrying');
          this.#relisten(epoch, attempt + 1);
        });
    }, Math.min(1000, 250 * 2 ** attempt));
    timer.unref();
  }

  async close(): Promise<void> {
    this.#closed = true;
    const l = this.#listener;
    this.#listener = null;
    if (l) await l.end().catch(() => undefined);
    await this.pool.end();
  }
}
