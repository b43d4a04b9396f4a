import { describe, expect, it } from 'vitest';
import { KEY_SUFFIXES, keyOf } from '../../dedup/keys.js';
import { expectKeys, freshRef, nowSeconds, retryable, withStore } from './fixture.js';
import type { DedupStoreFactory } from './types.js';

/** The first sighting of a message (`claim`) and Ruby's key schema. */
export function claimContract(factory: DedupStoreFactory): void {
  describe('key schema and first sighting', () => {
    const fixture = withStore(factory, 0);

    it('claims a new message: attempts=1, status=incomplete, expires and timeout stored', async () => {
      const subject = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      const result = await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
      expect(result).toEqual({ first: true, attempts: 1 });
      await expectKeys(subject, ref, {
        status: 'incomplete',
        expires: String(now + 86_400),
        timeout: String(now + 600),
        attempts: '1',
      });
      if (subject.ttl) {
        for (const suffix of ['status', 'expires', 'timeout', 'attempts'] as const) {
          expect(await subject.ttl(ref, suffix)).toBe(-1);
        }
        expect(await subject.ttl(ref, 'mutex')).toBe(-2);
      }
    });

    it('uses the key names msgid:<queue>:<uuid>:<suffix>', () => {
      const ref = { queue: 'test', uuid: '1b60cd6e-bf56-48d0-81b0-45187e693d54' };
      expect(KEY_SUFFIXES.map((suffix) => keyOf(ref, suffix))).toEqual([
        'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:status',
        'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:ack_count',
        'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:timeout',
        'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:delay',
        'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:attempts',
        'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:exceptions',
        'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:mutex',
        'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:expires',
      ]);
    });

    it('returns the stored state on a second claim without changing anything', async () => {
      const { store } = fixture.current();
      const ref = freshRef();
      const now = nowSeconds();
      await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
      const second = await store.claim(ref, { expiresAt: now + 999, timeoutAt: now + 999 });
      expect(second).toEqual({
        first: false,
        state: { status: 'incomplete', delay: undefined, timeout: now + 600, attempts: 1, exceptions: 0 },
      });
      expect(await store.inspect(ref)).toEqual({
        status: 'incomplete',
        expires: String(now + 100),
        timeout: String(now + 600),
        attempts: '1',
      });
    });

    it('returns undefined/0 for missing keys and an empty inspect for unknown messages', async () => {
      const { store } = fixture.current();
      expect(await store.inspect(freshRef())).toEqual({});
    });

    it('keeps messages independent: other queue, other uuid', async () => {
      const { store } = fixture.current();
      const a = freshRef();
      const sameUuidOtherQueue = { queue: `${a.queue}-other`, uuid: a.uuid };
      const otherUuidSameQueue = freshRef(a.queue);
      const now = nowSeconds();
      const params = { expiresAt: now + 100, timeoutAt: now + 600 };
      expect(await store.claim(a, params)).toEqual({ first: true, attempts: 1 });
      expect(await store.claim(sameUuidOtherQueue, params)).toEqual({ first: true, attempts: 1 });
      expect(await store.claim(otherUuidSameQueue, params)).toEqual({ first: true, attempts: 1 });
      await store.complete(a);
      await store.acknowledged(a, { redundant: false });
      expect(await store.inspect(a)).toEqual({});
      for (const other of [sameUuidOtherQueue, otherUuidSameQueue]) {
        expect(await store.inspect(other)).toEqual({
          status: 'incomplete',
          expires: String(now + 100),
          timeout: String(now + 600),
          attempts: '1',
        });
      }
      const fail = await store.fail(sameUuidOtherQueue, retryable({ now }));
      expect(fail.outcome).toBe('HandlerCrash');
      expect((await store.inspect(otherUuidSameQueue)).exceptions).toBeUndefined();
    });
  });
}
