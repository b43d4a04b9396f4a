/**
 * A value made on first use and shared by concurrent callers (a connection, a channel). A failure is not
 * remembered: the next `get` tries again. `reset` forgets the value (e.g. when the connection it holds dies).
 */
export class Lazy<T> {
  private promise: Promise<T> | undefined;
  private settled: { readonly value: T } | undefined;

  constructor(private readonly make: () => Promise<T>) {}

  get(): Promise<T> {
    if (this.promise !== undefined) return this.promise;
    const promise = this.make();
    this.promise = promise;
    promise.then(
      (value) => {
        if (this.promise === promise) this.settled = { value };
      },
      () => {
        if (this.promise === promise) this.promise = undefined;
      },
    );
    return promise;
  }

  /** The promise of the value being made or made, without starting to make one (undefined: none). */
  get current(): Promise<T> | undefined {
    return this.promise;
  }

  /** The value once made (undefined while making it, after a failure or a reset). */
  get value(): T | undefined {
    return this.settled?.value;
  }

  reset(): void {
    this.promise = undefined;
    this.settled = undefined;
  }
}

/**
 * Work done once per key (declaring an exchange on a connection): concurrent callers share the running
 * promise, a failure is not remembered, `clear` forgets everything.
 */
export class Memo {
  private readonly running = new Map<string, Promise<unknown>>();
  private readonly done = new Set<string>();

  run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const existing = this.running.get(key) as Promise<T> | undefined;
    if (existing !== undefined) return existing;
    const promise = work();
    this.running.set(key, promise);
    promise.then(
      () => {
        if (this.running.get(key) === promise) this.done.add(key);
      },
      () => {
        if (this.running.get(key) === promise) this.running.delete(key);
      },
    );
    return promise;
  }

  /** Whether the work of `key` completed (since the last `clear`). */
  isDone(key: string): boolean {
    return this.done.has(key);
  }

  clear(): void {
    this.running.clear();
    this.done.clear();
  }
}
