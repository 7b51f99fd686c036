// How an apply step fails: a StepFailure carries the Problems that end the apply, `failed` is
// the result it ends with, and `asProblem` is the Problem an unexpected error stands for.
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

/**
 * The problem an error stands for: its own code when it carries an E_* one, `fallback`
 * otherwise. (problemOf once every coded error class of shared/ extends CodedError.)
 */
export const asProblem = (e: unknown, fallback: string): Problem => ({
  code: typeof (e as { code?: unknown }).code === 'string' && String((e as { code: string }).code).startsWith('E_') ? (e as { code: string }).code : fallback,
  message: (e as Error).message ?? String(e),
});

export function failed(problems: Problem[], extra: Partial<ApplyResult> = {}): ApplyResult {
  return { phase: 'failed', changed: false, errors: problems, files: [], pendingRestart: [], servedCertificate: null, clientConnections: [], ...extra };
}
