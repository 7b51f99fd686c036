// Coded errors: every refusal the coordinator makes carries a stable code and an HTTP status,
// and becomes an ErrorBody on the wire. Messages never contain secrets.
export interface FieldProblem {
  field: string;
  message: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly errors?: FieldProblem[],
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export const badRequest = (code: string, message: string, errors?: FieldProblem[]) => new ApiError(400, code, message, errors);
export const unauthorized = (message = 'authentication required') => new ApiError(401, 'E_UNAUTHENTICATED', message);
export const forbidden = (message: string) => new ApiError(403, 'E_FORBIDDEN', message);
export const notFound = (message: string) => new ApiError(404, 'E_NOT_FOUND', message);
export const conflict = (code: string, message: string) => new ApiError(409, code, message);
export const gone = (message: string) => new ApiError(410, 'E_GONE', message);
export const notImplemented = (what: string) => new ApiError(501, 'E_NOT_IMPLEMENTED', `${what} is not implemented yet`);
