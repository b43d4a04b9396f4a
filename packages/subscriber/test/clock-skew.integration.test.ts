import { Outcome, Topology, createConfig } from '@beetle/core';
import { keyOf, systemClock, type Clock } from '@beetle/core/kit';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Subscriber, type ProcessedEvent } from '@beetle/subscriber';
import { afterEach, describe, expect, it } from 'vitest';
import { rawClient } from '../../dedup-redis/test/helpers.js';
import { deleteQueues, publish, redisServer, servers, uid, waitFor } from './integration-helpers.js';

/** The system clock, `skewSeconds` ahead (timers run as usual: durations are not affected by a skew). */
const skewed = (skewSeconds: number): Clock => ({
  ...systemClock,
  now: () => systemClock.now() + skewSeconds,
  nowMs: () => systemClock.nowMs() + skewSeconds * 1000,
});

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/**
 * Two consumers on one real Redis whose clocks differ by more than the handler timeout + 10 s. Compared with
 * each consumer's own clock, the consumer running ahead took the other's running handler for timed out,
 * retried it and ran the message a second time, concurrently. Decided with Redis' clock, it waits.
 */
describe('consumers with skewed clocks on one Redis', () => {
  it('never run one message at once, and run it once', async () => {
    const queue = `beetle-skew-${uid()}`;
    const topology = new Topology();
    topology.registerQueue(queue);
    const raw = rawClient(redisServer);
    let running = 0;
    let maxRunning = 0;
    let runs = 0;
    const processed: (ProcessedEvent & { consumer: string })[] = [];
    const consumer = (name: string, server: string, clock: Clock): Subscriber => {
      // Each consumer on one broker: each gets one copy of the redundant message.
      const config = createConfig({
        servers: [server],
        subscriberReconnectDelay: 0.2,
        subscriberConnectTimeout: 2,
        rejectRequeueDelay: 0.2,
        stopTimeout: 2,
      });
      const store = new RedisDedupStore({ redisServer, failoverTimeout: 3 });
      const subscriber = new Subscriber({ config, topology, store, clock });
      subscriber.on('processed', (event) => processed.push({ ...event, consumer: name }));
      subscriber.register(
        queue,
        async () => {
          runs++;
          running++;
          maxRunning = Math.max(maxRunning, running);
          await new Promise((resolve) => setTimeout(resolve, 3000));
          running--;
        },
        // Handler timeout 5 s: the 60 s skew is far beyond timeout + 10 s. Three attempts, so that a consumer
        // that takes the run for crashed retries it (rather than giving up).
        { timeout: 5, attempts: 3 },
      );
      cleanups.push(async () => {
        await subscriber.stop({ timeout: 1 });
        await store.close();
      });
      return subscriber;
    };
    cleanups.push(async () => {
      await raw.quit();
      await deleteQueues([queue]);
    });
    const onTime = consumer('on time', servers[0]!, systemClock);
    const ahead = consumer('60 s ahead', servers[1]!, skewed(60));
    await onTime.listen();
    await ahead.listen();

    // The first copy reaches the consumer on time, the other copy the consumer ahead while the handler runs.
    const uuid = await publish([servers[0]!], queue, queue, 'once', { redundant: true });
    await waitFor(() => runs === 1, 10_000, 'the handler started');
    const [redisSeconds] = await raw.time();
    // The running handler's timeout is Redis' now + 5 (not the consumer's own clock).
    const timeout = Number(await raw.get(keyOf({ queue, uuid }, 'timeout')));
    expect(timeout - Number(redisSeconds)).toBeGreaterThanOrEqual(3);
    expect(timeout - Number(redisSeconds)).toBeLessThanOrEqual(5);
    await publish([servers[1]!], queue, queue, 'once', { redundant: true, messageId: uuid });

    await waitFor(
      () => processed.filter((event) => event.settled === 'acked').length === 2,
      20_000,
      'both copies acked',
    );
    const tally = new Map<string, number>();
    for (const { consumer: name, outcome } of processed) {
      tally.set(`${name}: ${outcome}`, (tally.get(`${name}: ${outcome}`) ?? 0) + 1);
    }
    console.info(
      `[clock skew] handler runs: ${runs}, at most ${maxRunning} at once; outcomes: ` +
        [...tally].map(([what, count]) => `${what} ×${count}`).join(', '),
    );
    expect(maxRunning).toBe(1);
    expect(runs).toBe(1);
    const ofAhead = processed.filter((event) => event.consumer === '60 s ahead').map((e) => e.outcome);
    expect(ofAhead.at(-1)).toBe(Outcome.OK);
    expect(ofAhead.slice(0, -1).every((outcome) => outcome === Outcome.HandlerNotYetTimedOut)).toBe(true);
  }, 40_000);
});
