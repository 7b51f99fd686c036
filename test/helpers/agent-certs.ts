// Throwaway PKI for the apply-engine tests, made with the openssl CLI at test time (EC P-256:
// fast). Nothing here is ever committed: keys live in the test's temporary directories.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { OsUser } from '../../shared/system/pgserver.ts';
import type { InstalledCertificate } from '../../shared/pgconf/types.ts';

const run = promisify(execFile);

async function openssl(args: string[]): Promise<string> {
  const { stdout } = await run('openssl', args, { maxBuffer: 4 * 1024 * 1024 });
  return stdout;
}

export interface TestCa {
  dir: string;
  certPath: string;
  keyPath: string;
  certPem: string;
  /** Remove the CA's private material. */
  destroy(): Promise<void>;
}

export async function makeCa(name = 'pgaccord test CA'): Promise<TestCa> {
  const dir = await mkdtemp('/tmp/pgaccord-test-ca-');
  const keyPath = join(dir, 'ca.key');
  const certPath = join(dir, 'ca.crt');
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyPath, '-out', certPath, '-subj', `/CN=${name}`, '-days', '2',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  return { dir, certPath, keyPath, certPem: await readFile(certPath, 'utf8'), destroy: () => rm(dir, { recursive: true, force: true }) };
}

export interface LeafOptions {
  slot: string;
  commonName: string;
  ips?: string[];
  dns?: string[];
  usage: 'server' | 'client';
  /** Where the versioned pair goes (the runtime's tls directory). */
  dir: string;
  owner: OsUser;
  /** Days of validity. */
  days?: number;
}

/** A key and certificate pair under versioned names, key 0600 owned by `owner`, as the runtime writes them. */
export async function issueLeaf(ca: TestCa, o: LeafOptions): Promise<InstalledCertificate> {
  await mkdir(o.dir, { recursive: true });
  const serial = `7${randomBytes(8).toString('hex')}`;
  const work = await mkdtemp('/tmp/pgaccord-test-leaf-');
  try {
    const csr = join(work, 'leaf.csr');
    const ext = join(work, 'ext.cnf');
    const keyPath = join(o.dir, `${o.slot}-${serial}.key`);
    const certPath = join(o.dir, `${o.slot}-${serial}.crt`);
    await openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(work, 'leaf.key'), '-out', csr, '-subj', `/CN=${o.commonName}`]);
    const san = [...(o.dns ?? []).map((d) => `DNS:${d}`), ...(o.ips ?? []).map((i) => `IP:${i}`)];
    await writeFile(ext, [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      `extendedKeyUsage=${o.usage === 'server' ? 'serverAuth' : 'clientAuth'}`,
      ...(san.length ? [`subjectAltName=${san.join(',')}`] : []),
    ].join('\n'));
    const validity = ['-days', String(o.days ?? 1)];
    await openssl(['x509', '-req', '-in', csr, '-CA', ca.certPath, '-CAkey', ca.keyPath, '-set_serial', `0x${serial}`, '-extfile', ext, ...validity, '-out', join(work, 'leaf.crt')]);
    // Key first (0600 from the start), then the certificate.
    await writeFile(keyPath, await readFile(join(work, 'leaf.key')), { mode: 0o600 });
    await chmod(keyPath, 0o600);
    await writeFile(certPath, await readFile(join(work, 'leaf.crt')), { mode: 0o644 });
    if (process.getuid?.() === 0) {
      await chown(keyPath, o.owner.uid, o.owner.gid);
      await chown(certPath, o.owner.uid, o.owner.gid);
    }
    const notAfter = (await openssl(['x509', '-in', certPath, '-noout', '-enddate'])).trim().replace(/^notAfter=/, '');
    return { slot: o.slot, certPath, keyPath, serial, notAfter: new Date(notAfter).toISOString() };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** A CRL signed by the CA (no revocations), nextUpdate `hours` from now. */
export async function makeCrl(ca: TestCa, hours = 24): Promise<string> {
  const work = await mkdtemp('/tmp/pgaccord-test-crl-');
  try {
    await writeFile(join(work, 'index.txt'), '');
    await writeFile(join(work, 'crlnumber'), '01\n');
    const conf = join(work, 'ca.cnf');
    await writeFile(conf, [
      '[ca]', 'default_ca = test', '[test]', `database = ${join(work, 'index.txt')}`, `crlnumber = ${join(work, 'crlnumber')}`,
      `certificate = ${ca.certPath}`, `private_key = ${ca.keyPath}`, 'default_md = sha256',
    ].join('\n'));
    const out = join(work, 'crl.pem');
    await openssl(['ca', '-config', conf, '-gencrl', '-crlhours', String(hours), '-out', out]);
    return await readFile(out, 'utf8');
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
