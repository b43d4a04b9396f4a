import type { DedupStore, DeliveryObservation, Logger } from '@beetle/core';

/**
 * A delivery's view of the store while a telemetry observes it: every step is timed and reported to the
 * observation (`claim`, `complete`, …). Made only when there is an observation, so an unobserved delivery
 * pays nothing. An observer that throws is logged and ignored.
 */
export function observedStore(
  store: DedupStore,
  observation: DeliveryObservation,
  logger: Logger,
): DedupStore {
  const timed =
    <A extends unknown[], R>(name: string, call: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      const started = performance.now();
      try {
        const result = await call(...args);
        report(name, performance.now() - started, undefined);
        return result;
      } catch (error) {
        report(name, performance.now() - started, error);
        throw error;
      }
    };
  const report = (name: string, ms: number, error: unknown): void => {
    try {
      observation.step(name, ms, error);
    } catch (observerError) {
      logger.error({ err: observerError, step: name }, 'telemetry observer threw; ignored');
    }
  };
  return {
    markCompletedIfNew: timed('markCompletedIfNew', store.markCompletedIfNew.bind(store)),
    claim: timed('claim', store.claim.bind(store)),
    acquire: timed('acquire', store.acquire.bind(store)),
    complete: timed('complete', store.complete.bind(store)),
    fail: timed('fail', store.fail.bind(store)),
    acknowledged: timed('acknowledged', store.acknowledged.bind(store)),
    inspect: store.inspect.bind(store),
    close: store.close.bind(store),
    ...(store.release === undefined ? {} : { release: timed('release', store.release.bind(store)) }),
  };
}
