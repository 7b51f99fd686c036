// Structured logs (pino, JSON). Secrets never reach a log line: known secret-bearing fields are
// redacted wherever they appear, and request bodies are never logged.
import pino, { type Logger } from 'pino';

export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'headers.authorization',
  'authorization',
  'token',
  'secret',
  'password',
  'csr',
  'privateKey',
  'privateKeyPem',
  'keyPem',
  'adminToken',
  'masterKey',
  '*.token',
  '*.secret',
  '*.password',
  '*.csr',
  '*.privateKey',
  '*.privateKeyPem',
  '*.keyPem',
  '*.adminToken',
  '*.masterKey',
  '*.clientSecrets',
  'body',
  '*.body',
];

export function createLogger(opts: { level?: string; destination?: pino.DestinationStream } = {}): Logger {
  return pino(
    {
      level: opts.level ?? process.env.PGACCORD_LOG_LEVEL ?? 'info',
      base: { service: 'pgaccord-coordinator' },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    },
    opts.destination ?? pino.destination({ fd: 1, sync: false }),
  );
}
