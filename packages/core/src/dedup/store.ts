import type { KeySuffix, MessageRef } from './keys.js';

/**
 * What the store knows about a message that was seen before (Ruby's `MGET status delay timeout attempts
 * exceptions`). Missing keys are `undefined`; counters default to 0.
 */
export interface MessageState {
  /** `'incomplete'` while being processed, `'completed'` once done; undefined if the key is gone. */
  readonly status: string | undefined;
  /** Unix seconds before which no retry may start. */
  readonly delay: number | undefined;
  /** Unix seconds after which (plus the 10 s grace) the running handler counts as crashed; 0 = not running. */
  readonly timeout: number | undefined;
  readonly attempts: number;
  readonly exceptions: number;
}

export type ClaimResult =
  /** First sighting: the message is ours and `attempts` was already incremented for the run. */
  | { readonly first: true; readonly attempts: number }
  /** Seen before: the caller walks Ruby's checks (completed, delayed, timed out, limits) on this state. */
  | { readonly first: false; readonly state: MessageState };

export type AcquireResult =
  { readonly acquired: true; readonly attempts: number } | { readonly acquired: false };

export interface ClaimParams {
  /** The message's `expires_at` (unix seconds), kept for garbage collection. */
  readonly expiresAt: number;
  /** `now + handler timeout` in unix seconds. */
  readonly timeoutAt: number;
}

export interface AcquireParams {
  readonly now: number;
  readonly timeoutAt: number;
  /**
   * A mutex older than this many seconds is taken over instead of refused: its holder is past its timeout
   * and grace period, so it crashed. (Ruby deletes the mutex on every refusal, which lets a third consumer
   * run concurrently; see the reference's weak spot 6.)
   */
  readonly staleAfter: number;
}

export interface FailParams {
  readonly now: number;
  readonly attemptsLimit: number;
  readonly exceptionsLimit: number;
  /** Whether `retryOn` accepts the error (true when no `retryOn` is set). */
  readonly accepted: boolean;
  readonly delay: number;
  readonly maxDelay: number | undefined;
}

export type FailOutcome =
  'AttemptsLimitReached' | 'ExceptionsLimitReached' | 'ExceptionNotAccepted' | 'HandlerCrash';

export interface FailResult {
  readonly outcome: FailOutcome;
  readonly attempts: number;
  readonly exceptions: number;
  /** For `HandlerCrash`: unix seconds before which the retry may not start. */
  readonly delayUntil: number | undefined;
}

/**
 * The deduplication store, shaped around the steps of Beetle's processing state machine (reference §4.4) so
 * that each step is one round trip. A Redis store implements each method as one script call; a third-party
 * store must give each method the same atomic semantics per message (run the contract suite from
 * `@beetle/core/testing` against it).
 *
 * Call order for one delivery: `claim` (or `markCompletedIfNew` on the simple path) → optionally `acquire`
 * → handler → `complete` or `fail` → broker ack → `acknowledged`. Completion is recorded before the ack and
 * the keys are deleted only after it, so a process dying in between never loses or repeats a completion.
 */
/** Parameters of {@link DedupStore.acknowledged}. */
export interface AcknowledgedParams {
  readonly redundant: boolean;
  /**
   * How many broker acks of this message the call records (default 1). A subscriber that acked both copies
   * of a redundant message records them in one call (Ruby counts each with its own `INCR`; the stored count
   * ends the same). A store must add all of them: counting one would keep the keys until garbage collection.
   */
  readonly acks?: number;
}

/** The number of acks an `acknowledged` call records; throws `TypeError` unless a positive integer. */
export function acksOf(params: AcknowledgedParams): number {
  const acks = params.acks ?? 1;
  if (!Number.isSafeInteger(acks) || acks < 1) {
    throw new TypeError(`acknowledged: acks must be a positive integer, got ${String(acks)}`);
  }
  return acks;
}

export interface DedupStore {
  /**
   * Simple fast path (non-redundant, one attempt): returns whether the handler may run. With a status-key
   * expiry interval it sets `status=completed` only if absent (with that TTL); with interval 0 it returns
   * true without touching the store (Ruby: `setnx_completed!`).
   */
  markCompletedIfNew(ref: MessageRef): Promise<boolean>;

  /**
   * First sighting (`MSETNX status=incomplete expires timeout`, then `INCR attempts`) or, when the message
   * was seen before, its current state.
   */
  claim(ref: MessageRef, params: ClaimParams): Promise<ClaimResult>;

  /** Retry of a seen message: take the mutex, set the timeout and count the attempt, atomically. */
  acquire(ref: MessageRef, params: AcquireParams): Promise<AcquireResult>;

  /** Records completion (`status=completed`, `timeout=0`): the handler succeeded or finally gave up. */
  complete(ref: MessageRef): Promise<void>;

  /**
   * Records a failed run (`INCR exceptions`) and decides, in Ruby's order: attempts limit, exceptions limit,
   * `retryOn` refusal (each completes the message), else schedules the retry (`mutex` deleted, `timeout=0`,
   * `delay=now+nextDelay(attempts)`).
   */
  fail(ref: MessageRef, params: FailParams): Promise<FailResult>;

  /**
   * Called after the broker ack. Non-redundant: delete the keys. Redundant: count the ack(s) and delete the
   * keys once two are counted. With a status-key expiry interval the `status` key stays with that TTL.
   */
  acknowledged(ref: MessageRef, params: AcknowledgedParams): Promise<void>;

  /** The raw stored values as a Ruby consumer would read them (for tools, tests and debugging). */
  inspect(ref: MessageRef): Promise<Partial<Record<KeySuffix, string>>>;

  /** Releases connections and timers. */
  close(): Promise<void>;
}
