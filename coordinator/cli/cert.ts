// pgaccord cert: list, revoke and renew certificates, print the CRL, rotate the CA and passwords.
import type { Static } from '@sinclair/typebox';
import type { CaRotationStatus, CertificateListResponse } from '../../shared/contract/api.ts';
import { parseCommand, UsageError } from '../../shared/system/cli.ts';
import { call, CONNECTION_HELP, CONNECTION_OPTIONS, withConn } from './http.ts';
import { table } from './table.ts';

const CERT = {
  usage: 'pgaccord cert list CLUSTER | revoke CLUSTER SERIAL | renew CLUSTER [SERIAL] [--node NODE] | crl CLUSTER'
    + ' | rotate-ca CLUSTER --start|--status|--finish | rotate-passwords CLUSTER [--role ROLE]  [--json] [connection options]',
  summary: 'List a cluster\'s certificates with their days left and expiry level; revoke one; force early renewal; print the CRL.',
  details: `
subcommands:
  list CLUSTER           every certificate issued for the cluster: serial, node, slot, CN, not after,
                         days left, level, state (current, superseded, revoked, expired)
  revoke CLUSTER SERIAL  revoke a certificate. A cluster certificate goes into the cluster CRL with a
                         new generation: every node installs it, refuses the certificate from then on
                         and ends the sessions that authenticated with it; the node that held it gets
                         a new key and certificate. An agent identity stops authenticating at once.
  renew CLUSTER [SERIAL] re-issue before time, with new keys: one certificate (SERIAL), every live
                         certificate of a node (--node NODE), or of the whole cluster (neither)
  crl CLUSTER            print the cluster CRL (PEM; one CRL per CA during a CA rotation)
  rotate-passwords CLUSTER [--role ROLE]
                         new random passwords and SCRAM verifiers for every role that logs in with
                         a password (or ROLE), in one generation: every agent wakes at once and
                         writes the passfile line and the role's verifier in the same apply.
                         PostgreSQL keeps one password per role, so new connections can fail for
                         the short time between one node's apply and another's (measured: see
                         docs/lifecycle.md); sessions already open are not affected.
  rotate-ca CLUSTER --start | --status | --finish
                         rotate the cluster CA in phases, without a failed connection:
                         --start   a new CA joins every node's trust bundle (and its CRL the CRL
                                   file, when the cluster has one); the old CA still issues.
                                   When every node has proved the two-CA bundle (applied,
                                   converged, probes ok) the coordinator by itself lets the new CA
                                   issue and has every old leaf re-issued (new keys).
                         --status  the phase (trust, reissue), both CAs, what each node waits for
                         --finish  the old CA leaves every bundle. Refused (exit 1, HTTP 409,
                                   nothing changed) until every node has applied the re-issue
                                   generation, converged with every probe ok, and serves and holds
                                   only leaves from the new CA.
levels (days left against lifetime):
  warning   less than 1/3 of the lifetime left (renewal, due at about 2/3, is overdue)
  critical  less than 1/10 of the lifetime left
  expired   past notAfter
options:
  --node NODE            (renew) every live certificate of this node
  --json                 print the API answer as JSON
${CONNECTION_HELP}`,
  options: {
    json: { type: 'boolean' }, node: { type: 'string' }, role: { type: 'string' },
    start: { type: 'boolean' }, finish: { type: 'boolean' }, status: { type: 'boolean' },
    ...CONNECTION_OPTIONS,
  },
  positionals: { min: 2, max: 3 },
} as const;

export async function runCert(argv: string[]): Promise<number> {
  const sub = argv[0];
  const help = argv.includes('--help') || argv.includes('-h');
  if (!['list', 'revoke', 'renew', 'crl', 'rotate-ca', 'rotate-passwords'].includes(sub ?? '') && !help) {
    throw new UsageError(`unknown or missing subcommand${sub ? ` "${sub}"` : ''}\nusage: ${CERT.usage}`);
  }
  const parsed = parseCommand(CERT, argv);
  if (!parsed) return 0;
  const cluster = parsed.positionals[1]!;
  const arg = parsed.positionals[2];
  const v = parsed.values;
  const base = `/v1/clusters/${encodeURIComponent(cluster)}`;
  const print = (res: unknown, text: string) => process.stdout.write(v.json ? `${JSON.stringify(res, null, 2)}\n` : text);
  if (sub === 'revoke') {
    if (!arg) throw new UsageError(`cert revoke needs CLUSTER SERIAL\nusage: ${CERT.usage}`);
    return withConn(v, async (conn) => {
      type Revoked = { serial: string; revokedAt: string; generation: number; alreadyRevoked: boolean; sameKey?: string[] };
      const res = await call<Revoked>(conn, 'POST', `${base}/certificates/${encodeURIComponent(arg.toLowerCase().replace(/:/g, ''))}/revoke`, {});
      const sameKey = res.sameKey ?? []; // absent from a coordinator older than key revocation
      const also = sameKey.length > 0 ? `; also revoked, same key: ${sameKey.join(', ')}` : '';
      const what = res.alreadyRevoked ? 'already revoked' : 'revoked';
      print(res, `${what}: ${res.serial} at ${res.revokedAt} (cluster ${cluster}, generation ${res.generation})${also}\n`);
      return 0;
    });
  }
  if (sub === 'renew') {
    return withConn(v, async (conn) => {
      const body = { ...(arg ? { serial: arg } : {}), ...(v.node ? { node: v.node } : {}) };
      const res = await call<{ generation: number; serials: string[] }>(conn, 'POST', `${base}/renew`, body);
      const serials = res.serials.map((x) => `  ${x}`).join('\n');
      print(res, `renewal requested for ${res.serials.length} certificate(s) (generation ${res.generation}):\n${serials}\n`);
      return 0;
    });
  }
  if (sub === 'rotate-passwords') {
    return withConn(v, async (conn) => {
      const res = await call<{ generation: number; roles: string[] }>(conn, 'POST', `${base}/rotate-passwords`, v.role ? { role: v.role } : {});
      print(res, `new passwords for ${res.roles.join(', ')} (generation ${res.generation})\n`);
      return 0;
    });
  }
  if (sub === 'rotate-ca') {
    const modes = (['start', 'finish', 'status'] as const).filter((m) => v[m]);
    if (modes.length > 1) throw new UsageError(`cert rotate-ca takes one of --start, --status, --finish\nusage: ${CERT.usage}`);
    const mode = modes[0] ?? 'status';
    return withConn(v, async (conn) => {
      const res = mode === 'status'
        ? await call<CaRotationStatus>(conn, 'GET', `${base}/ca-rotation`)
        : await call<CaRotationStatus>(conn, 'POST', `${base}/ca-rotation/${mode}`, {});
      const lines = [`cluster ${cluster}: CA rotation phase ${res.phase} (generation ${res.generation})`];
      for (const ca of res.cas) lines.push(`  ${ca.role.padEnd(7)} CA ${ca.serial}  ${ca.commonName}  until ${ca.notAfter}`);
      for (const n of res.nodes) lines.push(`  ${n.node}: ${n.waiting.length === 0 ? 'ready' : `waiting: ${n.waiting.join('; ')}`}`);
      if (res.phase === 'reissue') {
        lines.push(res.canFinish
          ? `every node proved leaves from the new CA: pgaccord cert rotate-ca ${cluster} --finish`
          : 'old leaves are still being replaced; --finish is refused until every node is ready');
      }
      if (res.phase === 'trust') lines.push('waiting for every node to prove the two-CA bundle; the new CA then issues by itself');
      print(res, `${lines.join('\n')}\n`);
      return 0;
    });
  }
  if (sub === 'crl') {
    return withConn(v, async (conn) => {
      const pem = await call<string>(conn, 'GET', `${base}/crl`);
      process.stdout.write(typeof pem === 'string' ? pem : JSON.stringify(pem));
      return 0;
    });
  }
  return withConn(v, async (conn) => {
    const res = await call<Static<typeof CertificateListResponse>>(conn, 'GET', `${base}/certificates`);
    if (v.json) {
      process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
      return 0;
    }
    const rows = [['SERIAL', 'NODE', 'SLOT', 'CN', 'NOT AFTER', 'DAYS LEFT', 'LEVEL', 'STATE']];
    for (const c of res.certificates) {
      const state = c.revoked ? 'revoked' : c.daysLeft < 0 ? 'expired' : c.current === false ? 'superseded'
        : c.renewRequested ? 'current (renewal requested)' : 'current';
      rows.push([c.serial, c.node, c.slot, c.commonName, c.notAfter, c.daysLeft.toFixed(c.daysLeft < 1 ? 3 : 1), c.revoked ? '-' : (c.level ?? '-'), state]);
    }
    process.stdout.write(`${res.certificates.length ? table(rows) : `cluster ${cluster}: no certificates issued yet`}\n`);
    return 0;
  });
}
