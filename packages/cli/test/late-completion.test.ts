import { Outcome, Topology, createConfig } from '@beetle/core';
import { keyOf } from '@beetle/core/kit';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Subscriber, type ProcessedEvent } from '@beetle/subscriber';
import { freePort, startRedis, type ServiceHandle } from '@beetle/test-services';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawClient } from '../../dedup-redis/test/helpers.js';
import { deleteQueues, publish, waitFor } from '../../subscriber/test/integration-helpers.js';
import { run, servers, uid } from './helpers.js';

/**
 * The garbage collector deletes a message's keys while its handler still runs (the message expired); then the
 * handler finishes and its completion writes the keys again. Without `expires` among them, `beetle gc` (like
 * Go's collector) never removes the recreated `status` key: it skips status keys, taking them for keys with a
 * TTL, and removes other keys only as orphans.
 */
describe('a completion written after gc deleted the message', () => {
  let redis: ServiceHandle;

  beforeAll(async () => {
    redis = await startRedis(await freePort());
  });

  afterAll(async () => {
    await redis.stop();
  });

  it('recreates keys that the next gc removes (none left behind)', async () => {
    const queue = `beetle-late-${uid()}`;
    const topology = new Topology();
    topology.registerQueue(queue);
    const config = createConfig({ servers: [servers[0]!], subscriberConnectTimeout: 2, stopTimeout: 2 });
    const store = new RedisDedupStore({ redisServer: redis.address, failoverTimeout: 3 });
    const subscriber = new Subscriber({ config, topology, store });
    const raw = rawClient(redis.address);
    const processed: ProcessedEvent[] = [];
    subscriber.on('processed', (event) => processed.push(event));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let started = false;
    subscriber.register(queue, async () => {
      started = true;
      await gate;
    });
    const gc = (): Promise<{ code: number }> =>
      run(['gc', '--redis-server', redis.address, '--databases', '4', '--pause', '0', '--threshold', '0s']);
    try {
      await subscriber.listen();
      // A redundant message (the full path: claim, complete, ack count) that expires in 1 s; its other copy
      // never comes, so the ack count keeps the keys for the garbage collector.
      const uuid = await publish([servers[0]!], queue, queue, 'slow', { redundant: true, ttl: 1 });
      const ref = { queue, uuid };
      await waitFor(() => started, 10_000, 'the handler started');
      expect(await store.inspect(ref)).toMatchObject({ status: 'incomplete', attempts: '1' });
      // Expired (expires < now - 0): gc deletes the keys while the handler runs.
      await new Promise((resolve) => setTimeout(resolve, 2100));
      expect((await gc()).code).toBe(0);
      expect(await store.inspect(ref)).toEqual({});

      release();
      await waitFor(() => processed.length === 1, 10_000, 'the handler finished');
      expect(processed[0]!.outcome).toBe(Outcome.OK);
      const recreated = await store.inspect(ref);
      const ttls: Record<string, number> = {};
      for (const suffix of Object.keys(recreated))
        ttls[suffix] = await raw.ttl(keyOf(ref, suffix as 'status'));
      console.info(`[late completion] recreated: ${JSON.stringify(recreated)}, TTLs ${JSON.stringify(ttls)}`);
      expect(recreated).toMatchObject({ status: 'completed', timeout: '0' });

      expect((await gc()).code).toBe(0);
      const left = await store.inspect(ref);
      console.info(`[late completion] after the next gc: ${JSON.stringify(left)}`);
      expect(left).toEqual({});
    } finally {
      release();
      await subscriber.stop({ timeout: 1 });
      await store.close();
      await raw.quit();
      await deleteQueues([queue]);
    }
  }, 40_000);
});
