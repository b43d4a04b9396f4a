/**
 * Quorum queues count every return of a delivery and drop (or dead-letter) it past their delivery-limit;
 * RabbitMQ 3.10 to 4.2 count nack and reject alike. Beetle's retries must survive that: a requeue near the
 * limit republishes the message (confirmed) and acks the original, so the count starts over.
 */
import { Outcome, Topology, createConfig } from '@beetle/core';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Subscriber, type ProcessedEvent } from '@beetle/subscriber';
import { afterEach, describe, expect, it } from 'vitest';
import {
  deleteQueues,
  messageCount,
  publish,
  raw,
  redisServer,
  servers,
  uid,
  waitFor,
} from './integration-helpers.js';

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe('a quorum queue with a small delivery limit (x-delivery-limit 3)', () => {
  it('a message delayed for longer than the limit allows is handled once it is due; nothing dropped', async () => {
    const queue = `beetle-quorum-it-${uid()}`;
    const server = servers[0]!;
    const topology = new Topology();
    topology.registerQueue(queue, { arguments: { 'x-queue-type': 'quorum', 'x-delivery-limit': 3 } });
    // Short holds: the delayed message comes back about every 0.2 s, some 15 times before it is due.
    const config = createConfig({
      servers: [server],
      rejectRequeueDelay: 0.1,
      rejectRequeueMaxDelay: 0.2,
      stopTimeout: 5,
    });
    const store = new RedisDedupStore({ redisServer });
    const subscriber = new Subscriber({ config, topology, store });
    const processed: ProcessedEvent[] = [];
    subscriber.on('processed', (event) => processed.push(event));
    const runs: number[] = [];
    subscriber.register(
      queue,
      (message) => {
        runs.push(message.attempt);
        if (message.attempt === 1) throw new Error('the first attempt fails');
        return 'done';
      },
      { attempts: 2, exceptions: 1, delay: 3 },
    );
    cleanups.push(async () => {
      await subscriber.stop({ timeout: 1 });
      await store.close();
      await deleteQueues([queue]);
    });
    await subscriber.listen();
    await publish([server], queue, queue, 'retry me later');

    await waitFor(() => processed.some((p) => p.outcome === Outcome.OK), 20_000, 'the second attempt');
    const outcomes = processed.map((p) => p.outcome);
    const delayed = outcomes.filter((o) => o === Outcome.Delayed).length;
    console.info(
      `[quorum] outcomes: HandlerCrash 1, Delayed ×${delayed}, then OK; handler runs ${runs.join(',')}`,
    );
    expect(runs).toEqual([1, 2]);
    expect(outcomes[0]).toBe(Outcome.HandlerCrash);
    expect(outcomes.at(-1)).toBe(Outcome.OK);
    // More returns than the limit allows: without the refresh the queue would have dropped the message.
    expect(delayed).toBeGreaterThan(5);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(processed.filter((p) => p.outcome === Outcome.OK)).toHaveLength(1);
    await subscriber.stop();
    expect(await messageCount(server, queue)).toBe(0);
    // Nothing left unacked either (the channel is closed: unacked ones would be ready again).
    const info = await raw(server, (ch) => ch.checkQueue(queue));
    expect(info.messageCount).toBe(0);
  });
});
