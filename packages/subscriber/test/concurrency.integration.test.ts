import {
  ConfigurationError,
  MemoryDedupStore,
  Topology,
  createConfig,
  type BeetleConfigInput,
} from '@beetle/core';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Subscriber, type HandlerOptions } from '@beetle/subscriber';
import { afterEach, describe, expect, it } from 'vitest';
import { deleteQueues, publish, redisServer, servers, uid, waitFor } from './integration-helpers.js';

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/**
 * Queues `count` redundant messages on both brokers, then consumes them with `settings` (nothing else set);
 * returns the most handler runs seen at once.
 */
async function mostAtOnce(
  settings: BeetleConfigInput,
  options: HandlerOptions,
  count: number,
): Promise<{ most: number; handled: number }> {
  const queue = `beetle-concurrency-${uid()}`;
  const store = new RedisDedupStore({ redisServer });
  const topology = new Topology().registerQueue(queue);
  const subscriber = new Subscriber({
    config: createConfig({ servers, ...settings }),
    topology,
    store,
  });
  cleanups.push(async () => {
    await subscriber.stop({ timeout: 2 });
    await store.close();
    await deleteQueues([queue]);
  });
  let running = 0;
  let most = 0;
  let handled = 0;
  subscriber.register(
    queue,
    async () => {
      running++;
      most = Math.max(most, running);
      await new Promise((resolve) => setTimeout(resolve, 20));
      running--;
      handled++;
    },
    options,
  );
  // Declares the queues on both brokers; the messages then wait there as a backlog.
  await subscriber.listen();
  await subscriber.pauseListening([queue]);
  for (let i = 0; i < count; i++) await publish(servers, queue, queue, `m${i}`, { redundant: true });
  await subscriber.resumeListening([queue]);
  await waitFor(() => handled === count, 30_000, `${count} handled`);
  return { most, handled };
}

describe('handlers at once', () => {
  it('default settings: many at once (prefetch 100, concurrency follows it)', async () => {
    const { most, handled } = await mostAtOnce({}, {}, 40);
    expect(handled).toBe(40);
    expect(most).toBeGreaterThan(10);
  });

  it("prefetchCount 1 (a Ruby file's default): one at a time", async () => {
    const { most, handled } = await mostAtOnce({ prefetchCount: 1 }, {}, 10);
    expect(handled).toBe(10);
    expect(most).toBe(1);
  });

  it('handler option concurrency 1 at the default settings: never two of its messages at once', async () => {
    const { most, handled } = await mostAtOnce({}, { concurrency: 1 }, 30);
    expect(handled).toBe(30);
    expect(most).toBe(1);
  });

  it('handler option concurrency 3: at most three', async () => {
    const { most, handled } = await mostAtOnce({}, { concurrency: 3 }, 30);
    expect(handled).toBe(30);
    expect(most).toBe(3);
  });
});

describe('handler option concurrency', () => {
  it.each([0, 1.5, -1, Number.NaN])('refuses %s with a ConfigurationError naming the option', (value) => {
    const subscriber = new Subscriber({
      config: createConfig({ servers }),
      topology: new Topology().registerQueue('q'),
      store: new MemoryDedupStore(),
    });
    expect(() => subscriber.register('q', () => undefined, { concurrency: value })).toThrow(
      ConfigurationError,
    );
    expect(() => subscriber.register('q', () => undefined, { concurrency: value })).toThrow(/`concurrency`/);
  });
});
