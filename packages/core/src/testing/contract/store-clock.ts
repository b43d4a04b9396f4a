import { describe, expect, it } from 'vitest';
import { freshRef, nowSeconds, retryable, withStore } from './fixture.js';
import type { DedupStoreFactory, DedupStoreUnderTest } from './types.js';

/** Decisions by the store's own clock, for consumers whose clocks disagree. */
export function storeClockContract(factory: DedupStoreFactory): void {
  describe("the store's clock (consumers with skewed clocks)", () => {
    const fixture = withStore(factory, 0);
    /** The store's clock around `work`, and its result. */
    const between = async <T>(
      subject: DedupStoreUnderTest,
      clock: () => Promise<number> | number,
      work: () => Promise<T>,
    ): Promise<{ before: number; after: number; result: T }> => {
      const before = await clock();
      const result = await work();
      return { before, after: await clock(), result };
    };

    it("claim with a timeout: writes the store's now + timeout and reports its now when seen before", async () => {
      const subject = fixture.current();
      const clock = subject.storeClock?.bind(subject);
      if (!clock) return; // a store without a shared clock uses the caller's times
      const ref = freshRef();
      // The caller's clock is far off: its timeoutAt (10) is ignored.
      const first = await between(subject, clock, () =>
        subject.store.claim(ref, { expiresAt: nowSeconds() + 100, timeoutAt: 10, timeout: 30 }),
      );
      expect(first.result).toEqual({ first: true, attempts: 1 });
      const timeout = Number((await subject.store.inspect(ref)).timeout);
      expect(timeout).toBeGreaterThanOrEqual(first.before + 30);
      expect(timeout).toBeLessThanOrEqual(first.after + 30);
      const second = await between(subject, clock, () =>
        subject.store.claim(ref, { expiresAt: nowSeconds() + 100, timeoutAt: 10, timeout: 30 }),
      );
      if (second.result.first) throw new Error('a second claim must not be a first sighting');
      expect(second.result.state.timeout).toBe(timeout);
      expect(second.result.now).toBeGreaterThanOrEqual(second.before);
      expect(second.result.now).toBeLessThanOrEqual(second.after);
    });

    it("acquire with a timeout: the mutex's value and age, and the timeout, by the store's clock", async () => {
      const subject = fixture.current();
      const clock = subject.storeClock?.bind(subject);
      if (!clock) return;
      const { store } = subject;
      const ref = freshRef();
      const now = nowSeconds();
      await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      await store.fail(ref, retryable({ now }));
      // A consumer whose clock is 10 000 s behind takes the mutex: written with the store's now.
      const taken = await between(subject, clock, () =>
        store.acquire(ref, { now: now - 10_000, timeoutAt: now - 9_400, staleAfter: 610, timeout: 600 }),
      );
      expect(taken.result).toEqual({ acquired: true, attempts: 2 });
      const keys = await store.inspect(ref);
      expect(Number(keys.mutex)).toBeGreaterThanOrEqual(taken.before);
      expect(Number(keys.mutex)).toBeLessThanOrEqual(taken.after);
      expect(Number(keys.timeout)).toBe(Number(keys.mutex) + 600);
      // A consumer 10 000 s ahead finds it fresh (by its own clock it would look stale and be taken over).
      expect(
        await store.acquire(ref, {
          now: now + 10_000,
          timeoutAt: now + 10_600,
          staleAfter: 610,
          timeout: 600,
        }),
      ).toEqual({ acquired: false });
      expect(await store.inspect(ref)).toEqual(keys);
    });

    it("fail with storeClock: the retry's delay from the store's now", async () => {
      const subject = fixture.current();
      const clock = subject.storeClock?.bind(subject);
      if (!clock) return;
      const ref = freshRef();
      const now = nowSeconds();
      await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      const failed = await between(subject, clock, () =>
        subject.store.fail(ref, retryable({ now: 10, delay: 7, storeClock: true })),
      );
      expect(failed.result.outcome).toBe('HandlerCrash');
      expect(failed.result.delayUntil).toBeGreaterThanOrEqual(failed.before + 7);
      expect(failed.result.delayUntil).toBeLessThanOrEqual(failed.after + 7);
      expect((await subject.store.inspect(ref)).delay).toBe(String(failed.result.delayUntil));
    });
  });
}
