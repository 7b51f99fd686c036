// Imports nothing: the CLI's status view reads it, and must not load the contract's schemas.
import type { ProbeResult } from './status.ts';

/**
 * The `reason` of an edge the agent has not probed at its generation because the peer is not
 * known to have applied it yet (its wake, or the safety timer, probes it): neither ok nor
 * failing, so the views show it as awaiting its peer, not as an error.
 */
export const AWAITING_PEER = 'awaiting-peer';
export const awaitingPeer = (p: Pick<ProbeResult, 'reason'>): boolean => p.reason === AWAITING_PEER;
