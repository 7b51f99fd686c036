// Profile `patroni`, effectful half: after each apply, the proof that the running Patroni serves
// the REST API certificate on disk (one SIGHUP to Patroni when it does not: Patroni re-reads
// restapi.certfile when its serial changed, and restarts neither itself nor PostgreSQL). The
// paths and the fragment the agent writes are pure: shared/pgconf/patroni.ts.
import { lstat, readFile, readdir, readlink, realpath, stat } from 'node:fs/promises';
import { connect as tlsConnect } from 'node:tls';
import { basename, join, resolve } from 'node:path';
import { certInfo } from '../../shared/crypto/x509.ts';
import type { PatroniPaths } from '../../shared/pgconf/patroni.ts';
import type { Problem } from '../../shared/contract/problem.ts';
import { peerCertificateThenClose, type ServedCertificate } from '../probe/tls-probe.ts';

// --- the running Patroni ---------------------------------------------------------------------

/**
 * The Patroni process that includes this fragment: a `patroni` process of the PGDATA owner whose
 * configuration path (its last argument; a file, or a directory of YAML files) is, or holds a
 * link to, the fragment. Patroni starts the postmaster detached (it is not its parent), so the
 * fragment is what ties a Patroni to this node.
 */
export async function findPatroni(fragment: string, uid: number): Promise<number | null> {
  const want = await realpath(fragment).catch(() => null);
  if (want === null) return null;
  for (const entry of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const st = await stat(`/proc/${entry}`).catch(() => null);
    if (st === null || st.uid !== uid) continue;
    const args = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0').filter((a) => a !== '');
    const at = args.findIndex((a, i) => i < 2 && basename(a) === 'patroni');
    if (at < 0 || args.length <= at + 1) continue;
    const cwd = await readlink(`/proc/${entry}/cwd`).catch(() => '/');
    const config = resolve(cwd, args[args.length - 1]!);
    const cst = await stat(config).catch(() => null);
    if (cst === null) continue;
    const yamlIn = async (dir: string) => (await readdir(dir).catch(() => [] as string[])).filter((f) => /\.ya?ml$/.test(f)).map((f) => join(dir, f));
    const candidates = cst.isDirectory() ? await yamlIn(config) : [config];
    for (const c of candidates) if ((await realpath(c).catch(() => null)) === want) return Number(entry);
  }
  return null;
}

/** Hex address of /proc/net/tcp{,6} (little-endian words) to text. */
function procAddress(hex: string): string {
  const words = hex.match(/.{8}/g) ?? [];
  const bytes = words.flatMap((w) => (w.match(/../g) ?? []).reverse().map((b) => parseInt(b, 16)));
  if (bytes.length === 4) return bytes.join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  const v6 = groups.join(':');
  return v6.startsWith('0:0:0:0:0:ffff:') ? bytes.slice(12).join('.') : v6;
}

/** The TCP sockets a process listens on (its REST API: Patroni listens on nothing else). */
export async function listeningAddresses(pid: number): Promise<{ host: string; port: number }[]> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
    const link = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const m = /^socket:\[(\d+)\]$/.exec(link);
    if (m) inodes.add(m[1]!);
  }
  const out: { host: string; port: number }[] = [];
  for (const file of ['tcp', 'tcp6']) {
    const text = await readFile(`/proc/${pid}/net/${file}`, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || f[3] !== '0A' || !inodes.has(f[9]!)) continue; // 0A: LISTEN
      const [addr, port] = f[1]!.split(':');
      let host = procAddress(addr!);
      if (host === '0.0.0.0') host = '127.0.0.1';
      if (host === '0:0:0:0:0:0:0:0') host = '::1';
      out.push({ host, port: parseInt(port!, 16) });
    }
  }
  return out;
}

/** The certificate the REST API serves, seen in a verified TLS handshake with the client certificate. */
export async function servedApiCertificate(
  addr: { host: string; port: number },
  client: { pem: string; ca: string },
  timeoutMs = 5000,
): Promise<ServedCertificate> {
  // The chain is checked against the cluster CA; the name is not (we dial the listen address).
  const s = tlsConnect({
    host: addr.host, port: addr.port, ca: client.ca, cert: client.pem, key: client.pem, checkServerIdentity: () => undefined, ALPNProtocols: ['http/1.1'],
  });
  s.setTimeout(timeoutMs, () => s.destroy(new Error(`TLS handshake with Patroni's REST API at ${addr.host}:${addr.port} timed out`)));
  try {
    // No request follows: Patroni's handler reads EOF after close_notify and closes quietly.
    return await peerCertificateThenClose(s, 'the REST API');
  } finally {
    s.destroy();
  }
}

export interface PatroniProof {
  problems: Problem[];
  /** SIGHUP sent to Patroni in this pass. */
  signalled: boolean;
  served: { serial: string; notAfter: string } | null;
}

/**
 * After an apply: make the running Patroni serve the REST API certificate on disk and read the
 * fragment again. SIGHUP only when the served certificate differs or the fragment changed; then
 * wait (Patroni handles the signal at the start of its next cycle, loop_wait 10 s by default)
 * until the handshake shows the new one. Patroni's PID is unchanged by construction (a signal).
 */
export async function provePatroni(args: {
  uid: number;
  paths: PatroniPaths;
  caBundle: string;
  fragmentChanged: boolean;
  timeoutMs?: number;
  kill?: (pid: number, signal: NodeJS.Signals) => void;
}): Promise<PatroniProof> {
  const pid = await findPatroni(args.paths.fragment, args.uid);
  if (pid === null) {
    const message = `no running Patroni includes ${args.paths.fragment} (none of the PGDATA owner's patroni processes has it, or a link to it,`
      + ' in its configuration path): the REST API certificate cannot be proved';
    return { problems: [{ code: 'E_PATRONI_NOT_FOUND', message }], signalled: false, served: null };
  }
  const kill = args.kill ?? ((p, s) => process.kill(p, s));
  const [apiPem, clientPem] = await Promise.all([readFile(args.paths.apiPem, 'utf8'), readFile(args.paths.clientPem, 'utf8')]);
  const onDisk = certInfo(apiPem);
  const client = { pem: clientPem, ca: args.caBundle };
  const look = async (): Promise<{ served: Awaited<ReturnType<typeof servedApiCertificate>> | null; error: string | null }> => {
    const addrs = await listeningAddresses(pid);
    if (addrs.length === 0) return { served: null, error: `Patroni (pid ${pid}) listens on no TCP port` };
    try {
      return { served: await servedApiCertificate(addrs[0]!, client), error: null };
    } catch (e) {
      return { served: null, error: `TLS handshake with Patroni's REST API at ${addrs[0]!.host}:${addrs[0]!.port} failed: ${(e as Error).message}` };
    }
  };
  let now = await look();
  const current = (x: typeof now) => x.served !== null && x.served.fingerprint256 === onDisk.fingerprint256;
  if (current(now) && !args.fragmentChanged) return { problems: [], signalled: false, served: now.served };
  kill(pid, 'SIGHUP');
  const deadline = Date.now() + (args.timeoutMs ?? 30_000);
  while (!current(now) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250));
    now = await look();
  }
  if (current(now)) return { problems: [], signalled: true, served: now.served };
  const why = now.error ?? `it still serves serial ${now.served?.serial} instead of ${onDisk.serial} (${args.paths.apiPem})`;
  const message = `SIGHUP sent to Patroni (pid ${pid}), but its REST API does not serve the certificate on disk: ${why}`;
  return { problems: [{ code: 'E_PATRONI_RELOAD_NOT_PROVED', message }], signalled: true, served: now.served };
}

/** Whether a path is a regular file (not a symlink) owned by uid: the base configuration the agent may append to. */
export const regularFileOf = async (path: string, uid: number): Promise<boolean> => {
  const st = await lstat(path).catch(() => null);
  return st !== null && st.isFile() && st.uid === uid;
};
