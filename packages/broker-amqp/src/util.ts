/** Small timing helpers shared by the broker layer (internal). */

/** Settles like `promise`, or rejects with `onTimeout()` after `ms`; the timer never keeps the process alive. */
export function withTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), ms);
    timer.unref();
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}

/** Resolves after `ms` (the timer is unref'd unless `ref` is set). */
export function sleep(ms: number, ref = false): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (!ref) timer.unref();
  });
}

export const errorMessage = (error: unknown): string =>
  error instanceof Error ? error.message : String(error);

export interface BackoffOptions {
  /** Delay of the first attempt (any unit; the result is in the same unit). */
  readonly base: number;
  /** Cap of the exponential growth. */
  readonly max: number;
  /** 0-based attempt number. */
  readonly attempt: number;
  /** Source of randomness in [0, 1) (default `Math.random`); inject for tests. */
  readonly random?: () => number;
  /**
   * `full` (default): uniform in `[0, c)`; `equal`: uniform in `[c/2, c)`, so a retry never comes at once,
   * where `c = min(max, base * 2^attempt)`.
   */
  readonly jitter?: 'full' | 'equal';
}

/**
 * Capped exponential backoff with jitter. For owners that reconnect actively (the subscriber, with equal
 * jitter); `BrokerConnection` itself reconnects lazily on the next use.
 */
export function backoff({
  base,
  max,
  attempt,
  random = Math.random,
  jitter = 'full',
}: BackoffOptions): number {
  const ceiling = Math.min(max, base * 2 ** Math.max(0, Math.min(attempt, 52)));
  return jitter === 'equal' ? ceiling / 2 + (random() * ceiling) / 2 : random() * ceiling;
}
