// The one polling helper of the tests: they wait for a condition, never for a fixed time.

export interface WaitOptions {
  /**
   * A throw ends the wait at once and is thrown again, instead of counting as "not yet": for a
   * probe that knows the wait is lost (the process it waits for exited, a wrong answer came).
   */
  throwEnds?: boolean;
}

/**
 * Calls `fn` every `everyMs` until it returns a value (anything but null, undefined or false),
 * and returns it; a throw counts as "not yet" (unless `throwEnds`) and its message is named if
 * time runs out.
 */
export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | null | undefined | false> | T | null | undefined | false,
  timeoutMs = 60_000,
  everyMs = 300,
  opts: WaitOptions = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  for (;;) {
    try {
      const v = await fn();
      if (v !== null && v !== undefined && v !== false) return v;
      last = null;
    } catch (e) {
      if (opts.throwEnds) throw e;
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
