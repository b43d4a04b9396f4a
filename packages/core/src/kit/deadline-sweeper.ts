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

  constructor(private readonly options: DeadlineSweeperOptions<T>) {
    this.clock = options.clock ?? systemClock;
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

  /** Stops watching everything and returns what was watched (their callbacks are not called). */
  takeAll(): T[] {
    const items = [...this.deadlines.keys()];
    this.clear();
    return items;
  }

  /** Stops watching everything (the callbacks of the items are not called). */
  clear(): void {
    this.deadlines.clear();
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(): void {
    this.timer = this.clock.setTimeout(() => this.sweep(), this.options.periodMs);
    (this.timer as { unref?: () => void } | undefined)?.unref?.();
  }

  private sweep(): void {
    this.timer = undefined;
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
    if (this.deadlines.size > 0) this.arm();
    for (const item of due) this.options.onExpired(item);
  }
}
