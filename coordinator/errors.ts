// Coded errors: every refusal the coordinator makes carries a stable code and an HTTP status,
// and becomes an ErrorBody on the wire. Messages never contain secrets.
import { CodedError } from '../shared/contract/problem.ts';

export interface FieldProblem {
  field: string;
  message: string;
}

/** A CodedError with the HTTP status it answers with, and for a refused spec every field's problem. */
export class ApiError extends CodedError {
  constructor(
    readonly status: number,
    code: string,
    message: string,
    readonly errors?: FieldProblem[],
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}

export const badRequest = (code: string, message: string, errors?: FieldProblem[]) => new ApiError(400, code, message, errors);
export const unauthorized = (message = 'authentication required') => new ApiError(401, 'E_UNAUTHENTICATED', message);
export const notFound = (message: string) => new ApiError(404, 'E_NOT_FOUND', message);
export const conflict = (code: string, message: string) => new ApiError(409, code, message);
export const gone = (message: string) => new ApiError(410, 'E_GONE', message);
