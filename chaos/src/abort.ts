/** Waits and promises that give up when the run's `AbortSignal` fires (rejecting with `Aborted`). */

export class Aborted extends Error {
  constructor() {
    super('chaos run aborted');
    this.name = 'Aborted';
  }
}

/** Resolves after `ms`, or rejects with `Aborted` when `signal` fires first. */
export const abortableSleep =
  (signal: AbortSignal | undefined) =>
  (ms: number): Promise<void> =>
    new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(new Aborted());
        return;
      }
      const onAbort = (): void => {
        clearTimeout(timer);
        reject(new Aborted());
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      signal?.addEventListener('abort', onAbort, { once: true });
    });

/** Settles like `promise`, or rejects with `Aborted` when `signal` fires first. */
export const abortableOf =
  (signal: AbortSignal | undefined) =>
  <T>(promise: Promise<T>): Promise<T> => {
    if (signal === undefined) return promise;
    if (signal.aborted) return Promise.reject(new Aborted());
    return new Promise<T>((resolve, reject) => {
      const onAbort = (): void => reject(new Aborted());
      signal.addEventListener('abort', onAbort, { once: true });
      promise.then(
        (value) => {
          signal.removeEventListener('abort', onAbort);
          resolve(value);
        },
        (error: unknown) => {
          signal.removeEventListener('abort', onAbort);
          reject(error instanceof Error ? error : new Error(String(error)));
        },
      );
    });
  };
