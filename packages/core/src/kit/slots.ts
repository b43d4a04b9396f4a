/**
 * A FIFO counting semaphore (publishes in flight, handlers running). Waiters may time out individually;
 * nothing is queued beyond the callers that are waiting. `close` ends it: waiters and later callers get
 * `false`.
 */
export class Slots {
  private used = 0;
  private closed = false;
  private readonly waiters = new Set<{ settle: (granted: boolean) => void }>();

  constructor(private readonly max: number) {}

  get inUse(): number {
    return this.used;
  }

  get waiting(): number {
    return this.waiters.size;
  }

  /** Takes a slot at once if one is free and nobody waits (the fast path, no promise). */
  tryAcquire(): boolean {
    if (this.used < this.max && this.waiters.size === 0 && !this.closed) {
      this.used++;
      return true;
    }
    return false;
  }

  /**
   * Waits for a slot; resolves `false` if none became free within `timeoutMs` (without it: no timer, waits
   * until a slot is free or `close`).
   */
  acquire(timeoutMs?: number): Promise<boolean> {
    if (this.tryAcquire()) return Promise.resolve(true);
    if (this.closed) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const waiter = {
        settle: (granted: boolean) => {
          if (timer !== undefined) clearTimeout(timer);
          resolve(granted);
        },
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(
          () => {
            this.waiters.delete(waiter);
            resolve(false);
          },
          Math.max(0, timeoutMs),
        );
      }
      this.waiters.add(waiter);
    });
  }

  release(): void {
    if (this.waiters.size > 0) {
      // The slot passes straight to the oldest waiter.
      const next = this.waiters.values().next().value!;
      this.waiters.delete(next);
      next.settle(true);
      return;
    }
    this.used = Math.max(0, this.used - 1);
  }

  /** From now on no slot is given: the waiting callers and every later one get `false`; releases still count. */
  close(): void {
    this.closed = true;
    const waiting = [...this.waiters];
    this.waiters.clear();
    for (const waiter of waiting) waiter.settle(false);
  }
}
