import { describe, expect, it } from 'vitest';
import { expectKeys, freshRef, nowSeconds, retryable, withStore } from './fixture.js';
import type { DedupStoreFactory } from './types.js';

/** Completion and acknowledgement counting (`complete`, `acknowledged`). */
export function completionContract(factory: DedupStoreFactory): void {
  describe('completion and acknowledgement', () => {
    const fixture = withStore(factory, 0);

    it('complete() sets status=completed and timeout=0, leaving the other keys', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      await subject.store.complete(ref);
      await expectKeys(subject, ref, {
        status: 'completed',
        expires: String(now + 100),
        timeout: '0',
        attempts: '1',
      });
      const again = await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      expect(again).toEqual({
        first: false,
        state: { status: 'completed', delay: undefined, timeout: 0, attempts: 1, exceptions: 0 },
      });
    });

    it('non-redundant: acknowledged() deletes every key', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      await subject.store.fail(ref, retryable({ now }));
      await subject.store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 });
      await subject.store.complete(ref);
      expect(Object.keys(await subject.store.inspect(ref)).sort()).toEqual(
        ['attempts', 'delay', 'exceptions', 'expires', 'mutex', 'status', 'timeout'].sort(),
      );
      await subject.store.acknowledged(ref, { redundant: false });
      await expectKeys(subject, ref, {});
    });

    it('redundant: the first ack counts (ack_count=1, keys kept), the second deletes every key', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      await subject.store.complete(ref);
      await subject.store.acknowledged(ref, { redundant: true });
      await expectKeys(subject, ref, {
        status: 'completed',
        expires: String(now + 100),
        timeout: '0',
        attempts: '1',
        ack_count: '1',
      });
      // The second copy: seen before, completed, acked.
      const second = await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 700 });
      expect(second.first).toBe(false);
      if (!second.first) expect(second.state.status).toBe('completed');
      await subject.store.acknowledged(ref, { redundant: true });
      await expectKeys(subject, ref, {});
    });

    it('a leftover attempts key without status: still a first sighting, counting on from it (Ruby INCR)', async () => {
      const subject = fixture.current();
      if (!subject.seed) return; // needs raw writes
      const ref = freshRef();
      const now = nowSeconds();
      await subject.seed(ref, { attempts: '4' });
      expect(await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 })).toEqual({
        first: true,
        attempts: 5,
      });
      await expectKeys(subject, ref, {
        status: 'incomplete',
        expires: String(now + 100),
        timeout: String(now + 600),
        attempts: '5',
      });
    });

    it('redundant: both copies acked by one subscriber are counted in one call (acks: 2)', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      await subject.store.complete(ref);
      await subject.store.acknowledged(ref, { redundant: true, acks: 2 });
      await expectKeys(subject, ref, {});
    });

    it('acks must be a positive integer', async () => {
      const { store } = fixture.current();
      const ref = freshRef();
      for (const acks of [0, -1, 1.5, Number.NaN]) {
        await expect(store.acknowledged(ref, { redundant: true, acks })).rejects.toThrow(TypeError);
      }
      expect(await store.inspect(ref)).toEqual({});
    });

    it('redundant: a count already at 2 or more (retried increments) deletes at the next ack', async () => {
      const subject = fixture.current();
      if (!subject.seed) return; // needs raw writes: the interface cannot push ack_count past 2
      const ref = freshRef();
      const now = nowSeconds();
      await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      await subject.store.complete(ref);
      await subject.seed(ref, { ack_count: '5' });
      await subject.store.acknowledged(ref, { redundant: true });
      await expectKeys(subject, ref, {});
    });

    it('an ack of a message without keys (cleaned up, or never claimed) writes nothing', async () => {
      const { store } = fixture.current();
      const ref = freshRef();
      await store.acknowledged(ref, { redundant: true });
      expect(await store.inspect(ref)).toEqual({});
      await store.acknowledged(ref, { redundant: true, acks: 2 });
      await store.acknowledged(ref, { redundant: false });
      expect(await store.inspect(ref)).toEqual({});
    });
  });
}

/** Completion after the keys were deleted (garbage collection while the handler ran). */
export function lateCompletionContract(factory: DedupStoreFactory): void {
  describe('completion after the keys were deleted (garbage collection)', () => {
    const fixture = withStore(factory, 0);

    it('complete() with expiresAt writes expires too, so recreated keys stay collectable', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      await subject.store.complete(ref, { expiresAt: now + 100 });
      await expectKeys(subject, ref, {
        status: 'completed',
        expires: String(now + 100),
        timeout: '0',
        attempts: '1',
      });
      // The keys deleted while the handler ran (gc): the late completion brings expires back with status.
      const late = freshRef();
      await subject.store.complete(late, { expiresAt: now + 100 });
      await expectKeys(subject, late, { status: 'completed', expires: String(now + 100), timeout: '0' });
      if (subject.ttl) expect(await subject.ttl(late, 'expires')).toBe(-1);
    });

    it('fail() with expiresAt writes expires with a final outcome', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      const result = await subject.store.fail(
        ref,
        retryable({ now, attemptsLimit: 1, exceptionsLimit: 0, expiresAt: now + 100 }),
      );
      expect(result.outcome).toBe('ExceptionsLimitReached');
      await expectKeys(subject, ref, {
        status: 'completed',
        expires: String(now + 100),
        timeout: '0',
        exceptions: '1',
      });
    });
  });
}
