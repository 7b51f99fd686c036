// When agents renew their certificates, as a fraction of each lifetime: the agent schedules by it
// (agent/runtime/backoff.ts) and the coordinator's metrics predict the same instant from it.

/** Renewal starts at this fraction of the lifetime... */
export const RENEW_AT_FRACTION = 2 / 3;
/** ...minus a random jitter of up to this fraction of the lifetime. */
export const RENEW_JITTER_FRACTION = 1 / 20;
