// A profile is the conventions of one clustering system, written as data: which node kinds it
// has, which roles it needs on which kind, which kind connects to which as what role, and where
// its client keeps its credentials. Adding a profile is adding one entry to PROFILES.
import type { CertificateSlot, ClientLayout, ClusterSpec, HbaToken, NodeSpec, ProfileName } from '../contract/schema.ts';
import { isIP } from './net.ts';
import { CONFIG_HASH_SETTING } from './render.ts';

export interface ProfileRole {
  name: string;
  replication: boolean;
  /** Joined only when the role exists on the server (e.g. PGD's bdr_superuser). */
  inRoles: string[];
  /** Node kinds the role is managed on; absent: every kind. */
  kinds?: string[];
  /** SUPERUSER (pg_auto_failover's replicator: pg_rewind needs it). */
  superuser?: boolean;
  connectionLimit?: number;
  /**
   * Owned by the system (pg_autoctl, initdb): never created or altered by pgaccord, only given
   * a verifier under scram when `password` is not false.
   */
  external?: boolean;
  /** false: pgaccord never manages its password (pg_autoctl's health-check user has a fixed one). */
  password?: boolean;
  /** A password the system itself hard-codes in its client (given to the client's passfile). */
  knownPassword?: string;
  /**
   * An external role that still gets the reject line: the system creates it (Patroni's
   * replication and rewind users, at bootstrap), but it must get in only through the managed rules.
   */
  rejectElsewhere?: boolean;
}

/** One kind of inter-node connection: every node of kind `from` connects to every node of kind `to`. */
export interface ProfileLink {
  from: string;
  to: string;
  /** The roles this link connects as. */
  roles: (spec: ClusterSpec) => string[];
  /** The pg_hba.conf database column on the server side. */
  databases: HbaToken[];
  /** The dbname the client puts in its connection string. */
  dbname: (spec: ClusterSpec) => string;
  /** A physical replication connection (walreceiver, pg_basebackup). */
  replication: boolean;
  /**
   * A node connects to itself too (pg_auto_failover: pg_basebackup and pg_rewind copy
   * pg_hba.conf between postgres nodes, so every postgres node carries the rules of all).
   */
  includeSelf?: boolean;
  /** The sslmode the client really uses when TLS is on (TimescaleDB always uses require). */
  sslmode?: 'require';
}

export interface Profile {
  name: ProfileName;
  kinds: string[];
  /** How many nodes of each kind a cluster may have ([min, max]). */
  kindCounts: Record<string, [number, number]>;
  roles: ProfileRole[];
  links: ProfileLink[];
  /** Extra settings the profile needs on every node. */
  settings: Record<string, string>;
  /**
   * Certificate auth with one client certificate for every role: its CN, and the ident map
   * that maps it to each role (pg_auto_failover: CN postgres, map pgautofailover). Absent: one
   * certificate per role with CN = role, no map.
   */
  certIdentity?: { commonName: string; map: string };
  /** Where the client keeps its credentials; absent: the agent's own layout. */
  clientLayout?: ClientLayout;
  /** Server TLS files under fixed names (see NodeDesired.stableServerFiles). */
  stableServerFiles?: boolean;
  /** Certificates the system itself needs besides PostgreSQL's (Patroni's REST API and its clients). */
  extraCertificates?: (spec: ClusterSpec, node: NodeSpec) => CertificateSlot[];
}

const kw = (keyword: 'all' | 'replication'): HbaToken => ({ keyword });
const db = (name: string): HbaToken => ({ name });
const fixed = (role: string) => () => [role];
const constant = (name: string) => () => name;
const specDatabase = (spec: ClusterSpec): string => spec.database ?? 'postgres';

/** pg_autoctl's health-check user and the password its monitor always sends (defaults.h). */
export const PGAF_HEALTH_USER = 'pgautofailover_monitor';

/** Patroni's users (its `postgresql.authentication`): created by Patroni at bootstrap. */
export const PATRONI_REPLICATION_USER = 'replicator';
export const PATRONI_REWIND_USER = 'rewind_user';
/** The REST API's server certificate and the client certificate of ctl, member calls and etcd3. */
export const PATRONI_API_SLOT = 'patroni-api';
export const PATRONI_CLIENT_SLOT = 'patroni-client';

/**
 * The REST API certificate names what the server certificate names (`restapi.connect_address`
 * is the member's host, as `postgresql.connect_address` is); the client one is the same
 * identity on every member (CN `patroni`: one etcd user, should etcd auth be on).
 */
function patroniCertificates(spec: ClusterSpec, node: NodeSpec): CertificateSlot[] {
  const address = node.address ?? node.host;
  return [
    {
      id: PATRONI_API_SLOT, usage: 'server', commonName: node.host, dnsNames: isIP(node.host) ? [] : [node.host],
      ipAddresses: [...new Set([address, ...(isIP(node.host) ? [node.host] : [])])].filter((a) => isIP(a)),
    },
    { id: PATRONI_CLIENT_SLOT, usage: 'client', commonName: 'patroni', dnsNames: [], ipAddresses: [] },
  ];
}

export const PROFILES: Record<ProfileName, Profile> = {
  streaming: {
    name: 'streaming',
    kinds: ['primary', 'standby'],
    kindCounts: { primary: [1, 1], standby: [0, 999] },
    roles: [{ name: 'replicator', replication: true, inRoles: [] }],
    links: [
      // walreceiver and pg_basebackup, then pg_rewind's connection to the postgres database
      {
        from: 'standby', to: 'primary', roles: fixed('replicator'),
        databases: [kw('replication'), db('postgres')], dbname: constant('postgres'), replication: true,
      },
    ],
    settings: {},
    // The connection string ends up in primary_conninfo (pg_basebackup -R, or by hand): it must
    // name files that outlive a renewal, a CA rotation and a CRL refresh, so fixed names.
    clientLayout: {
      base: 'state-dir', dir: 'client', cert: 'replicator.crt', key: 'replicator.key', ca: 'root.crt', crl: 'root.crl', chain: false,
      passfile: 'client/passfile', passfileLines: 'host', conninfo: 'names-files', settings: {},
    },
  },
  pgd: {
    name: 'pgd',
    kinds: ['peer'],
    kindCounts: { peer: [1, 999] },
    roles: [{ name: 'pgd_replication', replication: true, inRoles: ['bdr_superuser'] }],
    links: [
      // dbname: the BDR database (`database` in the spec), as bdr.alter_node_interface() needs it
      { from: 'peer', to: 'peer', roles: fixed('pgd_replication'), databases: [kw('all'), kw('replication')], dbname: specDatabase, replication: false },
    ],
    settings: {},
    // seed 004: bdr_client.crt, bdr_client.key, root.crt, named in the interface connection string
    clientLayout: {
      base: 'state-dir', dir: 'client', cert: 'bdr_client.crt', key: 'bdr_client.key', ca: 'root.crt', crl: 'root.crl', chain: false,
      passfile: 'client/passfile', passfileLines: 'host', conninfo: 'names-files', settings: {},
    },
  },
  'pg-auto-failover': {
    name: 'pg-auto-failover',
    kinds: ['monitor', 'postgres'],
    kindCounts: { monitor: [1, 1], postgres: [1, 999] },
    roles: [
      // created by the pgautofailover extension too (if not exists): same attributes
      { name: 'autoctl_node', replication: false, inRoles: [], kinds: ['monitor'] },
      // pg_autoctl creates it on the primary as LOGIN SUPERUSER REPLICATION and skips it when it
      // exists: pgaccord creates it exactly so, never NOSUPERUSER (pg_rewind needs it)
      { name: 'pgautofailover_replicator', replication: true, superuser: true, inRoles: [], kinds: ['postgres'] },
      // pg_autoctl's own, with the fixed password its monitor always sends: left to pg_autoctl
      { name: PGAF_HEALTH_USER, replication: false, inRoles: [], kinds: ['postgres'], external: true, password: false, knownPassword: PGAF_HEALTH_USER },
    ],
    links: [
      {
        from: 'postgres', to: 'monitor', roles: fixed('autoctl_node'),
        databases: [db('pg_auto_failover')], dbname: constant('pg_auto_failover'), replication: false,
      },
      { from: 'monitor', to: 'postgres', roles: fixed(PGAF_HEALTH_USER), databases: [db('postgres')], dbname: constant('postgres'), replication: false },
      {
        from: 'postgres', to: 'postgres', roles: fixed('pgautofailover_replicator'),
        databases: [kw('replication'), db('postgres')], dbname: constant('postgres'), replication: true, includeSelf: true,
      },
    ],
    settings: {},
    certIdentity: { commonName: 'postgres', map: 'pgautofailover' },
    // seed 003: ~/.postgresql/{postgresql.crt,postgresql.key,root.crt,root.crl} and ~/.pgpass of
    // the OS user that runs pg_autoctl; pg_autoctl never names a client certificate
    clientLayout: {
      base: 'home', dir: '.postgresql', cert: 'postgresql.crt', key: 'postgresql.key', ca: 'root.crt', crl: 'root.crl', chain: false,
      passfile: '.pgpass', passfileLines: 'host', conninfo: 'libpq-defaults', settings: {},
    },
    stableServerFiles: true,
  },
  patroni: {
    name: 'patroni',
    kinds: ['member'],
    kindCounts: { member: [1, 999] },
    roles: [
      // Patroni creates both in post_bootstrap (create-or-alter, and the rewind user's EXECUTE
      // grants on pg_ls_dir, pg_stat_file, pg_read_binary_file): pgaccord never creates them, so
      // its transaction cannot collide with Patroni's and fail the bootstrap; it gives them a
      // verifier under scram and rejects them everywhere but the managed rules.
      { name: PATRONI_REPLICATION_USER, replication: true, inRoles: [], external: true, rejectElsewhere: true },
      { name: PATRONI_REWIND_USER, replication: false, inRoles: [], external: true, rejectElsewhere: true },
    ],
    links: [
      // walreceiver and pg_basebackup (replication), Patroni's replication=database checks (postgres)
      {
        from: 'member', to: 'member', roles: fixed(PATRONI_REPLICATION_USER),
        databases: [kw('replication'), db('postgres')], dbname: constant('postgres'), replication: true, includeSelf: true,
      },
      // pg_rewind --source-server and Patroni's checkpoint/timeline checks on the leader
      {
        from: 'member', to: 'member', roles: fixed(PATRONI_REWIND_USER),
        databases: [db('postgres')], dbname: constant('postgres'), replication: false, includeSelf: true,
      },
    ],
    settings: {},
    // Named in the agent's Patroni fragment (postgresql.authentication.*.sslcert/sslkey...), which
    // Patroni copies into primary_conninfo and pg_rewind's connection string: fixed names that
    // outlive every renewal. The passfile is only the agent's (its probes): Patroni writes its own
    // from the fragment's passwords.
    clientLayout: {
      base: 'state-dir', dir: 'patroni', cert: '{role}.crt', key: '{role}.key', ca: 'root.crt', crl: 'root.crl', chain: false,
      passfile: 'patroni/passfile', passfileLines: 'host', conninfo: 'names-files', settings: {},
    },
    // pg_basebackup copies postgresql.base.conf with its include and pgaccord.conf to new members
    stableServerFiles: true,
    extraCertificates: patroniCertificates,
  },
  'timescaledb-multinode': {
    name: 'timescaledb-multinode',
    kinds: ['access', 'data'],
    kindCounts: { access: [1, 999], data: [1, 999] },
    // add_data_node and distributed_exec run as postgres: the seed gives it the first line and certificate
    roles: [{ name: 'postgres', replication: false, inRoles: [], kinds: ['data'], external: true }],
    links: [
      {
        from: 'access', to: 'data',
        roles: (spec) => [...new Set(['postgres', ...(spec.roles ?? []).map((r) => r.name)])],
        databases: [kw('all')], dbname: specDatabase, replication: false, sslmode: 'require',
      },
    ],
    settings: {},
    // seed 000: <timescaledb.ssl_dir>/<md5(role)>.crt (leaf + chain) and .key, and the passfile
    // named by timescaledb.passfile, one *:*:*:role:password line per role
    clientLayout: {
      base: 'state-dir', dir: 'timescaledb/certs', cert: '{md5}.crt', key: '{md5}.key', ca: null, crl: null, chain: true,
      passfile: 'timescaledb/passfile', passfileLines: 'any', conninfo: 'names-files',
      settings: { 'timescaledb.passfile': 'passfile', 'timescaledb.ssl_dir': 'dir' },
    },
  },
};

/**
 * The settings pgaccord itself writes into its include file, on every profile: the server's TLS
 * files and protocol floor, the password hashing, and its configuration-hash marker. Named one
 * by one, never `ssl*`: ssl_passphrase_command runs a command.
 */
export const PGACCORD_SETTINGS: readonly string[] = [
  'ssl', 'ssl_min_protocol_version', 'ssl_cert_file', 'ssl_key_file', 'ssl_ca_file', 'ssl_crl_file',
  'password_encryption', CONFIG_HASH_SETTING,
];

/**
 * Every setting a desired state of this profile may carry, the agent's allowlist: the ones
 * above and the profile's own (its settings, its client layout's). Whoever can set any other
 * (archive_command, shared_preload_libraries) runs code on the node, so the agent refuses them
 * even when its coordinator sends them.
 */
export function allowedSettings(profile: ProfileName): ReadonlySet<string> {
  const p = PROFILES[profile] as Profile | undefined;
  return new Set([...PGACCORD_SETTINGS, ...Object.keys(p?.settings ?? {}), ...Object.keys(p?.clientLayout?.settings ?? {})]);
}
