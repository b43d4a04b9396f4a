import { describe, expect, it } from 'vitest';
import type { MessageRef } from '../../dedup/keys.js';
import { expectKeys, freshRef, nowSeconds, retryable, withStore } from './fixture.js';
import type { DedupStoreFactory, DedupStoreUnderTest } from './types.js';

/** The `status=completed` kept after the last ack (`completedStatusTtl`), alone and with status-key expiry. */
export function completedStatusContract(factory: DedupStoreFactory): void {
  describe('the completed status kept after the last ack (completedStatusTtl 600)', () => {
    const fixture = withStore(factory, 0, 600);

    const expectTtl = async (
      subject: DedupStoreUnderTest,
      ref: MessageRef,
      low: number,
      high: number,
    ): Promise<void> => {
      if (!subject.ttl) return;
      for (const suffix of ['status', 'expires'] as const) {
        const ttl = await subject.ttl(ref, suffix);
        expect(ttl).toBeGreaterThanOrEqual(low);
        expect(ttl).toBeLessThanOrEqual(high);
      }
    };

    it('redundant: the second ack keeps status=completed and expires with the TTL, deletes the rest', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
      await subject.store.complete(ref);
      await subject.store.acknowledged(ref, { redundant: true });
      if (subject.ttl) expect(await subject.ttl(ref, 'status')).toBe(-1);
      const second = await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
      expect(second.first === false && second.state.status).toBe('completed');
      await subject.store.acknowledged(ref, { redundant: true });
      await expectKeys(subject, ref, { status: 'completed', expires: String(now + 86_400) });
      await expectTtl(subject, ref, 590, 600);
    });

    it('a copy coming back later (a broker forgot an ack) sees completed; its ack recreates nothing', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
      await subject.store.complete(ref);
      await subject.store.acknowledged(ref, { redundant: true, acks: 2 });
      await expectKeys(subject, ref, { status: 'completed', expires: String(now + 86_400) });
      const late = await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 700 });
      expect(late).toEqual({
        first: false,
        state: { status: 'completed', delay: undefined, timeout: undefined, attempts: 0, exceptions: 0 },
      });
      await subject.store.acknowledged(ref, { redundant: true });
      await subject.store.acknowledged(ref, { redundant: true });
      await subject.store.acknowledged(ref, { redundant: false });
      await expectKeys(subject, ref, { status: 'completed', expires: String(now + 86_400) });
      await expectTtl(subject, ref, 590, 600);
    });

    it('non-redundant: acknowledged() keeps the completed status too (the simple path is untouched)', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
      await subject.store.fail(ref, retryable({ now }));
      await subject.store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 });
      await subject.store.complete(ref);
      await subject.store.acknowledged(ref, { redundant: false });
      await expectKeys(subject, ref, { status: 'completed', expires: String(now + 86_400) });
      await expectTtl(subject, ref, 590, 600);
      // markCompletedIfNew (interval 0) stays Ruby's: no store access.
      const simple = freshRef();
      expect(await subject.store.markCompletedIfNew(simple)).toBe(true);
      expect(await subject.store.inspect(simple)).toEqual({});
    });

    it("the TTL ends a minute after the message's expires_at; a long expired message keeps nothing", async () => {
      const subject = fixture.current();
      const soon = freshRef();
      const gone = freshRef();
      const now = nowSeconds();
      for (const [ref, expiresAt] of [
        [soon, now + 100],
        [gone, now - 3_600],
      ] as const) {
        await subject.store.claim(ref, { expiresAt, timeoutAt: now + 600 });
        await subject.store.complete(ref);
        await subject.store.acknowledged(ref, { redundant: false });
      }
      await expectKeys(subject, soon, { status: 'completed', expires: String(now + 100) });
      await expectTtl(subject, soon, 150, 161);
      await expectKeys(subject, gone, {});
    });
  });

  describe('completed status and status-key expiry together (interval 300, completedStatusTtl 60)', () => {
    const fixture = withStore(factory, 300, 60);

    it('the longer of the two applies', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
      await subject.store.complete(ref);
      await subject.store.acknowledged(ref, { redundant: true, acks: 2 });
      await expectKeys(subject, ref, { status: 'completed', expires: String(now + 86_400) });
      if (subject.ttl) {
        const ttl = await subject.ttl(ref, 'status');
        expect(ttl).toBeGreaterThan(290);
        expect(ttl).toBeLessThanOrEqual(300);
      }
    });
  });
}
