// How an apply step fails: a StepFailure carries the Problems that end the apply, and `failed`
// is the result it ends with (an unexpected error's Problem is problemOf's, shared/contract/problem.ts).
import type { Problem } from '../../shared/contract/problem.ts';
import type { ApplyResult } from './types.ts';

/** Raised inside a step to end the apply as failed with these problems. */
export class StepFailure extends Error {
  constructor(
    readonly problems: Problem[],
    /** The failing state had been loaded: restoring the files needs another reload. */
    readonly reloaded = false,
  ) {
    super(problems.map((p) => p.message).join('; '));
  }
}

export function failed(problems: Problem[], extra: Partial<ApplyResult> = {}): ApplyResult {
  return { phase: 'failed', changed: false, errors: problems, files: [], pendingRestart: [], servedCertificate: null, clientConnections: [], ...extra };
}
