// The coordinator's data directory. First start creates its CA, its server certificate, the
// master key that seals secrets at rest and the admin token. Every secret file is created with
// mode 0600 and O_EXCL from its first instant: never written first and chmod-ed after.
import { createPrivateKey, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { CertificateAuthority } from '../ca/ca.ts';
import { certInfo, certMatchesKey, keyTypeOf } from '../../shared/crypto/x509.ts';
import { createCsr, readCsrKey } from '../../shared/crypto/csr.ts';
import { DEFAULT_TLS_KEY_TYPE, type KeyType } from '../../shared/crypto/key-types.ts';
import { generateKey } from '../../shared/crypto/keys.ts';
import { installFile } from '../../shared/system/atomic-file.ts';
import { FILES } from './datadir-layout.ts';

export { DEFAULT_DATA_DIR, FILES } from './datadir-layout.ts';
export const SERVER_CERT_LIFETIME_S = 365 * 86400;

export interface DataDir {
  dir: string;
  ca: CertificateAuthority;
  caPem: string;
  serverCertPem: string;
  serverKeyPem: string;
  masterKey: Buffer;
  adminToken: string;
}

/** Through the one atomic writer: final mode from the first instant, fsync, rename, fsync of the directory. */
async function writeFileAtomic(path: string, data: string | Buffer, mode: number): Promise<void> {
  await installFile({ path, content: Buffer.isBuffer(data) ? data : Buffer.from(data, 'utf8'), mode, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 });
}

/** A secret file, refused when others can read it. */
async function readSecret(path: string): Promise<Buffer> {
  const st = await stat(path);
  if ((st.mode & 0o077) !== 0) {
    throw new Error(`${path} is readable by others (mode ${(st.mode & 0o777).toString(8)}): it holds a secret; chmod 600 it`);
  }
  return readFile(path);
}

/** Read a secret file, creating it (0600 from the start) when it does not exist yet. */
async function readOrCreateSecret(path: string, make: () => Promise<string | Buffer>): Promise<Buffer> {
  if (!existsSync(path)) await writeFileAtomic(path, await make(), 0o600);
  return readSecret(path);
}

function needsNewServerCert(pem: string, hosts: string[], now: Date, ca: CertificateAuthority): boolean {
  try {
    const info = certInfo(pem);
    const covered = hosts.every((h) => (isIP(h) ? info.ipAddresses.includes(h) : info.dnsNames.includes(h)));
    const renewAt = info.notAfter.getTime() - 30 * 86400 * 1000;
    return !covered || now.getTime() > renewAt || info.issuerCommonName !== certInfo(ca.certPem).commonName;
  } catch {
    return true;
  }
}

/**
 * The embedded store's superuser password (0600, the coordinator's own OS user; the store's OS
 * user cannot read it), made at first use. Only the coordinator connects with it.
 */
export async function readOrCreateStorePassword(dir: string): Promise<string> {
  const password = (await readOrCreateSecret(join(dir, FILES.storePassword), async () => `${randomBytes(32).toString('base64url')}\n`)).toString().trim();
  if (!/^[A-Za-z0-9_-]{32,}$/.test(password)) throw new Error(`${join(dir, FILES.storePassword)} does not hold a store password (32 or more of [A-Za-z0-9_-]): remove it and a new one is made at the next start`);
  return password;
}

export interface DataDirOptions {
  /** Type of the HTTPS key (default DEFAULT_TLS_KEY_TYPE); a key of another type is replaced. */
  tlsKeyType?: KeyType;
}

/**
 * Open the data directory, creating whatever is missing. `hosts` are the names clients use to
 * reach this coordinator; the server certificate covers them plus localhost/127.0.0.1/::1.
 */
export async function openDataDir(dir: string, hosts: string[], now: Date, opts: DataDirOptions = {}): Promise<DataDir> {
  // 0711: an embedded PostgreSQL (another OS user) must traverse it; every secret inside is 0600.
  await mkdir(dir, { recursive: true, mode: 0o711 });
  await chmod(dir, 0o711);
  const p = (name: string) => join(dir, name);

  let ca: CertificateAuthority;
  const hasKey = existsSync(p(FILES.caKey));
  const hasCert = existsSync(p(FILES.caCert));
  if (hasKey !== hasCert) {
    // Never replace half a trust root: every enrolled agent and every join token pins this CA.
    throw new Error(`${dir} has ${hasKey ? FILES.caKey : FILES.caCert} but not ${hasKey ? FILES.caCert : FILES.caKey}: restore the missing file from a backup (a new CA would cut off every enrolled agent)`);
  }
  if (!hasKey) {
    const created = await CertificateAuthority.create('pgaccord coordinator CA', now);
    await writeFileAtomic(p(FILES.caKey), created.keyPem, 0o600);
    await writeFileAtomic(p(FILES.caCert), created.ca.certPem, 0o644);
    ca = created.ca;
  } else {
    const keyPem = (await readSecret(p(FILES.caKey))).toString();
    ca = new CertificateAuthority((await readFile(p(FILES.caCert))).toString(), keyPem);
  }

  const tlsKeyType = opts.tlsKeyType ?? DEFAULT_TLS_KEY_TYPE;
  let serverKeyPem = (await readOrCreateSecret(p(FILES.serverKey), async () => (await generateKey(tlsKeyType)).privateKeyPem)).toString();
  // Another type asked for (or a key of a type pgaccord does not make): a new key, and below a
  // new certificate for it. Agents pin the coordinator CA, not this key.
  let newKey = false;
  if (keyTypeOf(createPrivateKey(serverKeyPem)) !== tlsKeyType) {
    serverKeyPem = (await generateKey(tlsKeyType)).privateKeyPem;
    await writeFileAtomic(p(FILES.serverKey), serverKeyPem, 0o600);
    newKey = true;
  }
  const allHosts = [...new Set(['localhost', '127.0.0.1', '::1', ...hosts.filter((h) => h && h !== '0.0.0.0' && h !== '::')])];
  let serverCertPem = existsSync(p(FILES.serverCert)) ? (await readFile(p(FILES.serverCert))).toString() : '';
  if (newKey || needsNewServerCert(serverCertPem, allHosts, now, ca) || !certMatchesKey(serverCertPem, serverKeyPem)) {
    const { publicKey } = readCsrKey(createCsr(serverKeyPem, 'pgaccord-coordinator'));
    const issued = ca.issue({
      publicKey,
      commonName: 'pgaccord-coordinator',
      dnsNames: allHosts.filter((h) => !isIP(h)),
      ipAddresses: allHosts.filter((h) => isIP(h)),
      usage: 'server',
      lifetimeSeconds: SERVER_CERT_LIFETIME_S,
      now,
    });
    serverCertPem = issued.pem;
    await writeFileAtomic(p(FILES.serverCert), serverCertPem, 0o644);
  }

  const masterKey = await readOrCreateSecret(p(FILES.masterKey), async () => randomBytes(32));
  if (masterKey.length !== 32) throw new Error(`${p(FILES.masterKey)} must hold exactly 32 bytes`);
  const adminToken = (await readOrCreateSecret(p(FILES.adminToken), async () => `pga-admin.${randomBytes(32).toString('base64url')}\n`)).toString().trim();
  if (adminToken.length < 32) throw new Error(`${p(FILES.adminToken)} is too short to be an admin token`);

  return { dir, ca, caPem: ca.certPem, serverCertPem, serverKeyPem, masterKey, adminToken };
}
