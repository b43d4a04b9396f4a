import { ConfigurationError } from './errors.js';

/** Ruby Beetle's processing constants (`lib/beetle.rb`, `lib/beetle/message.rb`). */
export const DEFAULT_TTL = 86_400;
export const DEFAULT_HANDLER_TIMEOUT = 600;
export const TIMEOUT_GRACE_PERIOD = 10;
export const DEFAULT_ATTEMPTS = 1;
export const DEFAULT_DELAY = 10;
export const DEFAULT_EXCEPTIONS = 0;

/** Per-handler retry settings as a user writes them; all durations in seconds, as in Ruby. */
export interface RetryOptions {
  /** Seconds until a running handler counts as crashed (600). */
  timeout?: number;
  /** Seconds before a failed message may be retried (10). */
  delay?: number;
  /** Enables exponential backoff capped at this many seconds (needs `maxDelay >= 2 * delay`). */
  maxDelay?: number;
  /** How many times the handler may run (1). */
  attempts?: number;
  /** How many failures are tolerated (0); `attempts` is raised to `exceptions + 1` when lower. */
  exceptions?: number;
}

/** The normalized settings the state machine and the stores work with. */
export interface RetryPolicy {
  readonly timeout: number;
  readonly delay: number;
  readonly maxDelay: number | undefined;
  readonly attemptsLimit: number;
  readonly exceptionsLimit: number;
}

const nonNegative = (name: string, value: number | undefined, fallback: number): number => {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new ConfigurationError(
      `handler option \`${name}\` must be a non-negative number, got ${String(value)}`,
      {
        key: name,
      },
    );
  }
  return value;
};

/** Ruby's `Message#setup`: defaults, the attempts = exceptions + 1 rule and the backoff switch. */
export function retryPolicy(options: RetryOptions = {}): RetryPolicy {
  const timeout = nonNegative('timeout', options.timeout, DEFAULT_HANDLER_TIMEOUT);
  const delay = Math.ceil(nonNegative('delay', options.delay, DEFAULT_DELAY));
  const exceptionsLimit = Math.floor(nonNegative('exceptions', options.exceptions, DEFAULT_EXCEPTIONS));
  let attemptsLimit = Math.floor(nonNegative('attempts', options.attempts, DEFAULT_ATTEMPTS));
  if (attemptsLimit <= exceptionsLimit) attemptsLimit = exceptionsLimit + 1;
  const rawMax = options.maxDelay === undefined ? undefined : nonNegative('maxDelay', options.maxDelay, 0);
  const maxDelay = rawMax !== undefined && rawMax >= 2 * delay ? Math.ceil(rawMax) : undefined;
  return { timeout, delay, maxDelay, attemptsLimit, exceptionsLimit };
}

/**
 * Seconds to wait before the next attempt, given the attempts made so far (Ruby `next_delay`). Attempts are
 * counted before the handler runs, so the first exponential retry already waits `2 * delay`.
 */
export function nextDelay(policy: Pick<RetryPolicy, 'delay' | 'maxDelay'>, attempts: number): number {
  if (policy.maxDelay === undefined) return policy.delay;
  return Math.min(policy.delay * 2 ** attempts, policy.maxDelay);
}

/** Ruby's simple fast path: non-redundant messages whose handler runs once are acked before running. */
export const isSimple = (redundant: boolean, policy: Pick<RetryPolicy, 'attemptsLimit'>): boolean =>
  !redundant && policy.attemptsLimit === 1;

/** Whole seconds at which a handler started now counts as timed out (the store's `timeout` value). */
export const timeoutAt = (now: number, policy: Pick<RetryPolicy, 'timeout'>): number =>
  now + Math.ceil(policy.timeout);
