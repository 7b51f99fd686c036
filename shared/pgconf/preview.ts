// Pure: what the agent would write on a node, shown without a node (the plan endpoint, and
// `apply --dry-run`): the planner run on default paths and placeholder certificates.
import { CONFIG_HASH_SETTING } from './render.ts';
import type { NodeDesired } from '../contract/schema.ts';
import type { InstalledCertificate } from './types.ts';
import { layoutFor } from './layout.ts';
import { isPatroni, patroniBaseConf, renderPatroniFragment } from './patroni.ts';
import { planNode, type FileKey } from './plan.ts';

/** Where a node keeps its files by default (the agent's --state-dir and the postgres OS user's home). */
export interface PreviewPaths {
  stateDir: string;
  home: string;
  dataDir: string;
}

export const DEFAULT_PREVIEW_PATHS: PreviewPaths = { stateDir: '/var/lib/pgaccord', home: '/var/lib/postgresql', dataDir: '<PGDATA>' };

const FILE_WHAT: Record<FileKey, string> = {
  ca: 'CA bundle', crl: 'CRL',
  'server-pem': 'server certificate chain + key (one file: ssl_cert_file and ssl_key_file)',
  'server-ca': 'CA bundle (ssl_ca_file)',
  'server-crl': 'CRL (ssl_crl_file)',
  'client-cert': 'client certificate', 'client-key': 'client key', 'client-ca': 'CA bundle for the client', 'client-crl': 'CRL for the client',
  'patroni-api': 'Patroni REST API certificate chain + key (restapi.certfile and keyfile)',
  'patroni-client': 'Patroni client certificate + key (ctl, member calls, etcd3)',
  'patroni-fragment': 'Patroni configuration fragment',
  passfile: 'passfile',
  ident: 'pg_ident.conf (managed block on top)',
  hba: 'pg_hba.conf (managed block on top)',
  settings: 'settings include file',
  config: 'postgresql.conf (one include line appended)',
};

export interface Preview {
  /** The managed blocks the agent writes on top of pg_hba.conf and pg_ident.conf. */
  hba: string;
  ident: string;
  settings: Record<string, string>;
  files: string[];
}

/**
 * What the agent would write on a node with the default paths, without a node: for
 * `pgaccord apply --dry-run` and the plan endpoint, so that an operator who provisions
 * pg_hba.conf themselves sees every setting and file. Certificates are shown under their
 * versioned names (`<slot>-<serial>`), made on the node; the agent is assumed to connect as
 * postgres from the postgres OS user.
 */
export function previewNode(input: NodeDesired, paths: PreviewPaths = DEFAULT_PREVIEW_PATHS): Preview {
  const desired: NodeDesired = { ...input, caBundle: input.caBundle.trim() === '' ? '<cluster CA>' : input.caBundle };
  // Patroni rewrites postgresql.conf: the include line goes into postgresql.base.conf (agent/apply/apply.ts)
  const patroni = isPatroni(desired);
  const configFile = patroni ? patroniBaseConf(`${paths.dataDir}/postgresql.conf`) : `${paths.dataDir}/postgresql.conf`;
  const layout = layoutFor(paths.stateDir, { hbaFile: `${paths.dataDir}/pg_hba.conf`, identFile: `${paths.dataDir}/pg_ident.conf`, configFile }, paths.home);
  const certificates: InstalledCertificate[] = desired.certificates.map((c) => ({
    slot: c.id,
    certPath: `${layout.tlsDir}/${c.id}-<serial>.crt`,
    keyPath: `${layout.tlsDir}/${c.id}-<serial>.key`,
    serial: '<serial>',
    notAfter: '',
  }));
  const pems = Object.fromEntries(desired.certificates.map((c) => [c.id, { cert: '', key: '' }]));
  const existing = { hba: '', ident: '', config: '' };
  const plan = planNode({ desired, certificates, layout, localRole: 'postgres', localOsUsers: ['postgres'], existing, pems });
  const what = (k: FileKey): string => (k === 'config' && patroni ? "Patroni's base configuration, included first (one include line appended)" : FILE_WHAT[k]);
  const files = plan.files.map((f) => `${f.path} (${f.mode.toString(8).padStart(4, '0')}${f.secret ? ', secret' : ''}): ${what(f.key)}`);
  // Patroni: the fragment itself, passwords masked, for the operator to read before including it
  const fragment = plan.files.findIndex((f) => f.key === 'patroni-fragment');
  if (fragment >= 0) {
    const masked = renderPatroniFragment(desired, layout, { passwords: 'mask' }).trimEnd().split('\n');
    files[fragment] += `:\n${masked.map((l) => `      ${l}`).join('\n')}`;
  }
  for (const c of certificates) files.push(`${c.keyPath} (0600, made on the node), ${c.certPath} (0644): ${c.slot} key pair`);
  return { hba: plan.hbaBlock, ident: plan.identBlock, settings: { ...plan.settings, [CONFIG_HASH_SETTING]: '<hash of the managed files>' }, files };
}
