/**
 * How long a rejected delivery is held (unacked) before it goes back to the broker.
 *
 * A message that is not ready (`HandlerNotYetTimedOut` or `MutexLocked`: in progress in another process;
 * `Delayed`: waiting for its retry time) comes straight back when handed back, for as long as it is not
 * ready: up to the handler timeout + 10 s. Handing it back once per `rejectRequeueDelay` is a storm of
 * redeliveries (each one a broker round trip and a store call). So each message's copies are paced:
 *
 * - `Delayed` knows when the message is ready (the store's `delay`): the delivery is held until then;
 * - otherwise the hold doubles with each sighting of the same message (`base`, `2 × base`, `4 × base`, ...),
 *   kept in a bounded map, and never beyond the time after which the message counts as timed out; but the
 *   first `HandlerNotYetTimedOut` sighting (typically the twin copy racing a running handler in another
 *   process) is held only 50 ms;
 * - always capped at `rejectRequeueMaxDelay`, which bounds how late a copy notices that the message is done.
 *
 * Holding costs one prefetch slot for the hold; see the subscriber README for when that is paid.
 */
import { Outcome } from '@beetle/core';

/** Why a delivery is handed back (what its settler gets, to pace copies of a message that is not ready). */
export interface RejectReason {
  readonly outcome: Outcome;
  /**
   * Unix seconds from which the message is ready again, when the store says: the retry time for `Delayed`,
   * the time the running handler counts as timed out for `HandlerNotYetTimedOut`.
   */
  readonly readyAt: number | undefined;
}

/** The hold of the first `HandlerNotYetTimedOut` sighting of a message (ms), at most the base delay. */
export const FIRST_NOT_YET_TIMED_OUT_HOLD_MS = 50;

/** At most this many messages are paced; the least recently seen is forgotten first. */
export const MAX_PACED_MESSAGES = 10_000;

const notReady: ReadonlySet<Outcome> = new Set([
  Outcome.Delayed,
  Outcome.HandlerNotYetTimedOut,
  Outcome.MutexLocked,
]);

/** The message of the delivery will not be ready at once: handing it back soon only brings it back. */
export const isNotReady = (reason: RejectReason | undefined): reason is RejectReason =>
  reason !== undefined && notReady.has(reason.outcome);

interface Sightings {
  count: number;
  lastMs: number;
}

export class RequeuePacing {
  /** Not-ready sightings per message (`uuid:queue`), least recently seen first. */
  private readonly seen = new Map<string, Sightings>();
  /** A message not seen for this long starts over at the base delay (a new episode, e.g. after a retry). */
  private readonly horizonMs: number;

  constructor(
    private readonly baseMs: number,
    private readonly maxMs: number,
    private readonly maxEntries = MAX_PACED_MESSAGES,
  ) {
    this.horizonMs = 2 * Math.max(baseMs, maxMs) + 60_000;
  }

  /** Messages currently paced (for tests). */
  get size(): number {
    return this.seen.size;
  }

  /**
   * Milliseconds to hold a not-ready delivery of message `key` before handing it back, counting this sighting.
   * `skipFirst`: the first sighting is not held (dead lettering: the dead letter queue's TTL already paces it).
   */
  holdMs(key: string, reason: RejectReason, nowMs: number, skipFirst = false): number {
    const count = this.sighted(key, nowMs);
    const cap = Math.max(this.baseMs, this.maxMs);
    const untilReady = reason.readyAt === undefined ? undefined : reason.readyAt * 1000 - nowMs;
    let hold: number;
    if (reason.outcome === Outcome.Delayed && untilReady !== undefined) {
      hold = untilReady;
    } else if (count === 0 && !skipFirst && reason.outcome === Outcome.HandlerNotYetTimedOut) {
      // Most often the twin copy, handled by another consumer process at this moment: its handler is usually
      // done within a few ms, so this copy goes back soon (and is then acked as completed) instead of holding
      // a prefetch slot for the whole base delay. A long handler costs one requeue more per episode.
      return Math.min(this.baseMs, FIRST_NOT_YET_TIMED_OUT_HOLD_MS);
    } else {
      const exponent = skipFirst ? count - 1 : count;
      hold = exponent < 0 ? 0 : this.baseMs * 2 ** Math.min(exponent, 30);
      if (untilReady !== undefined) hold = Math.min(hold, untilReady);
    }
    return Math.max(skipFirst ? 0 : this.baseMs, Math.min(hold, cap));
  }

  /** Records a sighting of `key`; returns how many earlier sightings there were in this episode. */
  private sighted(key: string, nowMs: number): number {
    const entry = this.seen.get(key);
    const count = entry === undefined || nowMs - entry.lastMs > this.horizonMs ? 0 : entry.count;
    // Re-inserted so that the map stays ordered by last sighting (oldest first).
    if (entry !== undefined) this.seen.delete(key);
    this.seen.set(key, { count: count + 1, lastMs: nowMs });
    this.prune(nowMs);
    return count;
  }

  /** Drops the oldest entries beyond the bound and those past the horizon (both at the front). */
  private prune(nowMs: number): void {
    for (const [key, entry] of this.seen) {
      if (this.seen.size <= this.maxEntries && nowMs - entry.lastMs <= this.horizonMs) return;
      this.seen.delete(key);
    }
  }
}
