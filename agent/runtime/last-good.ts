// The last good desired state on disk (<stateDir>/desired.json): what the node keeps serving and
// reconciling while the coordinator is away, and starts from after a restart.
import type { NodeDesired } from '../../shared/contract/schema.ts';
import type { Problem } from '../../shared/contract/problem.ts';
import { stateDirLayout } from '../../shared/pgconf/layout.ts';
import { judgeDesired } from './judge.ts';
import { readIfExists, writeFileAtomic, type Owner } from './statefile.ts';

export const desiredFile = (stateDir: string): string => stateDirLayout(stateDir).desired;

/** The last good desired state, or null. A file that no longer validates is ignored (and reported). */
export async function loadLastGood(
  stateDir: string,
  expect: { cluster: string; node: string },
): Promise<{ desired: NodeDesired | null; error: Problem | null }> {
  const text = await readIfExists(desiredFile(stateDir));
  if (text === null) return { desired: null, error: null };
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { desired: null, error: { code: 'E_STATE_CORRUPT', message: `${desiredFile(stateDir)} is not JSON; ignoring it` } };
  }
  const j = judgeDesired(parsed, null, expect);
  if (j.ok) return { desired: j.desired, error: null };
  return { desired: null, error: { code: 'E_STATE_CORRUPT', message: `${desiredFile(stateDir)}: ${j.error.message}` } };
}

/** Persist atomically, 0600: it holds client passwords. */
export async function saveLastGood(stateDir: string, desired: NodeDesired, owner?: Owner): Promise<void> {
  await writeFileAtomic(desiredFile(stateDir), `${JSON.stringify(desired)}\n`, { mode: 0o600, ...(owner ? { owner } : {}) });
}
