import { describe, expect, it } from 'vitest';
import type { MessageRef } from '../../dedup/keys.js';
import type { DedupStore } from '../../dedup/store.js';
import { expectKeys, freshRef, nowSeconds, retryable, withStore } from './fixture.js';
import type { DedupStoreFactory } from './types.js';

/** A failed run (`fail`): the limits in Ruby's order, the retry schedule and its delays. */
export function failContract(factory: DedupStoreFactory): void {
  describe('fail()', () => {
    const fixture = withStore(factory, 0);

    const claimed = async (store: DedupStore, now: number): Promise<MessageRef> => {
      const ref = freshRef();
      await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      return ref;
    };

    // Ruby's order: the attempts limit, then the exceptions limit, then retryOn; each completes the message.
    it.each([
      ['checks the attempts limit first', 1, 0, 'AttemptsLimitReached'],
      ['checks the exceptions limit before retryOn', 3, 0, 'ExceptionsLimitReached'],
      ['completes the message when retryOn refuses the error', 3, 2, 'ExceptionNotAccepted'],
    ] as const)('%s', async (_, attemptsLimit, exceptionsLimit, outcome) => {
      const subject = fixture.current();
      const now = nowSeconds();
      const ref = await claimed(subject.store, now);
      const result = await subject.store.fail(
        ref,
        retryable({ now, attemptsLimit, exceptionsLimit, accepted: false }),
      );
      expect(result).toEqual({ outcome, attempts: 1, exceptions: 1, delayUntil: undefined });
      await expectKeys(subject, ref, {
        status: 'completed',
        expires: String(now + 100),
        timeout: '0',
        attempts: '1',
        exceptions: '1',
      });
    });

    it('schedules a retry: mutex deleted, timeout=0, delay=now+delay', async () => {
      const subject = fixture.current();
      const now = nowSeconds();
      const ref = await claimed(subject.store, now);
      const first = await subject.store.fail(ref, retryable({ now, attemptsLimit: 3, exceptionsLimit: 2 }));
      expect(first).toEqual({ outcome: 'HandlerCrash', attempts: 1, exceptions: 1, delayUntil: now + 10 });
      await expectKeys(subject, ref, {
        status: 'incomplete',
        expires: String(now + 100),
        timeout: '0',
        attempts: '1',
        exceptions: '1',
        delay: String(now + 10),
      });
      // The retry holds the mutex; its failure releases it.
      const later = now + 11;
      expect(
        await subject.store.acquire(ref, { now: later, timeoutAt: later + 600, staleAfter: 610 }),
      ).toEqual({
        acquired: true,
        attempts: 2,
      });
      expect((await subject.store.inspect(ref)).mutex).toBe(String(later));
      const second = await subject.store.fail(
        ref,
        retryable({ now: later, attemptsLimit: 3, exceptionsLimit: 2, delay: 5 }),
      );
      expect(second).toEqual({
        outcome: 'HandlerCrash',
        attempts: 2,
        exceptions: 2,
        delayUntil: later + 5,
      });
      await expectKeys(subject, ref, {
        status: 'incomplete',
        expires: String(now + 100),
        timeout: '0',
        attempts: '2',
        exceptions: '2',
        delay: String(later + 5),
      });
      const state = await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      expect(state).toEqual({
        first: false,
        state: { status: 'incomplete', delay: later + 5, timeout: 0, attempts: 2, exceptions: 2 },
      });
      // The third run reaches the attempts limit.
      await subject.store.acquire(ref, { now: later + 6, timeoutAt: later + 606, staleAfter: 610 });
      const third = await subject.store.fail(
        ref,
        retryable({ now: later + 6, attemptsLimit: 3, exceptionsLimit: 2 }),
      );
      expect(third).toEqual({
        outcome: 'AttemptsLimitReached',
        attempts: 3,
        exceptions: 3,
        delayUntil: undefined,
      });
      const final = await subject.store.inspect(ref);
      expect(final).toMatchObject({ status: 'completed', timeout: '0', attempts: '3', exceptions: '3' });
    });

    it("reproduces Ruby's worked example (delay 42, timeout 10, exceptions 1, now 10)", async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = 10;
      await subject.store.claim(ref, { expiresAt: nowSeconds() + 100, timeoutAt: now + 10 });
      const result = await subject.store.fail(ref, {
        now,
        attemptsLimit: 2,
        exceptionsLimit: 1,
        accepted: true,
        delay: 42,
        maxDelay: undefined,
      });
      expect(result).toEqual({ outcome: 'HandlerCrash', attempts: 1, exceptions: 1, delayUntil: 52 });
      const keys = await subject.store.inspect(ref);
      expect(keys).toMatchObject({ exceptions: '1', timeout: '0', delay: '52', attempts: '1' });
    });

    it('computes exponential backoff from the attempts counter (delay 3, max 30 and max 10, now 1)', async () => {
      const { store } = fixture.current();
      for (const [maxDelay, expected] of [
        [30, [4, 7, 13, 25]],
        [10, [4, 7, 11, 11]],
      ] as const) {
        // Ruby's test reads attempts n=0..3; here attempts counts the runs, so n=0 is a failure before any run.
        const bare = freshRef();
        const zero = await store.fail(bare, retryable({ now: 1, delay: 3, maxDelay }));
        expect(zero).toEqual({
          outcome: 'HandlerCrash',
          attempts: 0,
          exceptions: 1,
          delayUntil: expected[0],
        });
        expect((await store.inspect(bare)).delay).toBe(String(expected[0]));

        const ref = freshRef();
        await store.claim(ref, { expiresAt: nowSeconds() + 100, timeoutAt: 601 });
        const delays: number[] = [];
        for (let run = 1; run <= 3; run++) {
          if (run > 1) await store.acquire(ref, { now: 1, timeoutAt: 601, staleAfter: 610 });
          const result = await store.fail(ref, retryable({ now: 1, delay: 3, maxDelay }));
          expect(result.attempts).toBe(run);
          expect((await store.inspect(ref)).delay).toBe(String(result.delayUntil));
          delays.push(result.delayUntil ?? Number.NaN);
        }
        expect(delays).toEqual(expected.slice(1));
      }
    });

    it('uses the linear delay when maxDelay is undefined', async () => {
      const { store } = fixture.current();
      const ref = freshRef();
      await store.claim(ref, { expiresAt: nowSeconds() + 100, timeoutAt: 601 });
      const delays: (number | undefined)[] = [];
      for (let run = 1; run <= 3; run++) {
        if (run > 1) await store.acquire(ref, { now: 100, timeoutAt: 700, staleAfter: 610 });
        delays.push((await store.fail(ref, retryable({ now: 100, delay: 7 }))).delayUntil);
      }
      expect(delays).toEqual([107, 107, 107]);
    });
  });
}
