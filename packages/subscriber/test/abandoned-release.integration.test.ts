import { Outcome, Topology, createConfig, type DedupStore, type Logger } from '@beetle/core';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Subscriber, type Handler, type HandlerOptions, type ProcessedEvent } from '@beetle/subscriber';
import { afterEach, describe, expect, it } from 'vitest';
import { deleteQueues, publish, redisServer, servers, uid, waitFor } from './integration-helpers.js';

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const server = servers[0]!;

function consumer(
  queue: string,
  store: DedupStore,
  handler: Handler,
  options: HandlerOptions,
  logger?: Logger,
): { subscriber: Subscriber; processed: ProcessedEvent[] } {
  const topology = new Topology();
  topology.registerQueue(queue);
  const config = createConfig({
    servers: [server],
    subscriberReconnectDelay: 0.2,
    subscriberConnectTimeout: 2,
    rejectRequeueDelay: 0.2,
    stopTimeout: 2,
  });
  const subscriber = new Subscriber({ config, topology, store, ...(logger ? { logger } : {}) });
  const processed: ProcessedEvent[] = [];
  subscriber.on('processed', (event) => processed.push(event));
  subscriber.register(queue, handler, options);
  cleanups.push(async () => {
    await subscriber.stop({ timeout: 1 });
  });
  return { subscriber, processed };
}

const warnings = (): { logger: Logger; seen: string[] } => {
  const seen: string[] = [];
  const keep = (...args: unknown[]): void => void seen.push(String(args.find((a) => typeof a === 'string')));
  return { logger: { debug: () => undefined, info: () => undefined, warn: keep, error: keep }, seen };
};

describe('a handler abandoned by a forced stop', () => {
  it('is released: the redelivery runs at once, with its one attempt (it used to wait and never run)', async () => {
    const queue = `beetle-release-${uid()}`;
    const store = new RedisDedupStore({ redisServer, failoverTimeout: 3 });
    let uuid = '';
    cleanups.push(async () => {
      // The only copy's ack count stays (its twin never comes): remove the keys once both consumers stopped.
      if (uuid !== '') await store.deleteMessageKeys(`msgid:${queue}:${uuid}`);
      await store.close();
      await deleteQueues([queue]);
    });
    // One attempt (redundant message, so not the simple path), handler timeout 30 s.
    const options: HandlerOptions = { timeout: 30 };
    let abandonedSignal: AbortSignal | undefined;
    const first = consumer(
      queue,
      store,
      (_message, ctx) => {
        abandonedSignal = ctx.signal;
        return new Promise(() => undefined); // never finishes
      },
      options,
    );
    await first.subscriber.listen();
    uuid = await publish([server], queue, queue, 'stuck once', { redundant: true });
    await waitFor(() => abandonedSignal !== undefined, 10_000, 'the handler started');
    expect((await first.subscriber.stop({ timeout: 0.5 })).abandoned).toBe(1);
    expect(abandonedSignal?.aborted).toBe(true);
    // The run given back: attempt uncounted, not running.
    expect(await store.inspect({ queue, uuid })).toMatchObject({
      status: 'incomplete',
      attempts: '0',
      timeout: '0',
    });

    const runs: number[] = [];
    const second = consumer(
      queue,
      store,
      (_message, ctx) => {
        runs.push(ctx.attempt);
      },
      options,
    );
    const started = Date.now();
    await second.subscriber.listen();
    await waitFor(() => runs.length > 0, 8_000, 'the redelivery to run');
    await waitFor(() => second.processed.length > 0, 5_000, 'the redelivery processed');
    console.info(
      `[abandoned run] redelivery ran after ${Date.now() - started} ms as attempt ${runs[0]}; outcomes: ` +
        second.processed.map((event) => event.outcome).join(', '),
    );
    expect(runs).toEqual([1]);
    expect(second.processed.map((event) => event.outcome)).toEqual([Outcome.OK]);
    expect(await store.inspect({ queue, uuid })).toMatchObject({ status: 'completed', attempts: '1' });
  }, 40_000);

  it('stop() stays bounded when the store does not answer the release, and says so', async () => {
    const queue = `beetle-release-${uid()}`;
    const redis = new RedisDedupStore({ redisServer, failoverTimeout: 3 });
    let releases = 0;
    const store = new Proxy(redis, {
      get: (target, property, receiver) =>
        property === 'release'
          ? () => {
              releases++;
              return new Promise<boolean>(() => undefined);
            }
          : (Reflect.get(target, property, receiver) as unknown),
    });
    cleanups.push(async () => {
      await redis.close();
      await deleteQueues([queue]);
    });
    const { logger, seen } = warnings();
    let running = false;
    const { subscriber } = consumer(
      queue,
      store,
      () => {
        running = true;
        return new Promise(() => undefined);
      },
      { timeout: 30 },
      logger,
    );
    await subscriber.listen();
    const uuid = await publish([server], queue, queue, 'stuck', { redundant: true });
    await waitFor(() => running, 10_000, 'the handler started');
    const started = Date.now();
    expect((await subscriber.stop({ timeout: 0.5 })).abandoned).toBe(1);
    const elapsed = Date.now() - started;
    // Handlers 0.5 s, then up to 0.5 s more for the release (plus the 1 s grace for store calls in flight).
    expect(elapsed).toBeLessThan(3000);
    expect(releases).toBe(1);
    expect(seen).toContain(
      'stop timeout: abandoned runs not released yet; their messages run again only after their handler timeout',
    );
    await redis.acknowledged({ queue, uuid }, { redundant: false });
  }, 30_000);
});
