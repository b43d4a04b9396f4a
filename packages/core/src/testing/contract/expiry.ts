import { describe, expect, it } from 'vitest';
import { expectKeys, freshRef, nowSeconds, retryable, sleep, withStore } from './fixture.js';
import type { DedupStoreFactory } from './types.js';

/** The status key kept after the last ack (`redis_status_key_expiry_interval`), and `markCompletedIfNew`. */
export function statusExpiryContract(factory: DedupStoreFactory): void {
  describe('status-key expiry disabled (interval 0)', () => {
    const fixture = withStore(factory, 0);

    it('markCompletedIfNew() always allows the run and writes nothing', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      expect(await subject.store.markCompletedIfNew(ref)).toBe(true);
      expect(await subject.store.markCompletedIfNew(ref)).toBe(true);
      expect(await subject.store.markCompletedIfNew(ref)).toBe(true);
      await expectKeys(subject, ref, {});
      const now = nowSeconds();
      expect(await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 })).toEqual({
        first: true,
        attempts: 1,
      });
    });
  });

  describe('status-key expiry (interval 300)', () => {
    const fixture = withStore(factory, 300);

    it('markCompletedIfNew() allows the first run only and keeps status=completed with the TTL', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      expect(await subject.store.markCompletedIfNew(ref)).toBe(true);
      expect(await subject.store.markCompletedIfNew(ref)).toBe(false);
      expect(await subject.store.markCompletedIfNew(ref)).toBe(false);
      await expectKeys(subject, ref, { status: 'completed' });
      if (subject.ttl) {
        const ttl = await subject.ttl(ref, 'status');
        expect(ttl).toBeGreaterThan(0);
        expect(ttl).toBeLessThanOrEqual(300);
      }
      // Another queue deduplicates independently.
      expect(await subject.store.markCompletedIfNew({ queue: `${ref.queue}-other`, uuid: ref.uuid })).toBe(
        true,
      );
    });

    it('non-redundant: acknowledged() keeps only status=completed, with the TTL', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      await subject.store.fail(ref, retryable({ now }));
      await subject.store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 });
      await subject.store.complete(ref);
      await subject.store.acknowledged(ref, { redundant: false });
      await expectKeys(subject, ref, { status: 'completed' });
      if (subject.ttl) {
        const ttl = await subject.ttl(ref, 'status');
        expect(ttl).toBeGreaterThan(0);
        expect(ttl).toBeLessThanOrEqual(300);
      }
      // A late redelivery sees the completed status and does not run the handler again.
      const late = await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      expect(late).toEqual({
        first: false,
        state: { status: 'completed', delay: undefined, timeout: undefined, attempts: 0, exceptions: 0 },
      });
      expect(await subject.store.markCompletedIfNew(ref)).toBe(false);
    });

    it('redundant: the status key gets its TTL only at the second ack', async () => {
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
      if (subject.ttl) expect(await subject.ttl(ref, 'status')).toBe(-1);
      await subject.store.acknowledged(ref, { redundant: true });
      await expectKeys(subject, ref, { status: 'completed' });
      if (subject.ttl) {
        const ttl = await subject.ttl(ref, 'status');
        expect(ttl).toBeGreaterThan(0);
        expect(ttl).toBeLessThanOrEqual(300);
      }
    });
  });

  describe('status-key expiry (interval 1)', () => {
    const fixture = withStore(factory, 1);

    it('the kept status key disappears after the interval', async () => {
      const { store } = fixture.current();
      const simple = freshRef();
      const full = freshRef();
      const now = nowSeconds();
      expect(await store.markCompletedIfNew(simple)).toBe(true);
      await store.claim(full, { expiresAt: now + 100, timeoutAt: now + 600 });
      await store.complete(full);
      await store.acknowledged(full, { redundant: false });
      expect(await store.inspect(simple)).toEqual({ status: 'completed' });
      expect(await store.inspect(full)).toEqual({ status: 'completed' });
      await sleep(1_300);
      expect(await store.inspect(simple)).toEqual({});
      expect(await store.inspect(full)).toEqual({});
      expect(await store.markCompletedIfNew(simple)).toBe(true);
    });
  });
}
