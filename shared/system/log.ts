// Structured logs (pino, JSON lines) for every pgaccord process. Secrets never reach a log
// line: every field that can carry one is redacted wherever it appears, and request bodies are
// never logged.
import pino, { type Logger } from 'pino';

const SECRET_FIELDS = [
  'authorization', 'cookie', 'token', 'joinToken', 'adminToken', 'secret', 'password', 'masterKey',
  'key', 'keyPem', 'privateKey', 'privateKeyPem', 'csr', 'clientSecrets', 'body',
];

export const REDACT_PATHS = [
  ...SECRET_FIELDS,
  ...SECRET_FIELDS.map((f) => `*.${f}`),
  'req.headers.authorization',
  'req.headers.cookie',
  'config.joinToken',
  'desired.clientSecrets',
];

export function createLogger(opts: { service: 'pgaccord-coordinator' | 'pgaccord-agent'; level?: string; destination?: pino.DestinationStream }): Logger {
  return pino(
    {
      level: opts.level ?? process.env.PGACCORD_LOG_LEVEL ?? 'info',
      base: { service: opts.service },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    },
    // Synchronous: a line logged just before exit (a fatal error, a signal) is never lost.
    opts.destination ?? pino.destination({ fd: 1, sync: true }),
  );
}
