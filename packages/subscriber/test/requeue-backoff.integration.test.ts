import { Outcome, Topology, createConfig, type BeetleConfigInput } from '@beetle/core';
import { encodeMessage } from '@beetle/core/kit';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Subscriber, type ProcessedEvent } from '@beetle/subscriber';
import { afterEach, describe, expect, it } from 'vitest';
import {
  deleteQueues,
  management,
  publish,
  raw,
  redisServer,
  servers,
  uid,
  waitFor,
} from './integration-helpers.js';

/**
 * A message in progress in another process: subscriber A (consuming broker 1 only) runs the first copy of a
 * redundant message and keeps it running; subscriber B (broker 2 only) gets the second copy, whose outcome is
 * `HandlerNotYetTimedOut` until A is done. Measured on B: how often that copy comes back in a window, how many
 * other messages of the same queue B processes meanwhile, and how long after A finished B acks its copy.
 */
interface Measurement {
  readonly redeliveries: number;
  readonly others: number;
  readonly othersPublished: number;
  /** From the publish of the other messages to the last of them processed (undefined: not all in the window). */
  readonly othersMs: number | undefined;
  readonly ackedAfterReadyMs: number;
}

const WINDOW_MS = Number(process.env.REQUEUE_WINDOW_MS ?? 6000);
const REQUEUE_DELAY = Number(process.env.REQUEUE_DELAY ?? 0.25);
const OTHERS = 300;
/** The default `rejectRequeueMaxDelay` (s). */
const MAX_DELAY = 10;

/**
 * Sightings of a paced copy in the window: holds of base, 2 × base, 4 × base, ... up to the cap, plus 1 for a
 * sighting right at the end and 1 for broker and store round trips adding up. Without pacing: window / base.
 */
function pacedBound(windowMs: number, base: number, skipFirst: boolean): number {
  let sightings = skipFirst ? 1 : 0;
  let hold = base * 1000;
  for (let t = 0; t <= windowMs; t += hold, hold = Math.min(hold * 2, MAX_DELAY * 1000)) sightings++;
  return sightings + 1;
}
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function measure(options: {
  prefetchCount: number;
  deadLettering: boolean;
  config?: BeetleConfigInput;
}): Promise<Measurement> {
  const [first, second] = servers as [string, string];
  const queue = `beetle-requeue-${uid()}`;
  const topology = new Topology();
  topology.registerQueue(queue, { deadLettering: options.deadLettering, deadLetteringMsgTtl: 200 });
  const base: BeetleConfigInput = {
    prefetchCount: options.prefetchCount,
    subscriberConcurrency: options.prefetchCount,
    rejectRequeueDelay: REQUEUE_DELAY,
    updateQueuePropertiesSynchronously: true,
    subscriberReconnectDelay: 0.2,
    subscriberReconnectMaxDelay: 1,
    stopTimeout: 2,
    ...options.config,
  };
  const storeA = new RedisDedupStore({ redisServer, failoverTimeout: 3 });
  const storeB = new RedisDedupStore({ redisServer, failoverTimeout: 3 });
  const a = new Subscriber({ config: createConfig({ ...base, servers: [first] }), topology, store: storeA });
  const b = new Subscriber({ config: createConfig({ ...base, servers: [second] }), topology, store: storeB });
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  let started = false;
  a.register(
    queue,
    async () => {
      started = true;
      await gate;
    },
    { attempts: 2, timeout: 120 },
  );
  const seen: ProcessedEvent[] = [];
  let lastOtherAt = 0;
  b.register(queue, () => undefined, { attempts: 2, timeout: 120 });
  b.on('processed', (event) => {
    seen.push(event);
    if (event.message?.redundant === false) lastOtherAt = Date.now();
  });
  cleanups.push(async () => {
    release();
    await a.stop({ timeout: 2 });
    await b.stop({ timeout: 2 });
    await storeA.close();
    await storeB.close();
    await deleteQueues([queue, `${queue}_dead_letter`]);
    for (const server of servers) {
      for (const name of [`${queue}_policy`, `${queue}_dead_letter_policy`]) {
        await management(server, 'DELETE', `/api/policies/%2F/${name}`).catch(() => undefined);
      }
    }
  });
  await a.listen();
  await b.listen();

  // The first copy runs in A; then the second copy goes to B's broker, followed by other messages.
  const uuid = await publish([first], queue, queue, 'slow', { redundant: true });
  await waitFor(() => started, 10_000, 'the first copy running in A');
  await publish([second], queue, queue, 'slow', { redundant: true, messageId: uuid });
  const isCopy = (e: ProcessedEvent): boolean => e.message?.uuid === uuid;
  await waitFor(() => seen.some(isCopy), 10_000, 'the second copy seen by B');
  const windowStart = Date.now();
  const othersPublished = await publishOthers(second, queue, OTHERS);
  await new Promise((resolve) => setTimeout(resolve, WINDOW_MS - (Date.now() - windowStart)));
  const copies = seen.filter(isCopy);
  const redeliveries = copies.length;
  const others = seen.filter((e) => !isCopy(e) && e.outcome === Outcome.OK).length;
  const othersMs = others === othersPublished ? lastOtherAt - windowStart : undefined;
  expect(copies.every((e) => e.outcome === Outcome.HandlerNotYetTimedOut)).toBe(true);

  // A finishes: B's copy is acked as completed on its next redelivery.
  const readyAt = Date.now();
  release();
  await waitFor(() => seen.some((e) => isCopy(e) && e.outcome === Outcome.OK), 30_000, 'B acking its copy');
  const ackedAfterReadyMs = Date.now() - readyAt;
  return { redeliveries, others, othersPublished, othersMs, ackedAfterReadyMs };
}

/** Non-redundant messages (B's simple path: acked, no store state to wait for), in one batch. */
async function publishOthers(server: string, queue: string, count: number): Promise<number> {
  await raw(server, async (ch) => {
    for (let i = 0; i < count; i++) {
      const { body, properties } = encodeMessage(`other ${i}`);
      ch.publish(queue, queue, body, properties);
    }
    await ch.waitForConfirms();
  });
  return count;
}

describe('redeliveries of a message in progress elsewhere (real brokers and Redis)', () => {
  it('a requeued copy comes back rarely (backoff), prefetch 4, no dead lettering; other messages flow', async () => {
    const m = await measure({ prefetchCount: 4, deadLettering: false });
    console.log('requeue, prefetch 4:', JSON.stringify(m));
    // 6 s at a 0.25 s requeue delay: 24 redeliveries without the backoff, at most 7 with it.
    expect(m.redeliveries).toBeLessThanOrEqual(pacedBound(WINDOW_MS, REQUEUE_DELAY, false));
    expect(m.others).toBe(m.othersPublished);
  });

  it('a requeued copy comes back rarely (backoff), prefetch 1 (the default), no dead lettering', async () => {
    const m = await measure({ prefetchCount: 1, deadLettering: false });
    console.log('requeue, prefetch 1:', JSON.stringify(m));
    expect(m.redeliveries).toBeLessThanOrEqual(pacedBound(WINDOW_MS, REQUEUE_DELAY, false));
  });

  it('a dead-lettered copy comes back rarely while prefetch is left for the others, prefetch 4', async () => {
    const m = await measure({ prefetchCount: 4, deadLettering: true });
    console.log('dead lettering, prefetch 4:', JSON.stringify(m));
    // 6 s at a 200 ms dead letter TTL: ~28 redeliveries without the backoff.
    expect(m.redeliveries).toBeLessThanOrEqual(pacedBound(WINDOW_MS, REQUEUE_DELAY, true));
    expect(m.others).toBe(m.othersPublished);
  });

  it('dead lettering with prefetch 1: handed back at once, as Ruby does (other messages keep flowing)', async () => {
    const m = await measure({ prefetchCount: 1, deadLettering: true });
    console.log('dead lettering, prefetch 1:', JSON.stringify(m));
    expect(m.others).toBe(m.othersPublished);
  });
});
