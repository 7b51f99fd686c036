// The single source of the types shared by coordinator and agent: the cluster spec and the desired
// state of a node (what agents report back: ./status.ts). Every TypeBox schema here is both a JSON
// Schema (validation, fastify response serialisation, OpenAPI) and a TypeScript type.
import { Type, type Static, type TSchema } from '@sinclair/typebox';

/** A schema or null (JSON null, not an absent field). */
export const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);

// ---------------------------------------------------------------------------------------------
// Cluster spec: what `pgaccord apply -f FILE` takes and what PUT /v1/clusters/{name} carries.

export const NAME_PATTERN = '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$';
/** Role names: lower-case SQL identifiers, so they need no quoting anywhere and cannot be keywords. */
export const ROLE_PATTERN = '^[a-z_][a-z0-9_]{0,62}$';

export const ProfileName = Type.Union([
  Type.Literal('streaming'),
  Type.Literal('pgd'),
  Type.Literal('pg-auto-failover'),
  Type.Literal('timescaledb-multinode'),
  Type.Literal('patroni'),
]);
export type ProfileName = Static<typeof ProfileName>;

export const AuthModel = Type.Union([Type.Literal('trust'), Type.Literal('scram-sha-256'), Type.Literal('cert')]);
export type AuthModel = Static<typeof AuthModel>;

export const SslMode = Type.Union([
  Type.Literal('disable'),
  Type.Literal('require'),
  Type.Literal('verify-ca'),
  Type.Literal('verify-full'),
]);
export type SslMode = Static<typeof SslMode>;

export const HbaType = Type.Union([
  Type.Literal('local'),
  Type.Literal('host'),
  Type.Literal('hostssl'),
  Type.Literal('hostnossl'),
]);
export type HbaType = Static<typeof HbaType>;

export const HbaMethod = Type.Union([
  Type.Literal('trust'),
  Type.Literal('reject'),
  Type.Literal('scram-sha-256'),
  Type.Literal('md5'),
  Type.Literal('cert'),
  Type.Literal('peer'),
]);
export type HbaMethod = Static<typeof HbaMethod>;

export const NodeSpec = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN }),
    host: Type.String({ minLength: 1, maxLength: 253 }),
    address: Type.Optional(Type.String({ minLength: 1 })),
    port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535 })),
    kind: Type.String({ minLength: 1 }),
  },
  { additionalProperties: false },
);
export type NodeSpec = Static<typeof NodeSpec>;

export const RoleSpec = Type.Object(
  { name: Type.String({ pattern: ROLE_PATTERN }) },
  { additionalProperties: false },
);

const HbaNameList = Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })]);

export const HbaRuleSpec = Type.Object(
  {
    type: HbaType,
    database: HbaNameList,
    user: HbaNameList,
    address: Type.Optional(Type.String({ minLength: 1 })),
    method: HbaMethod,
  },
  { additionalProperties: false },
);
export type HbaRuleSpec = Static<typeof HbaRuleSpec>;

/** Key types of node certificates (shared/crypto/key-types.ts KEY_TYPES). */
export const NodeKeyType = Type.Union([Type.Literal('rsa-2048'), Type.Literal('ecdsa-p256')]);
export type NodeKeyType = Static<typeof NodeKeyType>;

export const ClusterSpec = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN }),
    profile: ProfileName,
    auth: AuthModel,
    tls: Type.Object(
      {
        sslmode: SslMode,
        certLifetime: Type.Optional(Type.String({ minLength: 2 })),
        /** Key type of the node certificates the agents make (default rsa-2048). */
        keyType: Type.Optional(NodeKeyType),
      },
      { additionalProperties: false },
    ),
    nodes: Type.Array(NodeSpec, { minItems: 1, maxItems: 1000 }),
    roles: Type.Optional(Type.Array(RoleSpec, { maxItems: 1000 })),
    hba: Type.Optional(Type.Array(HbaRuleSpec, { maxItems: 1000 })),
    /**
     * The database the profile's client names in its connection strings: pgd's BDR database
     * (the seed's `pgddb`), timescaledb-multinode's distributed database. Default `postgres`.
     */
    database: Type.Optional(Type.String({ pattern: ROLE_PATTERN })),
  },
  { additionalProperties: false },
);
export type ClusterSpec = Static<typeof ClusterSpec>;

// ---------------------------------------------------------------------------------------------
// Desired state of one node: what the compiler produces and the agent applies.

/** A pg_hba.conf database/user entry: a keyword, or a name that can only mean itself. */
export const HbaToken = Type.Union([
  Type.Object(
    { keyword: Type.Union([Type.Literal('all'), Type.Literal('replication'), Type.Literal('sameuser'), Type.Literal('samerole')]) },
    { additionalProperties: false },
  ),
  Type.Object({ name: Type.String() }, { additionalProperties: false }),
]);
export type HbaToken = Static<typeof HbaToken>;

export const HbaRule = Type.Object(
  {
    type: HbaType,
    databases: Type.Array(HbaToken, { minItems: 1 }),
    users: Type.Array(HbaToken, { minItems: 1 }),
    /** CIDR; absent for `local`. */
    address: Type.Optional(Type.String()),
    method: HbaMethod,
    /** e.g. map=pgautofailover, clientcert=verify-full */
    options: Type.Optional(Type.Record(Type.String(), Type.String())),
    /** Why the rule exists, written as a comment above it. */
    comment: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);
export type HbaRule = Static<typeof HbaRule>;

export const IdentLine = Type.Object(
  { map: Type.String(), systemUser: Type.String(), databaseUser: Type.String() },
  { additionalProperties: false },
);
export type IdentLine = Static<typeof IdentLine>;

export const RoleDesired = Type.Object(
  {
    name: Type.String(),
    login: Type.Boolean(),
    replication: Type.Boolean(),
    /** Roles to join, only where they exist (e.g. bdr_superuser). */
    inRoles: Type.Array(Type.String()),
    /** SCRAM-SHA-256 verifier; null when the auth model needs no password. Never plaintext. */
    verifier: Nullable(Type.String()),
    /** SUPERUSER (pg_auto_failover's replicator: pg_rewind needs it). Absent: the attribute is left alone. */
    superuser: Type.Optional(Type.Boolean()),
    /** CONNECTION LIMIT when the role is created. */
    connectionLimit: Type.Optional(Type.Integer({ minimum: -1 })),
    /**
     * Owned by the clustering system (or the bootstrap superuser): never created, altered or
     * joined to groups by pgaccord, left out of the reject lines; only a verifier, when given,
     * is set. Absent means false.
     */
    external: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type RoleDesired = Static<typeof RoleDesired>;

export const CertUsage = Type.Union([Type.Literal('server'), Type.Literal('client')]);
export type CertUsage = Static<typeof CertUsage>;

/** A certificate the node must hold. The coordinator signs exactly this, whatever a CSR asks. */
export const CertificateSlot = Type.Object(
  {
    /** 'server', or 'client-<role>' */
    id: Type.String(),
    usage: CertUsage,
    commonName: Type.String(),
    dnsNames: Type.Array(Type.String()),
    ipAddresses: Type.Array(Type.String()),
  },
  { additionalProperties: false },
);
export type CertificateSlot = Static<typeof CertificateSlot>;

/** An outgoing inter-node connection this node makes, as the profile's client would. */
export const Edge = Type.Object(
  {
    to: Type.String(),
    role: Type.String(),
    host: Type.String(),
    port: Type.Integer(),
    dbname: Type.String(),
    /** True for physical replication connections (replication=true in libpq terms). */
    replication: Type.Boolean(),
    sslmode: SslMode,
    /** id of the client CertificateSlot used, when auth is cert. */
    clientCertificate: Nullable(Type.String()),
    usesPassfile: Type.Boolean(),
  },
  { additionalProperties: false },
);
export type Edge = Static<typeof Edge>;

/**
 * Where the profile's client looks for its credentials (SPEC "On each node"). Absent: the
 * agent's own layout (versioned pairs and <state>/client/passfile, named in the connection string).
 */
/** A path relative to a base directory: no leading slash, no `.` or `..` segment (no way out of the base). */
const RELATIVE_PATH = '^\\.?[A-Za-z0-9_{}-][A-Za-z0-9._{}-]*(/\\.?[A-Za-z0-9_{}-][A-Za-z0-9._{}-]*)*$';
const FILE_NAME = '^\\.?[A-Za-z0-9_{}-][A-Za-z0-9._{}-]*$';
const RelativePath = Type.String({ pattern: RELATIVE_PATH });
const FileName = Type.String({ pattern: FILE_NAME });

export const ClientLayout = Type.Object(
  {
    /** What `dir` and `passfile` are relative to: the agent's state directory, or the home of the client's OS user. */
    base: Type.Union([Type.Literal('state-dir'), Type.Literal('home')]),
    /** Directory of the certificate files, relative to base (e.g. `.postgresql`, `timescaledb/certs`). */
    dir: RelativePath,
    /** File names in dir; `{md5}` stands for the md5 hex of the role name (TimescaleDB). null: not written. */
    cert: Nullable(FileName),
    key: Nullable(FileName),
    ca: Nullable(FileName),
    crl: Nullable(FileName),
    /** The certificate file holds the leaf followed by the CA bundle (TimescaleDB's chain). */
    chain: Type.Boolean(),
    /** The passfile, relative to base. */
    passfile: RelativePath,
    /** `host`: one line per server (host:port:*:role:pw); `any`: *:*:*:role:pw (TimescaleDB). */
    passfileLines: Type.Union([Type.Literal('host'), Type.Literal('any')]),
    /**
     * `names-files`: connection strings name sslcert/sslkey/sslrootcert/passfile (PGD, TimescaleDB);
     * `libpq-defaults`: they name none of the client files, libpq finds them in ~/.postgresql and
     * ~/.pgpass (pg_autoctl; it names only sslrootcert/sslcrl, its --ssl-ca-file/--ssl-crl-file).
     */
    conninfo: Type.Union([Type.Literal('names-files'), Type.Literal('libpq-defaults')]),
    /** Settings written into this node's include file that point at the client files. */
    settings: Type.Record(Type.String(), Type.Union([Type.Literal('passfile'), Type.Literal('dir')])),
  },
  { additionalProperties: false },
);
export type ClientLayout = Static<typeof ClientLayout>;

/** Plaintext passwords go to the connecting side only, into a 0600 passfile. */
export const ClientSecret = Type.Object(
  { role: Type.String(), password: Type.String() },
  { additionalProperties: false },
);
export type ClientSecret = Static<typeof ClientSecret>;

export const NodeDesired = Type.Object(
  {
    apiVersion: Type.Literal(1),
    cluster: Type.String(),
    node: Type.String(),
    kind: Type.String(),
    generation: Type.Integer({ minimum: 1 }),
    profile: ProfileName,
    auth: AuthModel,
    sslmode: SslMode,
    /** true when the server must have ssl=on (every TLS mode except disable) */
    tls: Type.Boolean(),
    certLifetimeSeconds: Type.Integer({ minimum: 60 }),
    /** Key type for new node certificate keys; absent: rsa-2048 (and older coordinators send none). */
    keyType: Type.Optional(NodeKeyType),
    hba: Type.Array(HbaRule),
    ident: Type.Array(IdentLine),
    /** Settings other than file paths; the agent adds ssl_*_file from its own layout. */
    settings: Type.Record(Type.String(), Type.String()),
    roles: Type.Array(RoleDesired),
    certificates: Type.Array(CertificateSlot),
    clientSecrets: Type.Array(ClientSecret),
    edges: Type.Array(Edge),
    /** PEM bundle of the cluster CA(s) this node trusts. */
    caBundle: Type.String(),
    crl: Nullable(Type.String()),
    /** Serials (hex) the operator asked to re-issue (`pgaccord cert renew`): the agent renews a pair with one of them. */
    renewSerials: Type.Optional(Type.Array(Type.String())),
    /** Where the client credentials go; absent: the agent's own layout. */
    clientLayout: Type.Optional(ClientLayout),
    /**
     * The server's TLS files under fixed names in <state>/server/ (server.pem = certificate chain
     * + key in one 0600 file, root.crt, root.crl), so that a PGDATA copied by pg_basebackup or
     * pg_rewind names files that exist on every node, and tools that store the paths
     * (pg_autoctl --server-cert/--ssl-ca-file) keep following renewals. Absent: versioned names.
     */
    stableServerFiles: Type.Optional(Type.Boolean()),
    /**
     * true: the node is the only one in its cluster (the last standby removed), so no HBA rules
     * is the expected state, not a wiped one. Sent only then: an agent that predates the field
     * refuses unknown fields, and would refuse that state anyway.
     */
    alone: Type.Optional(Type.Literal(true)),
    /**
     * A password rotation: the instant (ISO 8601) at which every node switches its passfile and
     * commits its new verifiers, so that the client and server halves of each edge change
     * together. The agent stages the rest of the apply first, waits for the instant (at most
     * 10 s), then does both back to back; past it, at once. Sent only to agents that ask for it
     * (`features=passwords-at`): an agent that predates the field refuses unknown fields.
     */
    passwordsAt: Type.Optional(Type.String({ maxLength: 40 })),
  },
  { additionalProperties: false },
);
export type NodeDesired = Static<typeof NodeDesired>;
