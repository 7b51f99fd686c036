// Drift: notice within seconds when a managed file is edited, replaced, removed or chmod'ed by
// hand, and tell the runtime (which re-runs applyDesired; lines outside the managed blocks are
// the operator's and the apply keeps them). chokidar (inotify) gives the prompt signal; every
// event, and a slow poll as a safety net (chokidar 3 ignores a chmod that leaves mtime alone),
// triggers a comparison with the state the last apply reported, so only real differences are
// reported, and our own writes are not once setExpected() has the new state.
import { createHash } from 'node:crypto';
import { lstat, readFile } from 'node:fs/promises';
import chokidar from 'chokidar';
import type { Static } from '@sinclair/typebox';
import type { FileReport } from '../../shared/contract/status.ts';

export type ExpectedFile = Static<typeof FileReport>;

/**
 * The safety-net poll: inotify (chokidar, and its raw events for a chmod) is the prompt signal,
 * and an idle agent's every long-poll cycle compares the files too (steady state); a poll every
 * 2 s re-read and hashed every managed file ~15 times a cycle for nothing.
 */
export const DEFAULT_POLL_MS = 30_000;

export interface DriftEvent {
  path: string;
  /** What differs from the last applied state. */
  kinds: ('content' | 'mode' | 'owner' | 'missing')[];
  expected: ExpectedFile;
  /** What is on disk now (null when the file is gone). */
  actual: ExpectedFile | null;
}

export interface DriftOptions {
  /** The owner name FileReport uses for a uid (agent/apply/files.ts ownerNamer(ctx)). */
  ownerName: (uid: number) => string;
  /** Safety-net poll interval (default DEFAULT_POLL_MS). */
  pollMs?: number;
  /** Coalesce bursts of events (default 100 ms). */
  debounceMs?: number;
  onError?: (e: unknown) => void;
}

export interface DriftWatcher {
  /** Resolves once the watches are in place. */
  ready: Promise<void>;
  /** Stop comparing (call before an apply, so its own writes are not reported). */
  pause(): void;
  /** New baseline (ApplyResult.files of a successful apply); resumes comparing. */
  setExpected(files: ExpectedFile[]): void;
  /** Compare now (also done on every event and every poll). */
  check(): Promise<DriftEvent[]>;
  close(): Promise<void>;
}

export async function observeFile(path: string, ownerName: (uid: number) => string): Promise<ExpectedFile | null> {
  try {
    const st = await lstat(path);
    const content = await readFile(path);
    return { path, sha256: createHash('sha256').update(content).digest('hex'), owner: ownerName(st.uid), mode: (st.mode & 0o7777).toString(8).padStart(4, '0') };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

export function compareFile(expected: ExpectedFile, actual: ExpectedFile | null): DriftEvent | null {
  if (actual === null) return { path: expected.path, kinds: ['missing'], expected, actual };
  const kinds: DriftEvent['kinds'] = [];
  if (actual.sha256 !== expected.sha256) kinds.push('content');
  if (actual.mode !== expected.mode) kinds.push('mode');
  if (actual.owner !== expected.owner) kinds.push('owner');
  return kinds.length > 0 ? { path: expected.path, kinds, expected, actual } : null;
}

/**
 * Watch the managed files the last apply reported and call `onDrift` once per distinct drifted
 * state of a file (not again for the same state, so a runtime that fails to repair is not
 * flooded).
 */
export function watchManagedFiles(files: ExpectedFile[], onDrift: (e: DriftEvent) => void, opts: DriftOptions): DriftWatcher {
  let expected = new Map(files.map((f) => [f.path, f]));
  let paused = false;
  let closed = false;
  const reported = new Map<string, string>();
  const watcher = chokidar.watch([...expected.keys()], { ignoreInitial: true, persistent: true, alwaysStat: false });
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<DriftEvent[]> | null = null;

  const check = async (): Promise<DriftEvent[]> => {
    if (paused || closed) return [];
    const events: DriftEvent[] = [];
    const baseline = expected;
    for (const exp of baseline.values()) {
      const ev = compareFile(exp, await observeFile(exp.path, opts.ownerName));
      if (paused || closed || baseline !== expected) return [];
      if (ev === null) {
        reported.delete(exp.path);
        continue;
      }
      const signature = JSON.stringify(ev.actual);
      if (reported.get(exp.path) === signature) continue;
      reported.set(exp.path, signature);
      events.push(ev);
    }
    for (const ev of events) onDrift(ev);
    return events;
  };
  const safeCheck = (): void => {
    if (running) return;
    running = check().catch((e: unknown) => {
      opts.onError?.(e);
      return [];
    });
    void running.finally(() => (running = null));
  };
  const schedule = (): void => {
    if (closed) return;
    clearTimeout(timer);
    timer = setTimeout(safeCheck, opts.debounceMs ?? 100);
  };
  watcher.on('all', schedule);
  watcher.on('raw', schedule);
  watcher.on('error', (e) => opts.onError?.(e));
  const poll = setInterval(safeCheck, opts.pollMs ?? DEFAULT_POLL_MS);
  const ready = new Promise<void>((resolve) => watcher.once('ready', () => resolve()));

  return {
    ready,
    pause() {
      paused = true;
      clearTimeout(timer);
    },
    setExpected(next) {
      const old = new Set(expected.keys());
      expected = new Map(next.map((f) => [f.path, f]));
      reported.clear();
      const added = [...expected.keys()].filter((p) => !old.has(p));
      const removed = [...old].filter((p) => !expected.has(p));
      if (added.length > 0) watcher.add(added);
      if (removed.length > 0) watcher.unwatch(removed);
      paused = false;
    },
    check: () => (running ? running.then(() => check()) : check()),
    async close() {
      closed = true;
      clearTimeout(timer);
      clearInterval(poll);
      await watcher.close();
    },
  };
}
