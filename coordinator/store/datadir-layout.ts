// Where the coordinator keeps its files: names only, so the admin CLI (the token, the CA) and
// `pgaccord coordinator --help` need not load the CA code (node-forge) that datadir.ts needs.
export const DEFAULT_DATA_DIR = '/var/lib/pgaccord-coordinator';
export const FILES = {
  caCert: 'ca.crt',
  caKey: 'coordinator-ca.key',
  serverCert: 'server.crt',
  serverKey: 'server.key',
  masterKey: 'master.key',
  adminToken: 'admin.token',
  pg: 'pg',
  storePassword: 'store.password',
} as const;
