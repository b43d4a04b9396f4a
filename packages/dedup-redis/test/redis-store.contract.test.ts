import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { NoRedisMasterError, type MessageRef } from '@beetle/core';
import { allKeysOf, keyOf, type KeySuffix } from '@beetle/core/kit';
import { describeDedupStoreContract } from '@beetle/core/testing';
import { RedisDedupStore } from '../src/index.js';
import { nowSeconds, rawClient, requireSharedRedis, TEST_REDIS } from './helpers.js';

const freshRef = (queue = `rt-${randomUUID().slice(0, 8)}`): MessageRef => ({ queue, uuid: randomUUID() });

describe('RedisDedupStore on a real Redis', () => {
  beforeAll(requireSharedRedis);

  let raw: Redis;

  beforeAll(() => {
    raw = rawClient();
  });

  afterAll(async () => {
    await raw.quit();
  });

  const rawKeys = async (ref: MessageRef): Promise<Record<string, string>> => {
    const keys = allKeysOf(ref);
    const values = await raw.mget(keys);
    const result: Record<string, string> = {};
    keys.forEach((key, i) => {
      const value = values[i];
      if (typeof value === 'string') result[key] = value;
    });
    // Nothing else under the message's prefix.
    const others = await raw.keys(`msgid:${ref.queue}:${ref.uuid}:*`);
    expect(others.sort()).toEqual(Object.keys(result).sort());
    return result;
  };

  describeDedupStoreContract('RedisDedupStore', ({ statusKeyExpiryInterval, completedStatusTtl }) => {
    const store = new RedisDedupStore({
      redisServer: TEST_REDIS,
      statusKeyExpiryInterval,
      completedStatusTtl,
      failoverTimeout: 5,
    });
    return {
      store,
      rawKeys,
      ttl: (ref: MessageRef, suffix: KeySuffix) => raw.ttl(keyOf(ref, suffix)),
      storeClock: async () => Number((await raw.time())[0]),
      seed: async (ref: MessageRef, values: Partial<Record<KeySuffix, string>>) => {
        for (const [suffix, value] of Object.entries(values))
          await raw.set(keyOf(ref, suffix as KeySuffix), value);
      },
    };
  });

  describe('Ruby interop (reference §12)', () => {
    /** Ruby's behaviour: no completed status kept (completedStatusTtl 0). */
    let store: RedisDedupStore;
    let expiring: RedisDedupStore;
    /** The defaults (completedStatusTtl 600). */
    let defaults: RedisDedupStore;

    beforeEach(() => {
      store = new RedisDedupStore({ redisServer: TEST_REDIS, completedStatusTtl: 0 });
      expiring = new RedisDedupStore({
        redisServer: TEST_REDIS,
        statusKeyExpiryInterval: 300,
        completedStatusTtl: 0,
      });
      defaults = new RedisDedupStore({ redisServer: TEST_REDIS });
    });

    afterEach(async () => {
      await store.close();
      await expiring.close();
      await defaults.close();
    });

    it('at the defaults, a Ruby consumer reads the kept status as completed and acks its copy', async () => {
      const ref = freshRef('test');
      const now = nowSeconds();
      const expiresAt = now + 86_400;
      await defaults.claim(ref, { expiresAt, timeoutAt: now + 600 });
      await defaults.complete(ref);
      await defaults.acknowledged(ref, { redundant: true, acks: 2 });
      expect(await rawKeys(ref)).toEqual({
        [keyOf(ref, 'status')]: 'completed',
        [keyOf(ref, 'expires')]: String(expiresAt),
      });
      // A copy a broker forgot the ack of reaches a Ruby consumer (reference §4.4 steps 5, 6a, ack!): its
      // MSETNX fails, its MGET reads completed, so it acks without running the handler and INCRs ack_count.
      expect(
        await raw.msetnx(
          keyOf(ref, 'status'),
          'incomplete',
          keyOf(ref, 'expires'),
          String(expiresAt),
          keyOf(ref, 'timeout'),
          String(now + 600),
        ),
      ).toBe(0);
      expect((await raw.mget(keyOf(ref, 'status'), keyOf(ref, 'delay')))[0]).toBe('completed');
      expect(await raw.incr(keyOf(ref, 'ack_count'))).toBe(1);
      // Ours, for the same copy, writes nothing: the stray ack_count is Ruby's (the garbage collector takes it
      // as an orphan once expires is gone).
      await defaults.acknowledged(ref, { redundant: true });
      expect(await raw.get(keyOf(ref, 'ack_count'))).toBe('1');
      expect(await raw.ttl(keyOf(ref, 'status'))).toBeGreaterThan(590);
    });

    it('uses database 4 by default', async () => {
      const ref = freshRef();
      await store.claim(ref, { expiresAt: 2_000_000_000, timeoutAt: 1_000_000_600 });
      expect(await raw.get(keyOf(ref, 'status'))).toBe('incomplete');
      const db0 = rawClient(TEST_REDIS, 0);
      try {
        expect(await db0.exists(...allKeysOf(ref))).toBe(0);
      } finally {
        await db0.quit();
      }
    });

    it('writes what Ruby writes for a redundant message handled twice (0 keys left)', async () => {
      const ref = freshRef('test');
      const now = nowSeconds();
      const expiresAt = now + 86_400;
      const prefix = `msgid:test:${ref.uuid}`;
      expect(await store.claim(ref, { expiresAt, timeoutAt: now + 600 })).toEqual({
        first: true,
        attempts: 1,
      });
      expect(await rawKeys(ref)).toEqual({
        [`${prefix}:status`]: 'incomplete',
        [`${prefix}:expires`]: String(expiresAt),
        [`${prefix}:timeout`]: String(now + 600),
        [`${prefix}:attempts`]: '1',
      });
      await store.complete(ref);
      await store.acknowledged(ref, { redundant: true });
      expect(await rawKeys(ref)).toEqual({
        [`${prefix}:status`]: 'completed',
        [`${prefix}:expires`]: String(expiresAt),
        [`${prefix}:timeout`]: '0',
        [`${prefix}:attempts`]: '1',
        [`${prefix}:ack_count`]: '1',
      });
      for (const key of Object.keys(await rawKeys(ref))) expect(await raw.ttl(key)).toBe(-1);
      const second = await store.claim(ref, { expiresAt, timeoutAt: now + 601 });
      expect(second).toEqual({
        first: false,
        state: { status: 'completed', delay: undefined, timeout: 0, attempts: 1, exceptions: 0 },
      });
      await store.acknowledged(ref, { redundant: true });
      expect(await raw.exists(...allKeysOf(ref))).toBe(0);
    });

    it('with redis_status_key_expiry_interval 300 leaves only status, with TTL 300 (1 key left)', async () => {
      const ref = freshRef('test');
      const now = nowSeconds();
      await expiring.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
      await expiring.complete(ref);
      await expiring.acknowledged(ref, { redundant: true });
      await expiring.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
      await expiring.acknowledged(ref, { redundant: true });
      expect(await rawKeys(ref)).toEqual({ [keyOf(ref, 'status')]: 'completed' });
      const ttl = await raw.ttl(keyOf(ref, 'status'));
      expect(ttl).toBeGreaterThan(295);
      expect(ttl).toBeLessThanOrEqual(300);
    });

    it('simple path with interval 300: SET status completed EX 300 NX, shared with Ruby', async () => {
      const ours = freshRef('test');
      expect(await expiring.markCompletedIfNew(ours)).toBe(true);
      expect(await raw.get(keyOf(ours, 'status'))).toBe('completed');
      expect(await raw.ttl(keyOf(ours, 'status'))).toBeGreaterThan(295);
      // A Ruby consumer receiving the same message now gets nil and skips the handler.
      expect(await raw.set(keyOf(ours, 'status'), 'completed', 'EX', 300, 'NX')).toBeNull();

      const rubys = freshRef('test');
      expect(await raw.set(keyOf(rubys, 'status'), 'completed', 'EX', 300, 'NX')).toBe('OK');
      expect(await expiring.markCompletedIfNew(rubys)).toBe(false);
    });

    it('leaves 5 keys when the second copy of a redundant message never arrives', async () => {
      const ref = freshRef('test');
      const now = nowSeconds();
      await store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
      await store.complete(ref);
      await store.acknowledged(ref, { redundant: true });
      const keys = Object.keys(await rawKeys(ref)).map((key) => key.split(':').at(-1));
      expect(keys.sort()).toEqual(['ack_count', 'attempts', 'expires', 'status', 'timeout']);
    });

    it('reads a message a Ruby consumer is running (MSETNX + INCR attempts)', async () => {
      const ref = freshRef('test');
      const now = nowSeconds();
      expect(
        await raw.msetnx(
          keyOf(ref, 'status'),
          'incomplete',
          keyOf(ref, 'expires'),
          String(now + 86_400),
          keyOf(ref, 'timeout'),
          String(now + 600),
        ),
      ).toBe(1);
      expect(await raw.incr(keyOf(ref, 'attempts'))).toBe(1);
      expect(await store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 601 })).toEqual({
        first: false,
        state: { status: 'incomplete', delay: undefined, timeout: now + 600, attempts: 1, exceptions: 0 },
      });
      // Ruby completes and acks its copy; ours is the second ack.
      await raw.mset(keyOf(ref, 'status'), 'completed', keyOf(ref, 'timeout'), '0');
      expect(await raw.incr(keyOf(ref, 'ack_count'))).toBe(1);
      const state = await store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 601 });
      expect(state.first === false && state.state.status).toBe('completed');
      await store.acknowledged(ref, { redundant: true });
      expect(await raw.exists(...allKeysOf(ref))).toBe(0);
    });

    it("reads a Ruby retry schedule and respects Ruby's mutex", async () => {
      const ref = freshRef('test');
      const now = nowSeconds();
      // Ruby: first run crashed (handler_failed!: INCR exceptions, DEL mutex, SET timeout 0, SET delay).
      await raw.msetnx(keyOf(ref, 'status'), 'incomplete', keyOf(ref, 'expires'), String(now + 100));
      await raw.set(keyOf(ref, 'timeout'), String(now + 600));
      await raw.incr(keyOf(ref, 'attempts'));
      await raw.incr(keyOf(ref, 'exceptions'));
      await raw.del(keyOf(ref, 'mutex'));
      await raw.set(keyOf(ref, 'timeout'), '0');
      await raw.set(keyOf(ref, 'delay'), String(now + 10));
      expect(await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 })).toEqual({
        first: false,
        state: { status: 'incomplete', delay: now + 10, timeout: 0, attempts: 1, exceptions: 1 },
      });
      // Ruby's retry holds the mutex (SETNX mutex now): we are refused and leave it alone.
      expect(await raw.setnx(keyOf(ref, 'mutex'), String(now + 10))).toBe(1);
      expect(await store.acquire(ref, { now: now + 12, timeoutAt: now + 612, staleAfter: 610 })).toEqual({
        acquired: false,
      });
      expect(await raw.get(keyOf(ref, 'mutex'))).toBe(String(now + 10));
      // Ruby's retry crashes again; ours takes the free mutex.
      await raw.incr(keyOf(ref, 'exceptions'));
      await raw.del(keyOf(ref, 'mutex'));
      expect(await store.acquire(ref, { now: now + 30, timeoutAt: now + 630, staleAfter: 610 })).toEqual({
        acquired: true,
        attempts: 2,
      });
      // Our keys are what Ruby's next MGET/SETNX expect.
      expect(await raw.mget(keyOf(ref, 'status'), keyOf(ref, 'timeout'), keyOf(ref, 'mutex'))).toEqual([
        'incomplete',
        String(now + 630),
        String(now + 30),
      ]);
      expect(await raw.setnx(keyOf(ref, 'mutex'), String(now + 31))).toBe(0);
    });

    it('a failure writes exceptions, timeout 0 and delay as Ruby does (worked example)', async () => {
      const ref = freshRef('test');
      await store.claim(ref, { expiresAt: nowSeconds() + 100, timeoutAt: 20 });
      await store.fail(ref, {
        now: 10,
        attemptsLimit: 2,
        exceptionsLimit: 1,
        accepted: true,
        delay: 42,
        maxDelay: undefined,
      });
      expect(await raw.mget(keyOf(ref, 'exceptions'), keyOf(ref, 'timeout'), keyOf(ref, 'delay'))).toEqual([
        '1',
        '0',
        '52',
      ]);
      expect(await raw.exists(keyOf(ref, 'mutex'))).toBe(0);
    });

    it('parses counters like Ruby to_i', async () => {
      const ref = freshRef('test');
      await raw.mset(
        keyOf(ref, 'status'),
        'incomplete',
        keyOf(ref, 'attempts'),
        '3',
        keyOf(ref, 'delay'),
        '17x',
      );
      const state = await store.claim(ref, { expiresAt: 1, timeoutAt: 1 });
      expect(state).toEqual({
        first: false,
        state: { status: 'incomplete', delay: 17, timeout: undefined, attempts: 3, exceptions: 0 },
      });
      await raw.set(keyOf(ref, 'mutex'), '100abc');
      expect(await store.acquire(ref, { now: 105, timeoutAt: 700, staleAfter: 10 })).toEqual({
        acquired: false,
      });
      expect(await store.acquire(ref, { now: 111, timeoutAt: 700, staleAfter: 10 })).toEqual({
        acquired: true,
        attempts: 4,
      });
    });
  });

  describe('Redis specifics', () => {
    it('is atomic across connections: concurrent claims and acquires from 4 stores', async () => {
      const stores = Array.from({ length: 4 }, () => new RedisDedupStore({ redisServer: TEST_REDIS }));
      try {
        const ref = freshRef();
        const now = nowSeconds();
        const claims = await Promise.all(
          Array.from({ length: 40 }, (_, i) =>
            stores[i % 4]!.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 }),
          ),
        );
        expect(claims.filter((claim) => claim.first)).toHaveLength(1);
        await stores[0]!.fail(ref, {
          now,
          attemptsLimit: 5,
          exceptionsLimit: 4,
          accepted: true,
          delay: 1,
          maxDelay: undefined,
        });
        const acquires = await Promise.all(
          Array.from({ length: 40 }, (_, i) =>
            stores[i % 4]!.acquire(ref, { now: now + 2, timeoutAt: now + 602, staleAfter: 610 }),
          ),
        );
        expect(acquires.filter((result) => result.acquired)).toEqual([{ acquired: true, attempts: 2 }]);
      } finally {
        await Promise.all(stores.map((store) => store.close()));
      }
    });

    it('rejects at once on a script error (WRONGTYPE), without retrying', async () => {
      const store = new RedisDedupStore({ redisServer: TEST_REDIS, failoverTimeout: 30 });
      try {
        const ref = freshRef();
        await raw.hset(keyOf(ref, 'attempts'), 'not', 'a string');
        const started = Date.now();
        const error = await store.claim(ref, { expiresAt: 1, timeoutAt: 1 }).then(
          () => undefined,
          (err: unknown) => err,
        );
        expect(Date.now() - started).toBeLessThan(1000);
        expect(error).toBeInstanceOf(Error);
        expect(error).not.toBeInstanceOf(NoRedisMasterError);
        expect(String(error)).toMatch(/WRONGTYPE|wrong kind/);
        await raw.del(...allKeysOf(ref));
      } finally {
        await store.close();
      }
    });

    it('markCompletedIfNew with interval 0 never connects', async () => {
      const store = new RedisDedupStore({ redisServer: '127.0.0.1:1', failoverTimeout: 1 });
      expect(await store.markCompletedIfNew(freshRef())).toBe(true);
      expect(store.currentServer).toBeUndefined();
      await store.close();
    });

    it('scans keys and expiries of a queue, and deletes the keys of a message', async () => {
      const store = new RedisDedupStore({ redisServer: TEST_REDIS });
      try {
        const queue = `gc-${randomUUID().slice(0, 8)}`;
        const refs = Array.from({ length: 30 }, () => freshRef(queue));
        for (const [i, ref] of refs.entries()) await store.claim(ref, { expiresAt: 1000 + i, timeoutAt: 1 });
        // A queue whose name merely starts with the same prefix is listed too (it is a prefix).
        const other = freshRef(`${queue}x`);
        await store.claim(other, { expiresAt: 5, timeoutAt: 1 });

        const keys = new Set<string>();
        for await (const key of store.scanKeys({ match: `msgid:${queue}:*`, count: 7 })) keys.add(key);
        expect(keys.size).toBe(30 * 4); // status, expires, timeout, attempts

        const expiries = new Map<string, number>();
        for await (const entry of store.scanExpiries({ queuePrefix: queue, count: 7 })) {
          expiries.set(entry.msgId, entry.expiresAt);
          expect(entry.msgId).toBe(`msgid:${entry.queue}:${entry.uuid}`);
        }
        expect(expiries.size).toBe(31);
        refs.forEach((ref, i) => expect(expiries.get(`msgid:${queue}:${ref.uuid}`)).toBe(1000 + i));
        expect(expiries.get(`msgid:${other.queue}:${other.uuid}`)).toBe(5);

        expect(await store.deleteMessageKeys(`msgid:${queue}:${refs[0]!.uuid}`)).toBe(4);
        expect(await store.inspect(refs[0]!)).toEqual({});
        expect(await store.deleteMessageKeys(`msgid:${queue}:${refs[0]!.uuid}`)).toBe(0);
        await expect(store.deleteMessageKeys('not-a-msgid')).rejects.toThrow(TypeError);
        await expect(store.deleteMessageKeys('not-a-msgid')).rejects.toMatchObject({
          reason: 'invalid-argument',
        });
        for (const ref of [...refs, other]) await raw.del(...allKeysOf(ref));
      } finally {
        await store.close();
      }
    });

    it('close() makes later calls reject with ClosedError', async () => {
      const store = new RedisDedupStore({ redisServer: TEST_REDIS });
      await store.ping();
      await store.close();
      await expect(store.inspect(freshRef())).rejects.toMatchObject({ reason: 'closed' });
    });
  });
});
