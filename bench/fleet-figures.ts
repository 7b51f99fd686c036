// bench:fleet's figures and the small tools of its run: the log line, percentiles, seconds,
// answer codes summed over the agent processes, a bounded parallel map.
export const log = (line: string) => process.stderr.write(`${new Date().toISOString().slice(11, 23)} ${line}\n`);

export function pct(values: number[]): { n: number; p50: number; p99: number; max: number } {
  const v = [...values].sort((a, b) => a - b);
  const at = (q: number) => v[Math.min(v.length - 1, Math.max(0, Math.ceil(q * v.length) - 1))] ?? NaN;
  const r = (x: number) => Math.round(x * 10) / 10;
  return { n: v.length, p50: r(at(0.5)), p99: r(at(0.99)), max: r(v.at(-1) ?? NaN) };
}
export const secs = (ms: number) => Math.round(ms / 10) / 100;

/** The answer codes of every agent process, summed: {"204": n, "429": m, ...}. */
export const codes = (xs: { codes: Record<string, number> }[]) => xs.reduce<Record<string, number>>((acc, x) => {
  for (const [k, v] of Object.entries(x.codes)) acc[k] = (acc[k] ?? 0) + v;
  return acc;
}, {});

/** fn over items, at most n at a time. */
export const parallel = async <T>(items: T[], n: number, fn: (x: T) => Promise<void>) => {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
};
