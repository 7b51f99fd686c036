// Certificate lifecycle thresholds, shared by the coordinator's status and `pgaccord cert list`,
// and the wording of instants and apply times that `pgaccord status` and the status page share.
//
//   warning  : less than 1/3 of the lifetime left. Renewal is due at 2/3 minus up to 1/20 of
//              jitter, so a healthy certificate never gets there: it means renewal is overdue.
//   critical : less than 1/10 of the lifetime left.
//   expired  : past notAfter.
// Fractions, not days, so the same rule fits 2-minute test certificates and 90-day ones.
// A CA is also `warning` when less than twice the leaf lifetime is left, and `critical` below
// one leaf lifetime: leaves are then cut short to end with it (no leaf outlives its CA).
import type { ExpiryLevel, NodeStatusView } from '../../shared/contract/api.ts';

export const WARNING_FRACTION = 1 / 3;
export const CRITICAL_FRACTION = 1 / 10;

export function expiryLevel(validity: { notBefore: Date; notAfter: Date }, now: number): ExpiryLevel {
  const left = validity.notAfter.getTime() - now;
  if (left <= 0) return 'expired';
  const lifetime = Math.max(1, validity.notAfter.getTime() - validity.notBefore.getTime());
  if (left < lifetime * CRITICAL_FRACTION) return 'critical';
  if (left < lifetime * WARNING_FRACTION) return 'warning';
  return 'ok';
}

export function caLevel(validity: { notBefore: Date; notAfter: Date }, leafLifetimeSeconds: number, now: number): ExpiryLevel {
  const base = expiryLevel(validity, now);
  if (base === 'expired' || base === 'critical') return base;
  const left = validity.notAfter.getTime() - now;
  if (left < leafLifetimeSeconds * 1000) return 'critical';
  if (left < 2 * leafLifetimeSeconds * 1000 || base === 'warning') return 'warning';
  return 'ok';
}

export function daysLeft(notAfter: Date, now: number): number {
  return Math.round(((notAfter.getTime() - now) / 86400_000) * 1000) / 1000;
}

/** How long ago an instant was, for people: `30 s ago`, `5 min ago`, `3 h ago`, `2 d ago`. */
export function ago(iso: string | null, now: Date): string {
  if (!iso) return 'never';
  const s = Math.max(0, Math.round((now.getTime() - Date.parse(iso)) / 1000));
  return s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : s < 172_800 ? `${Math.round(s / 3600)} h ago` : `${Math.round(s / 86400)} d ago`;
}

/** How long the node's apply of its generation took, its slowest phase, and its last probe-only pass (every phase: `status --json`, the status page's title). */
export function applyTime(n: Pick<NodeStatusView, 'timings'>): string {
  const t = n.timings;
  if (!t) return '-';
  const slowest = Object.entries(t.phases).sort((a, b) => b[1] - a[1])[0];
  const probed = t.probePass ? `, probed ${t.probePass.edges} in ${Math.round(t.probePass.ms)}ms` : '';
  return `${Math.round(t.totalMs)}ms${slowest ? ` (${slowest[0]} ${Math.round(slowest[1])})` : ''}${probed}`;
}
