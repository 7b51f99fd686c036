// Durations as operators write them: 90d, 12h, 2m, 1y, 1h30m.
const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 7 * 86400, y: 365 * 86400 };

/** Seconds in a duration string, or null when it is not one. */
export function parseDuration(text: string): number | null {
  if (!/^(\d+[smhdwy])+$/.test(text)) return null;
  let total = 0;
  for (const [, n, unit] of text.matchAll(/(\d+)([smhdwy])/g)) total += Number(n) * UNIT_SECONDS[unit!]!;
  return Number.isSafeInteger(total) ? total : null;
}
