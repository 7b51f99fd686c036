// Where the coordinator keeps its files: names only, so the admin CLI can find the token and
// CA without loading the CA code (node-forge) that datadir.ts needs.
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
