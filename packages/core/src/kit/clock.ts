/**
 * Time as Beetle sees it. Injectable so that the state machine, handler timeouts, requeue delays and deadline
 * sweeps can be tested deterministically.
 */
export interface Clock {
  /** Unix time in whole seconds (what the dedup store compares against, as Ruby's `Time.now.to_i`). */
  now(): number;
  /** Milliseconds, for durations. */
  nowMs(): number;
  setTimeout(callback: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
  /** A repeating timer; optional (a `DeadlineSweeper` without it re-arms timeouts instead). */
  setInterval?(callback: () => void, ms: number): TimerHandle;
  clearInterval?(handle: TimerHandle): void;
}

/** Opaque timer handle. */
export type TimerHandle = unknown;

export const systemClock: Clock = {
  now: () => Math.floor(Date.now() / 1000),
  nowMs: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
  setInterval: (callback, ms) => setInterval(callback, ms),
  clearInterval: (handle) => clearInterval(handle as ReturnType<typeof setInterval>),
};
