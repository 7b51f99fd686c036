// systemd notifications (sd_notify(3)): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.
// Node's dgram has no AF_UNIX datagram sockets, so each message is handed to systemd-notify(1),
// which ships with systemd itself (no native addon, nothing to compile at install). It speaks
// the protocol through libsystemd (path and abstract '@' sockets alike), and without --no-block
// it waits (sd_notify_barrier, systemd >= 246) until the manager has read the message, so the
// message of this short-lived helper is attributed to the unit's cgroup. A message coming from
// the helper's pid, not the main pid, needs NotifyAccess=all in the unit.
import { execFile } from 'node:child_process';

export interface NotifyEnv {
  /** NOTIFY_SOCKET: a path, or '@name' for the abstract namespace; null when not under systemd. */
  socket: string | null;
  /** Half of WATCHDOG_USEC, ms (sd_watchdog_enabled(3) asks for a keep-alive at least that often); null without a watchdog for us. */
  watchdogMs: number | null;
}

/**
 * Read NOTIFY_SOCKET and WATCHDOG_USEC/WATCHDOG_PID as sd_watchdog_enabled(3) does, and delete
 * them from `env`: call it at start, before anything spawns, so that no child (pg_ctl and the
 * PostgreSQL it starts, psql, ...) inherits them. PostgreSQL built with systemd support would
 * otherwise send READY=1 itself, and with NotifyAccess=all systemd would take it as ours.
 */
export function takeNotifyEnv(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): NotifyEnv {
  const socket = env.NOTIFY_SOCKET;
  const usec = env.WATCHDOG_USEC;
  const wpid = env.WATCHDOG_PID;
  delete env.NOTIFY_SOCKET;
  delete env.WATCHDOG_USEC;
  delete env.WATCHDOG_PID;
  const ok = socket !== undefined && (socket.startsWith('/') || (socket.startsWith('@') && socket.length > 1));
  const micros = usec !== undefined && /^[1-9]\d{0,15}$/.test(usec) ? Number(usec) : null;
  // WATCHDOG_PID names the process the watchdog is meant for; absent means us.
  const ours = wpid === undefined || (/^[1-9]\d*$/.test(wpid) && Number(wpid) === pid);
  return { socket: ok ? socket : null, watchdogMs: ok && micros !== null && ours ? Math.max(1, Math.floor(micros / 2000)) : null };
}

const KEY = /^[A-Z_]{1,64}$/;
const STATUS_MAX = 200;

/** One line of STATUS= text: runs of control characters and blanks become one space, at most STATUS_MAX characters. */
export function statusLine(text: string): string {
  // eslint-disable-next-line no-control-regex
  const line = text.replace(/[\s\u0000-\u001f\u007f]+/g, ' ').trim();
  return line.length > STATUS_MAX ? `${line.slice(0, STATUS_MAX - 1)}…` : line;
}

/**
 * The assignments of one notification, in order (the datagram is them joined by '\n', and they
 * are systemd-notify's arguments). Pure; throws on a key systemd would not read.
 */
export function formatNotify(fields: ReadonlyArray<readonly [string, string]>): string[] {
  return fields.map(([k, v]) => {
    if (!KEY.test(k)) throw new RangeError(`sd-notify: bad key ${JSON.stringify(k)}`);
    return `${k}=${k === 'STATUS' ? statusLine(v) : v.replace(/[\r\n]/g, ' ')}`;
  });
}

export interface NotifierOptions {
  /** The helper (tests may point elsewhere). */
  bin?: string;
  onError?: (message: string) => void;
}

/**
 * Sends notifications one at a time, in order (a message waits for the previous helper to
 * finish, so READY=1 is never overtaken). While one is in flight, a newer STATUS replaces a
 * queued one and a queued WATCHDOG=1 is not queued twice. Without NOTIFY_SOCKET it does nothing.
 */
export class SdNotifier {
  private queue: string[][] = [];
  private sending: Promise<void> | null = null;
  private lastStatus: string | null = null;
  private stopped = false;

  constructor(
    private readonly socket: string | null,
    private readonly opts: NotifierOptions = {},
  ) {}

  get enabled(): boolean {
    return this.socket !== null;
  }

  ready(status?: string): void {
    this.send([['READY', '1'], ...(status !== undefined ? [['STATUS', status] as const] : [])]);
    if (status !== undefined) this.lastStatus = statusLine(status);
  }

  /** STATUS=, only when the text changed. */
  status(text: string): void {
    const line = statusLine(text);
    if (line === this.lastStatus) return;
    this.lastStatus = line;
    this.send([['STATUS', line]]);
  }

  watchdog(): void {
    this.send([['WATCHDOG', '1']]);
  }

  /** STOPPING=1, once. */
  stopping(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.send([['STOPPING', '1']]);
  }

  /** Resolves when every queued message has been handed over (or failed). */
  async flush(): Promise<void> {
    while (this.sending) await this.sending;
  }

  private send(fields: ReadonlyArray<readonly [string, string]>): void {
    if (this.socket === null) return;
    const msg = formatNotify(fields);
    const key = msg.length === 1 ? msg[0]!.slice(0, msg[0]!.indexOf('=')) : null;
    if (key === 'WATCHDOG' && this.queue.some((m) => m.length === 1 && m[0] === 'WATCHDOG=1')) return;
    if (key === 'STATUS') this.queue = this.queue.filter((m) => !(m.length === 1 && m[0]!.startsWith('STATUS=')));
    this.queue.push(msg);
    if (!this.sending) this.sending = this.drain().finally(() => (this.sending = null));
  }

  private async drain(): Promise<void> {
    for (let msg = this.queue.shift(); msg; msg = this.queue.shift()) {
      const args = msg;
      await new Promise<void>((resolve) => {
        // Only what the helper needs: NOTIFY_SOCKET goes to it alone, never to other children.
        const env = { NOTIFY_SOCKET: this.socket!, ...(process.env.PATH ? { PATH: process.env.PATH } : {}) };
        execFile(this.opts.bin ?? 'systemd-notify', args, { env, timeout: 15_000 }, (err, _out, stderr) => {
          if (err) this.opts.onError?.(`systemd-notify ${args.map((a) => a.split('=')[0]).join(' ')} failed: ${(stderr || err.message).trim()}`);
          resolve();
        });
      });
    }
  }
}
