// One problem shape for both sides: a stable code (E_*) and a message that never carries a secret.
// Apply failures, runtime errors in status reports and the API's error bodies all use it.
export interface Problem {
  code: string;
  message: string;
}

/** An error that carries its stable code. Every coded error class, of either side, extends it. */
export class CodedError extends Error {
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The problem an error stands for: its own code when it is a CodedError, `fallback` otherwise. */
export function problemOf(err: unknown, fallback: string): Problem {
  if (err instanceof CodedError) return { code: err.code, message: err.message };
  return { code: fallback, message: err instanceof Error ? err.message : String(err) };
}
