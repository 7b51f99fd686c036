// A profile is the conventions of one clustering system, written as data: which node kinds it
// has, which roles it needs, and which kind connects to which as what role. Adding a profile is
// adding one entry to PROFILES.
import type { ClusterSpec, HbaToken, ProfileName } from './schema.ts';

export interface ProfileRole {
  name: string;
  replication: boolean;
  /** Joined only when the role exists on the server (e.g. PGD's bdr_superuser). */
  inRoles: string[];
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
  dbname: string;
  /** A physical replication connection (walreceiver, pg_basebackup). */
  replication: boolean;
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
}

const kw = (keyword: 'all' | 'replication'): HbaToken => ({ keyword });
const db = (name: string): HbaToken => ({ name });
const fixed = (role: string) => () => [role];

export const PROFILES: Record<ProfileName, Profile> = {
  streaming: {
    name: 'streaming',
    kinds: ['primary', 'standby'],
    kindCounts: { primary: [1, 1], standby: [0, 999] },
    roles: [{ name: 'replicator', replication: true, inRoles: [] }],
    links: [
      // walreceiver and pg_basebackup, then pg_rewind's connection to the postgres database
      { from: 'standby', to: 'primary', roles: fixed('replicator'), databases: [kw('replication'), db('postgres')], dbname: 'postgres', replication: true },
    ],
    settings: {},
  },
  pgd: {
    name: 'pgd',
    kinds: ['peer'],
    kindCounts: { peer: [1, 999] },
    roles: [{ name: 'pgd_replication', replication: true, inRoles: ['bdr_superuser'] }],
    links: [
      { from: 'peer', to: 'peer', roles: fixed('pgd_replication'), databases: [kw('all'), kw('replication')], dbname: 'postgres', replication: false },
    ],
    settings: {},
  },
  'pg-auto-failover': {
    name: 'pg-auto-failover',
    kinds: ['monitor', 'postgres'],
    kindCounts: { monitor: [1, 1], postgres: [1, 999] },
    roles: [
      { name: 'autoctl_node', replication: false, inRoles: [] },
      { name: 'pgautofailover_monitor', replication: false, inRoles: [] },
      { name: 'pgautofailover_replicator', replication: true, inRoles: [] },
    ],
    links: [
      { from: 'postgres', to: 'monitor', roles: fixed('autoctl_node'), databases: [db('pg_auto_failover')], dbname: 'pg_auto_failover', replication: false },
      { from: 'monitor', to: 'postgres', roles: fixed('pgautofailover_monitor'), databases: [db('postgres')], dbname: 'postgres', replication: false },
      { from: 'postgres', to: 'postgres', roles: fixed('pgautofailover_replicator'), databases: [kw('replication'), db('postgres')], dbname: 'postgres', replication: true },
    ],
    settings: {},
  },
  'timescaledb-multinode': {
    name: 'timescaledb-multinode',
    kinds: ['access', 'data'],
    kindCounts: { access: [1, 999], data: [1, 999] },
    roles: [],
    links: [
      { from: 'access', to: 'data', roles: (spec) => (spec.roles ?? []).map((r) => r.name), databases: [kw('all')], dbname: 'postgres', replication: false },
    ],
    settings: {},
  },
};
