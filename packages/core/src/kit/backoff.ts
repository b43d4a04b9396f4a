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

/** Capped exponential backoff with jitter, for whatever reconnects or retries actively. */
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
