import { describe, expect, it } from 'vitest';
import type { MessageRef } from '../../dedup/keys.js';
import type { DedupStore } from '../../dedup/store.js';
import { expectKeys, freshRef, nowSeconds, retryable, withStore } from './fixture.js';
import type { DedupStoreFactory } from './types.js';

/** A retry taking the run (`acquire`): the mutex, held, stale or released. */
export function acquireContract(factory: DedupStoreFactory): void {
  describe('acquire()', () => {
    const fixture = withStore(factory, 0);

    const crashedOnce = async (store: DedupStore, now: number): Promise<MessageRef> => {
      const ref = freshRef();
      await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      await store.fail(ref, retryable({ now }));
      return ref;
    };

    it('takes a free mutex: attempts incremented, timeout and mutex set', async () => {
      const subject = fixture.current();
      const now = nowSeconds();
      const ref = await crashedOnce(subject.store, now);
      const result = await subject.store.acquire(ref, {
        now: now + 20,
        timeoutAt: now + 620,
        staleAfter: 610,
      });
      expect(result).toEqual({ acquired: true, attempts: 2 });
      await expectKeys(subject, ref, {
        status: 'incomplete',
        expires: String(now + 100),
        timeout: String(now + 620),
        attempts: '2',
        exceptions: '1',
        delay: String(now + 10),
        mutex: String(now + 20),
      });
    });

    it('refuses a held, fresh mutex and does NOT delete it (unlike Ruby)', async () => {
      const { store } = fixture.current();
      const now = nowSeconds();
      const ref = await crashedOnce(store, now);
      expect(await store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 })).toEqual({
        acquired: true,
        attempts: 2,
      });
      const before = await store.inspect(ref);
      expect(await store.acquire(ref, { now: now + 5, timeoutAt: now + 605, staleAfter: 610 })).toEqual({
        acquired: false,
      });
      // A third competitor is refused too: the mutex survived the refusal.
      expect(await store.acquire(ref, { now: now + 6, timeoutAt: now + 606, staleAfter: 610 })).toEqual({
        acquired: false,
      });
      // Boundary: exactly staleAfter seconds old still counts as held.
      expect(await store.acquire(ref, { now: now + 610, timeoutAt: now + 1210, staleAfter: 610 })).toEqual({
        acquired: false,
      });
      expect(await store.inspect(ref)).toEqual(before);
    });

    it('takes over a stale mutex (older than staleAfter)', async () => {
      const { store } = fixture.current();
      const now = nowSeconds();
      const ref = await crashedOnce(store, now);
      await store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 });
      const later = now + 611;
      expect(await store.acquire(ref, { now: later, timeoutAt: later + 600, staleAfter: 610 })).toEqual({
        acquired: true,
        attempts: 3,
      });
      expect(await store.inspect(ref)).toMatchObject({
        mutex: String(later),
        timeout: String(later + 600),
        attempts: '3',
      });
    });

    it('works on a message whose mutex was released by fail()', async () => {
      const { store } = fixture.current();
      const now = nowSeconds();
      const ref = await crashedOnce(store, now);
      await store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 });
      await store.fail(ref, retryable({ now }));
      expect((await store.inspect(ref)).mutex).toBeUndefined();
      expect(await store.acquire(ref, { now: now + 1, timeoutAt: now + 601, staleAfter: 610 })).toEqual({
        acquired: true,
        attempts: 3,
      });
    });
  });
}
