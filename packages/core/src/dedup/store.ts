import { InvalidArgumentError } from '../errors.js';
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
  /**
   * Seen before: the caller walks Ruby's checks (completed, delayed, timed out, limits) on this state. `now`
   * (unix seconds) is the store's clock when it read the state, given when the claim asked for the store's
   * clock (`ClaimParams.timeout`) and the store has one: the caller compares `delay` and `timeout` with it
   * rather than with its own clock.
   */
  | { readonly first: false; readonly state: MessageState; readonly now?: number };

export type AcquireResult =
  { readonly acquired: true; readonly attempts: number } | { readonly acquired: false };

/*
 * Clocks: the handler timeout, the retry delay and the mutex's age are points in time written by one consumer
 * and compared by others. Compared with each consumer's own clock (as Ruby does), consumers whose clocks
 * differ by more than timeout + 10 s run one message at once. A store with a clock shared by all its consumers
 * (Redis `TIME`) decides with that clock when asked to: `ClaimParams.timeout`, `AcquireParams.timeout`,
 * `FailParams.storeClock`. The values written stay plain unix seconds. A store without such a clock ignores
 * these fields and uses the caller's `now` and `timeoutAt`.
 */

export interface ClaimParams {
  /** The message's `expires_at` (unix seconds), kept for garbage collection. */
  readonly expiresAt: number;
  /** `now + handler timeout` in unix seconds. */
  readonly timeoutAt: number;
  /**
   * The handler timeout in seconds, to decide with the store's clock: a first sighting writes `timeout` as the
   * store's now + this (instead of `timeoutAt`), and a seen-before state comes with the store's `now`.
   */
  readonly timeout?: number;
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
  /**
   * The handler timeout in seconds, to decide with the store's clock: the store's now replaces `now` (the
   * mutex value and its age) and the store's now + this replaces `timeoutAt`.
   */
  readonly timeout?: number;
}

export interface FailParams {
  readonly now: number;
  /** Decide with the store's clock: the retry's `delay` counts from the store's now instead of `now`. */
  readonly storeClock?: boolean;
  readonly attemptsLimit: number;
  readonly exceptionsLimit: number;
  /** Whether `retryOn` accepts the error (true when no `retryOn` is set). */
  readonly accepted: boolean;
  readonly delay: number;
  readonly maxDelay: number | undefined;
  /** Written with the completion of a final outcome, as {@link CompleteParams.expiresAt}. */
  readonly expiresAt?: number;
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

/** Parameters of {@link DedupStore.complete}. */
export interface CompleteParams {
  /**
   * The message's `expires_at` (unix seconds), written with the completion (the value the claim wrote). A
   * completion that arrives after the message's keys were deleted (garbage collection, `beetle delete-keys`)
   * recreates them; with `expires` among them the garbage collector removes them again, while a bare
   * `status` key without a TTL would stay forever (the collector skips `status` keys).
   */
  readonly expiresAt?: number;
}

/** Parameters of {@link DedupStore.release}. */
export interface ReleaseParams {
  /** The attempt number the abandoned run had (what `claim` or `acquire` returned for it). */
  readonly attempts: number;
}

/** The number of acks an `acknowledged` call records; throws `InvalidArgumentError` (a `TypeError`) unless a positive integer. */
export function acksOf(params: AcknowledgedParams): number {
  const acks = params.acks ?? 1;
  if (!Number.isSafeInteger(acks) || acks < 1) {
    throw new InvalidArgumentError(`acknowledged: acks must be a positive integer, got ${String(acks)}`);
  }
  return acks;
}

/**
 * The deduplication store, shaped around the steps of Beetle's processing state machine (reference §4.4) so
 * that each step is one round trip. A Redis store implements each method as one script call; a third-party
 * store must give each method the same atomic semantics per message (run the contract suite from
 * `@beetle/core/testing` against it).
 *
 * Call order for one delivery: `claim` (or `markCompletedIfNew` on the simple path) → optionally `acquire`
 * → handler → `complete` or `fail` → broker ack → `acknowledged` (or `release` when the run was abandoned).
 * Completion is recorded before the ack and the keys are deleted only after it, so a process dying in between
 * never loses or repeats a completion.
 *
 * A call whose reply was lost (a connection reset, a master switch) may be sent again; the store must then
 * answer the resend as it answered the lost call, not act twice (an `INCR attempts` counted twice, or a
 * claim that finds its own first sighting, would cost a run that never happened).
 */
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

  /**
   * Records completion (`status=completed`, `timeout=0`, and `expires` when given): the handler succeeded or
   * finally gave up.
   */
  complete(ref: MessageRef, params?: CompleteParams): Promise<void>;

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

  /**
   * Optional. Gives back a run that was abandoned without a result (a subscriber stopped while the handler
   * ran): if the message is still incomplete and its `attempts` is still the run's, the attempt is uncounted
   * (`DECR attempts`), `timeout` set to 0 and the `mutex` deleted, so that the redelivery runs at once
   * rather than waiting for the handler timeout (or, for the last attempt, ending as
   * `AttemptsLimitReached` without a run). Returns whether it released anything; a store without it leaves
   * the run to time out.
   */
  release?(ref: MessageRef, params: ReleaseParams): Promise<boolean>;

  /**
   * Optional. A health check (Ruby's `ping`): resolves once the store can serve calls, rejects with the reason
   * it cannot (for the Redis store: after its failover timeout, with `NoRedisMasterError`). `Client.health()`
   * reports it; a store without it reports no store health.
   */
  ping?(): Promise<void>;

  /** The raw stored values as a Ruby consumer would read them (for tools, tests and debugging). */
  inspect(ref: MessageRef): Promise<Partial<Record<KeySuffix, string>>>;

  /** Releases connections and timers. */
  close(): Promise<void>;
}
