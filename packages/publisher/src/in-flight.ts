import { PublishTimeoutError } from '@beetle/core';
import { DeadlineSweeper, Slots, systemClock, type Clock } from '@beetle/core/kit';

/** A publish holding a slot, until its work settles. */
export interface Outstanding {
  readonly name: string;
  readonly reject: (error: Error) => void;
}

/** How often publish deadlines are checked: a timed-out publish rejects up to this late. */
const SWEEP_INTERVAL_MS = 50;

/**
 * The in-flight window: at most `publisherMaxInFlight` publishes hold a slot (a caller waits for one within
 * its `publishTimeout`), and each publish is bounded by `publishTimeout`: one sweeper (not a timer per
 * publish) rejects a publish whose deadline passed with `PublishTimeoutError`, while its slot stays taken
 * until the work settles (bounded by the broker timeouts), so memory stays bounded.
 */
export class InFlight {
  private readonly slots: Slots;
  private readonly deadlines: DeadlineSweeper<Outstanding>;
  private running = 0;
  private readonly idleWaiters = new Set<() => void>();

  constructor(
    private readonly maxInFlight: number,
    /** Seconds. */
    private readonly publishTimeout: number,
    readonly clock: Clock = systemClock,
  ) {
    this.slots = new Slots(maxInFlight);
    this.deadlines = new DeadlineSweeper({
      periodMs: SWEEP_INTERVAL_MS,
      clock,
      onExpired: (entry) =>
        entry.reject(
          new PublishTimeoutError(
            `publish of ${entry.name} did not complete within ${this.publishTimeout}s (outcome unknown)`,
          ),
        ),
    });
  }

  /** Publishes holding a slot. */
  get inUse(): number {
    return this.slots.inUse;
  }

  /** Callers waiting for a slot. */
  get waiting(): number {
    return this.slots.waiting;
  }

  /** The deadline of a publish starting now. */
  deadline(): number {
    return this.clock.nowMs() + this.publishTimeout * 1000;
  }

  /** Takes a slot at once if one is free (the fast path, no promise). */
  tryAcquire(): boolean {
    return this.slots.tryAcquire();
  }

  /** Waits for a slot within the publish timeout; rejects `PublishTimeoutError` if none became free. */
  acquire(name: string): Promise<void> {
    return this.slots.acquire(this.publishTimeout * 1000).then((granted) => {
      if (!granted) {
        throw new PublishTimeoutError(
          `publish of ${name}: no free in-flight slot (publisherMaxInFlight ${this.maxInFlight}) within ${this.publishTimeout}s`,
        );
      }
    });
  }

  /** A publish holding a slot starts: `reject` is called at `deadline` unless `leave` came first. */
  enter(name: string, deadline: number, reject: (error: Error) => void): Outstanding {
    const entry: Outstanding = { name, reject };
    this.deadlines.add(entry, deadline);
    this.running++;
    return entry;
  }

  /** The work of a publish settled: its slot is free. */
  leave(entry: Outstanding): void {
    this.deadlines.delete(entry);
    this.running--;
    this.slots.release();
    if (this.running === 0) {
      for (const wake of this.idleWaiters) wake();
      this.idleWaiters.clear();
    }
  }

  /** Resolves once no publish holds a slot, or after `timeoutMs`; the number still running then. */
  async idle(timeoutMs: number): Promise<number> {
    if (this.running === 0) return 0;
    let timer: NodeJS.Timeout | undefined;
    let wake: (() => void) | undefined;
    await new Promise<void>((resolve) => {
      wake = resolve;
      this.idleWaiters.add(resolve);
      timer = setTimeout(resolve, timeoutMs);
    });
    clearTimeout(timer);
    if (wake) this.idleWaiters.delete(wake);
    return this.running;
  }
}
