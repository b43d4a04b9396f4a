import { Outcome, Topology, createConfig } from '@beetle/core';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { freePort, startRedis, type ServiceHandle } from '@beetle/test-services';
import { Subscriber, type ProcessedEvent } from '@beetle/subscriber';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLAIM } from '../../dedup-redis/src/scripts.js';
import { callsScript, ReplyFaultProxy } from '../../dedup-redis/test/helpers.js';
import { deleteQueues, publishCopies, servers, uid, waitFor } from './integration-helpers.js';

/**
 * The reply of a claim script call is lost to a connection reset after Redis ran it: the store sends the
 * call again. Redundant messages with one attempt (the default): a resend that found its own first sighting
 * made every message of the batch look in progress, and after the handler timeout + 10 s they ended as
 * AttemptsLimitReached without the handler ever running.
 */
describe('a lost claim reply, end to end (real brokers, a disposable Redis behind a proxy)', () => {
  let redis: ServiceHandle;
  let proxy: ReplyFaultProxy;

  beforeAll(async () => {
    redis = await startRedis(await freePort());
    proxy = await ReplyFaultProxy.start(redis.address);
  });

  afterAll(async () => {
    await proxy.close();
    await redis.stop();
  });

  it('every message of the batch is handled exactly once', async () => {
    const queue = `beetle-lost-claim-${uid()}`;
    const topology = new Topology();
    topology.registerQueue(queue);
    const config = createConfig({
      servers,
      prefetchCount: 100,
      subscriberConcurrency: 100,
      subscriberReconnectDelay: 0.2,
      subscriberConnectTimeout: 2,
      stopTimeout: 2,
    });
    const store = new RedisDedupStore({
      redisServer: proxy.address,
      failoverTimeout: 20,
      retryInterval: 0.2,
    });
    const subscriber = new Subscriber({ config, topology, store });
    const runs = new Map<string, number>();
    const processed: ProcessedEvent[] = [];
    subscriber.on('processed', (event) => processed.push(event));
    // One attempt (the default for redundant messages), handler timeout 1 s.
    subscriber.register(
      queue,
      (message) => {
        runs.set(message.uuid, (runs.get(message.uuid) ?? 0) + 1);
      },
      { timeout: 1 },
    );
    try {
      await subscriber.listen();
      await store.ping();
      // Published while not consuming, so that the deliveries arrive together and their claims share a call.
      await subscriber.pauseListening([queue]);
      const ids = await publishCopies(
        servers,
        queue,
        Array.from({ length: 40 }, (_, i) => `message ${i}`),
      );
      const fault = proxy.loseNextReply(callsScript(CLAIM));
      await subscriber.resumeListening([queue]);
      await fault;
      const lost = proxy.lostCommands.toString('latin1');
      const inLostBatch = ids.filter((uuid) => lost.includes(uuid)).length;
      // Both copies of every message settled by an ack: OK, or a final failure.
      const acked = (uuid: string): number =>
        processed.filter((event) => event.message?.uuid === uuid && event.settled === 'acked').length;
      await waitFor(
        () => ids.every((uuid) => acked(uuid) === 2),
        40_000,
        'both copies of every message acked',
      );
      const handledOnce = ids.filter((uuid) => runs.get(uuid) === 1).length;
      const neverRan = ids.filter(
        (uuid) =>
          runs.get(uuid) === undefined &&
          processed.some((e) => e.message?.uuid === uuid && e.outcome === Outcome.AttemptsLimitReached),
      ).length;
      console.info(
        `[lost claim reply, subscriber] the lost replies covered the claims of ${inLostBatch} messages; ` +
          `${handledOnce} of ${ids.length} messages handled once; ` +
          `${neverRan} ended AttemptsLimitReached without running`,
      );
      expect(proxy.faults).toBe(1);
      expect(inLostBatch).toBeGreaterThan(0);
      expect(neverRan).toBe(0);
      expect(handledOnce).toBe(40);
      expect([...runs.values()].every((count) => count === 1)).toBe(true);
    } finally {
      await subscriber.stop({ timeout: 1 });
      await store.close();
      await deleteQueues([queue]);
    }
  }, 60_000);
});
