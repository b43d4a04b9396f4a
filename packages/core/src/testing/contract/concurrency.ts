import { describe, expect, it } from 'vitest';
import { freshRef, nowSeconds, retryable, withStore } from './fixture.js';
import type { DedupStoreFactory } from './types.js';

/** Atomicity: concurrent calls on one message, and many messages at once. */
export function concurrencyContract(factory: DedupStoreFactory): void {
  describe('concurrency', () => {
    const fixture = withStore(factory, 0);
    const N = 25;

    it(`${N} concurrent claims of one message: exactly one first sighting`, async () => {
      const { store } = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      const results = await Promise.all(
        Array.from({ length: N }, (_, i) =>
          store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 + i }),
        ),
      );
      const firsts = results.filter((result) => result.first);
      expect(firsts).toEqual([{ first: true, attempts: 1 }]);
      for (const result of results) {
        if (!result.first) expect(result.state).toMatchObject({ status: 'incomplete', attempts: 1 });
      }
      expect((await store.inspect(ref)).attempts).toBe('1');
    });

    it(`${N} concurrent acquires of one message: exactly one acquired`, async () => {
      const { store } = fixture.current();
      const now = nowSeconds();
      const ref = freshRef();
      await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      await store.fail(ref, retryable({ now }));
      const results = await Promise.all(
        Array.from({ length: N }, () =>
          store.acquire(ref, { now: now + 11, timeoutAt: now + 611, staleAfter: 610 }),
        ),
      );
      expect(results.filter((result) => result.acquired)).toEqual([{ acquired: true, attempts: 2 }]);
      expect((await store.inspect(ref)).attempts).toBe('2');
    });

    it(`${N} messages handled concurrently do not interfere`, async () => {
      const { store } = fixture.current();
      const now = nowSeconds();
      const refs = Array.from({ length: N }, () => freshRef());
      const outcomes = await Promise.all(
        refs.map(async (ref, i) => {
          const claim = await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
          if (i % 2 === 0) {
            await store.complete(ref);
            await store.acknowledged(ref, { redundant: false });
            return claim;
          }
          await store.fail(ref, retryable({ now }));
          return claim;
        }),
      );
      expect(outcomes.every((claim) => claim.first)).toBe(true);
      for (const [i, ref] of refs.entries()) {
        const keys = await store.inspect(ref);
        if (i % 2 === 0) expect(keys).toEqual({});
        else expect(keys).toMatchObject({ status: 'incomplete', exceptions: '1', delay: String(now + 10) });
      }
    });
  });
}
