import { nextDelay } from '../retry-policy.js';
import type { FailOutcome, FailParams } from './store.js';

/**
 * Ruby's `handler_failed!` decision, given the counters after `INCR exceptions`. Stores apply it atomically
 * (the Redis store mirrors it in Lua); it lives here so every store decides the same way.
 */
export function decideFailure(
  counters: { attempts: number; exceptions: number },
  params: Pick<FailParams, 'attemptsLimit' | 'exceptionsLimit' | 'accepted'>,
): FailOutcome {
  if (counters.attempts >= params.attemptsLimit) return 'AttemptsLimitReached';
  if (counters.exceptions > params.exceptionsLimit) return 'ExceptionsLimitReached';
  if (!params.accepted) return 'ExceptionNotAccepted';
  return 'HandlerCrash';
}

export const retryAt = (params: Pick<FailParams, 'now' | 'delay' | 'maxDelay'>, attempts: number): number =>
  params.now + nextDelay({ delay: params.delay, maxDelay: params.maxDelay }, attempts);
