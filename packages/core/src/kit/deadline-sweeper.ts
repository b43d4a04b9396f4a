import { systemClock, type Clock, type TimerHandle } from './clock.js';

export interface DeadlineSweeperOptions<T> {
  /** How often deadlines are checked while any is pending (ms): an expiry is noticed up to this late. */
  readonly periodMs: number;
  /** Called once for each item whose deadline has come; the item is no longer watched. */
  readonly onExpired: (item: T) => void;
  /**
   * Items are added with deadlines that never decrease (e.g. now + a fixed timeout): a sweep stops at the
   * first item not due, so a sweep costs O(expired) instead of O(pending).
   */
  readonly ordered?: boolean;
  /**
   * One repeating timer while anything is watched, stopped by the first sweep that finds nothing, instead of
   * a timeout armed again after every sweep: for a sweeper that is rarely idle (a busy connection's replies).
   * Needs a clock with `setInterval` (the system clock has it); without one, timeouts are used.
   */
  readonly repeating?: boolean;
  readonly clock?: Clock;
}

/**
 * One timer for many deadlines: publishes waiting for their timeout, confirms waiting for the broker, Redis
 * replies waiting for a stalled server. Each item costs a map entry, not a timer and its closures; the timer
 * runs only while something is watched and never keeps the process alive.
 */
export class DeadlineSweeper<T> {
  private readonly deadlines = new Map<T, number>();
  private timer: TimerHandle;
  private readonly clock: Clock;
  private readonly repeating: boolean;

  constructor(private readonly options: DeadlineSweeperOptions<T>) {
    this.clock = options.clock ?? systemClock;
    this.repeating =
      options.repeating === true &&
      this.clock.setInterval !== undefined &&
      this.clock.clearInterval !== undefined;
  }

  /** Items watched. */
  get size(): number {
    return this.deadlines.size;
  }

  /** Watches `item` until `deadline` (epoch ms, on the sweeper's clock) or until `delete`. */
  add(item: T, deadline: number): void {
    this.deadlines.set(item, deadline);
    if (this.timer === undefined) this.arm();
  }

  /** The items watched, in the order they were added (e.g. to end them all at a stop). */
  items(): IterableIterator<T> {
    return this.deadlines.keys();
  }

  /** Stops watching `item`; whether it was watched. */
  delete(item: T): boolean {
    return this.deadlines.delete(item);
  }

  /**
   * Stops watching everything and returns what was watched, e.g. to wake every wait at once (the callbacks of
   * the items are not called). A timeout stops now; a repeating timer at its next sweep, so that a busy
   * sweeper woken often does not create an interval each time.
   */
  takeAll(): T[] {
    const items = [...this.deadlines.keys()];
    this.deadlines.clear();
    if (!this.repeating) this.stop();
    return items;
  }

  /** Stops watching everything (the callbacks of the items are not called). */
  clear(): void {
    this.deadlines.clear();
    this.stop();
  }

  private arm(): void {
    this.timer = this.repeating
      ? this.clock.setInterval!(() => this.sweep(), this.options.periodMs)
      : this.clock.setTimeout(() => this.sweep(), this.options.periodMs);
    (this.timer as { unref?: () => void } | undefined)?.unref?.();
  }

  private stop(): void {
    if (this.timer === undefined) return;
    if (this.repeating) this.clock.clearInterval!(this.timer);
    else this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private sweep(): void {
    if (!this.repeating) {
      this.timer = undefined;
    } else if (this.deadlines.size === 0) {
      this.stop();
      return;
    }
    const now = this.clock.nowMs();
    const due: T[] = [];
    for (const [item, deadline] of this.deadlines) {
      if (deadline > now) {
        if (this.options.ordered === true) break;
        continue;
      }
      due.push(item);
    }
    for (const item of due) this.deadlines.delete(item);
    if (!this.repeating && this.deadlines.size > 0) this.arm();
    for (const item of due) this.options.onExpired(item);
  }
}
