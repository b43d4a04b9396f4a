import { randomUUID } from 'node:crypto';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { MessageRef } from '@beetle/core';
import { RedisDedupStore } from '../src/index.js';
import { nowSeconds, requireSharedRedis, sleep, TEST_REDIS } from './helpers.js';

/** The store's private parts these tests look at. */
interface Internals {
  connection: {
    client?: { redis: { stream: Record<'_write' | '_writev', (...args: unknown[]) => void> } };
    /** The calls waiting for their replies (a DeadlineSweeper), and its timer while it runs. */
    waiting: { size: number; timer?: NodeJS.Timeout };
  };
}

const internals = (store: RedisDedupStore) => {
  const { connection } = store as unknown as Internals;
  return {
    client: connection.client?.redis,
    waiting: connection.waiting,
    get sweeper(): NodeJS.Timeout | undefined {
      return connection.waiting.timer;
    },
  };
};

const happyPath = async (store: RedisDedupStore, ref: MessageRef): Promise<void> => {
  const now = nowSeconds();
  expect((await store.claim(ref, { expiresAt: now + 60, timeoutAt: now + 600 })).first).toBe(true);
  await store.complete(ref);
  await store.acknowledged(ref, { redundant: true });
  expect((await store.claim(ref, { expiresAt: now + 60, timeoutAt: now + 600 })).first).toBe(false);
  await store.acknowledged(ref, { redundant: true });
};

describe('the hot path of RedisDedupStore', () => {
  beforeAll(requireSharedRedis);

  let store: RedisDedupStore | undefined;

  afterEach(async () => {
    vi.restoreAllMocks();
    await store?.close();
    store = undefined;
  });

  it('creates no timer per call (one sweeper per connection, stopped when idle) and writes each tick at once', async () => {
    store = new RedisDedupStore({ redisServer: TEST_REDIS, readTimeout: 0.2 });
    await store.ping();
    await sleep(200); // the sweeper of the ping stops
    // Count the system calls writing commands: one _write/_writev call each.
    const stream = internals(store).client!.stream;
    let writes = 0;
    for (const method of ['_write', '_writev'] as const) {
      const original = stream[method];
      stream[method] = function (this: unknown, ...args: unknown[]) {
        writes++;
        return original.apply(this, args);
      };
    }
    const timeouts = vi.spyOn(globalThis, 'setTimeout');
    const intervals = vi.spyOn(globalThis, 'setInterval');
    const refs = Array.from({ length: 200 }, () => ({ queue: 'hot-path-test', uuid: randomUUID() }));
    await Promise.all(refs.map((ref) => happyPath(store!, ref)));
    expect(timeouts).not.toHaveBeenCalled();
    // One interval while calls wait; it stops at a sweep that finds none waiting, which can happen between two
    // steps (e.g. while the cleanups wait for the ack flush), and starts again with the next call: a handful of
    // intervals for 1000 calls, never one per call.
    expect(intervals.mock.calls.length).toBeGreaterThanOrEqual(1);
    expect(intervals.mock.calls.length).toBeLessThanOrEqual(5);
    expect(internals(store).waiting.size).toBe(0);
    // 1000 commands; those of one tick are written together (about one write per step of the 200 messages).
    expect(writes).toBeGreaterThan(0);
    expect(writes).toBeLessThan(100);
    await sleep(200);
    expect(internals(store).sweeper).toBeUndefined();
    // Each message's completed status is kept (with expires) for copies coming back later.
    for (const ref of refs)
      expect(Object.keys(await store.inspect(ref)).sort()).toEqual(['expires', 'status']);
  });
});
