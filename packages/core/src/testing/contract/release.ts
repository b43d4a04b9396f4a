import { describe, expect, it } from 'vitest';
import { expectKeys, freshRef, nowSeconds, retryable, withStore } from './fixture.js';
import type { DedupStoreFactory } from './types.js';

/** An abandoned run given back (`release`, optional). */
export function releaseContract(factory: DedupStoreFactory): void {
  describe('release() of an abandoned run', () => {
    const fixture = withStore(factory, 0);

    it('uncounts the attempt and clears timeout and mutex, so the redelivery runs at once', async () => {
      const subject = fixture.current();
      const { store } = subject;
      if (!store.release) return; // optional
      const ref = freshRef();
      const now = nowSeconds();
      await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      expect(await store.release(ref, { attempts: 1 })).toBe(true);
      await expectKeys(subject, ref, {
        status: 'incomplete',
        expires: String(now + 100),
        timeout: '0',
        attempts: '0',
      });
      // The redelivery: seen before, not running, no attempt used: it takes the run at once.
      const state = await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      expect(state).toEqual({
        first: false,
        state: { status: 'incomplete', delay: undefined, timeout: 0, attempts: 0, exceptions: 0 },
      });
      expect(await store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 })).toEqual({
        acquired: true,
        attempts: 1,
      });
      // A retry's run releases its mutex too.
      expect(await store.release(ref, { attempts: 1 })).toBe(true);
      expect(await store.inspect(ref)).toMatchObject({ attempts: '0', timeout: '0' });
      expect((await store.inspect(ref)).mutex).toBeUndefined();
    });

    it('leaves the message alone once it moved on (another run, or completed)', async () => {
      const { store } = fixture.current();
      if (!store.release) return;
      const now = nowSeconds();
      const taken = freshRef();
      await store.claim(taken, { expiresAt: now + 100, timeoutAt: now + 600 });
      await store.fail(taken, retryable({ now }));
      await store.acquire(taken, { now, timeoutAt: now + 600, staleAfter: 610 });
      const before = await store.inspect(taken);
      expect(await store.release(taken, { attempts: 1 })).toBe(false); // attempt 2 runs now
      expect(await store.inspect(taken)).toEqual(before);

      const done = freshRef();
      await store.claim(done, { expiresAt: now + 100, timeoutAt: now + 600 });
      await store.complete(done);
      expect(await store.release(done, { attempts: 1 })).toBe(false);
      expect(await store.inspect(done)).toMatchObject({ status: 'completed', attempts: '1' });

      const unknown = freshRef();
      expect(await store.release(unknown, { attempts: 1 })).toBe(false);
      expect(await store.inspect(unknown)).toEqual({});
    });
  });
}
