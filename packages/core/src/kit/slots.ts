/**
 * A FIFO counting semaphore bounding publishes in flight. Waiters time out individually; nothing is queued
 * beyond the callers that are waiting.
 */
export class Slots {
  private used = 0;
  private readonly waiters = new Set<{ grant: () => void }>();

  constructor(private readonly max: number) {}

  get inUse(): number {
    return this.used;
  }

  get waiting(): number {
    return this.waiters.size;
  }

  /** Takes a slot at once if one is free and nobody waits (the fast path, no promise). */
  tryAcquire(): boolean {
    if (this.used < this.max && this.waiters.size === 0) {
      this.used++;
      return true;
    }
    return false;
  }

  /** Waits for a slot; resolves `false` if none became free within `timeoutMs`. */
  acquire(timeoutMs: number): Promise<boolean> {
    if (this.tryAcquire()) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const waiter = {
        grant: () => {
          clearTimeout(timer);
          resolve(true);
        },
      };
      const timer = setTimeout(
        () => {
          this.waiters.delete(waiter);
          resolve(false);
        },
        Math.max(0, timeoutMs),
      );
      this.waiters.add(waiter);
    });
  }

  release(): void {
    const next = this.waiters.values().next();
    if (!next.done) {
      // The slot passes straight to the oldest waiter.
      this.waiters.delete(next.value);
      next.value.grant();
      return;
    }
    this.used = Math.max(0, this.used - 1);
  }
}
