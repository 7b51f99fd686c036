// Real headless Chromium (Debian's `chromium`), driven over its DevTools protocol on a WebSocket
// (undici's: Node 20 has no global WebSocket). One page target, commands awaited by id.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'undici';

export class Chromium {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private readonly waiters: { method: string; resolve: (params: unknown) => void }[] = [];

  private constructor(private readonly proc: ChildProcess, private readonly ws: WebSocket, private readonly profile: string) {
    ws.addEventListener('message', (ev) => {
      const msg = JSON.parse(String(ev.data)) as { id?: number; result?: unknown; error?: { message: string }; method?: string; params?: unknown };
      if (msg.id !== undefined) {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (msg.error) p?.reject(new Error(`CDP: ${msg.error.message}`));
        else p?.resolve(msg.result);
      } else if (msg.method) {
        const i = this.waiters.findIndex((w) => w.method === msg.method);
        if (i >= 0) this.waiters.splice(i, 1)[0]!.resolve(msg.params);
      }
    });
  }

  /**
   * --ignore-certificate-errors: the coordinator's HTTPS certificate comes from its own CA, which
   * this throwaway profile does not trust; acceptable on loopback in a test, never elsewhere.
   * --no-sandbox: Chromium refuses to run its sandbox as root, as the tests run.
   */
  static async launch(): Promise<Chromium> {
    const profile = await mkdtemp(join(tmpdir(), 'pgaccord-chromium-'));
    const proc = spawn('chromium', [
      '--headless', '--remote-debugging-port=0', `--user-data-dir=${profile}`, '--ignore-certificate-errors',
      '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check', 'about:blank',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    const browserUrl = await new Promise<string>((resolve, reject) => {
      let err = '';
      const timer = setTimeout(() => reject(new Error(`chromium did not start in 60 s: ${err}`)), 60_000);
      proc.stderr!.on('data', (d: Buffer) => {
        err += d.toString();
        const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
      proc.once('exit', (code) => reject(new Error(`chromium exited (${code}): ${err}`)));
    });
    // The page target of about:blank, from the browser's HTTP endpoint.
    const { port } = new URL(browserUrl);
    const targets = (await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()) as { type: string; webSocketDebuggerUrl: string }[];
    const page = targets.find((t) => t.type === 'page');
    if (!page) throw new Error('chromium has no page target');
    const ws = new WebSocket(page.webSocketDebuggerUrl);
    await new Promise<void>((resolve, reject) => {
      ws.addEventListener('open', () => resolve());
      ws.addEventListener('error', () => reject(new Error('cannot connect to the DevTools WebSocket')));
    });
    const c = new Chromium(proc, ws, profile);
    await c.send('Page.enable');
    await c.send('Runtime.enable');
    return c;
  }

  send<T = unknown>(method: string, params: Record<string, unknown> = {}): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  /** The next event of this kind (register before causing it). */
  event<T = unknown>(method: string, timeoutMs = 60_000): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${method} in ${timeoutMs / 1000} s`)), timeoutMs);
      this.waiters.push({ method, resolve: (p) => { clearTimeout(timer); resolve(p as T); } });
    });
  }

  /** Navigate and wait for the load event. */
  async goto(url: string): Promise<void> {
    const loaded = this.event('Page.loadEventFired');
    const r = await this.send<{ errorText?: string }>('Page.navigate', { url });
    if (r.errorText) throw new Error(`navigation to ${url} failed: ${r.errorText}`);
    await loaded;
  }

  /** Evaluate an expression in the page (DevTools runs it; the page itself allows no script). */
  async evaluate<T>(expression: string): Promise<T> {
    const r = await this.send<{ result: { value: T }; exceptionDetails?: { text: string } }>('Runtime.evaluate', { expression, returnByValue: true });
    if (r.exceptionDetails) throw new Error(`evaluate: ${r.exceptionDetails.text}`);
    return r.result.value;
  }

  async close(): Promise<void> {
    this.ws.close();
    if (this.proc.exitCode === null) {
      const exited = new Promise((r) => this.proc.once('exit', r));
      this.proc.kill('SIGTERM');
      await exited;
    }
    await rm(this.profile, { recursive: true, force: true });
  }
}
