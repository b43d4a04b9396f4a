import { afterEach, describe, expect, it } from 'vitest';
import { BrokerError, createConfig, Topology } from '@beetle/core';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Subscriber } from '@beetle/subscriber';
import { Publisher, type PublisherEvents } from '@beetle/publisher';
import { cleanup, config, raw, servers, uid } from '../../broker-amqp/test/helpers.js';
import { confirmDroppingProxy, type ConfirmDroppingProxy, type DropBudget } from './confirm-proxy.js';

const [s1, s2] = servers as [string, string];
const redisServer = process.env.BEETLE_TEST_REDIS ?? '127.0.0.1:6379';
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

const waitFor = async (
  what: string,
  predicate: () => boolean | Promise<boolean>,
  ms = 15_000,
): Promise<void> => {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

const messageCount = (server: string, queue: string): Promise<number> =>
  raw(server, async (ch) => (await ch.checkQueue(queue)).messageCount);

/**
 * A publisher that reaches s1 and s2 through confirm-dropping proxies (publishes reach the brokers; a confirm
 * can be made to vanish with its connection), and a subscriber with the Redis store reading both brokers
 * directly. Handler runs are counted per message body.
 */
async function setup(options: { redundant: boolean; statusKeyExpiryInterval?: number; lazySetup?: boolean }) {
  const name = `bt-unk-${uid()}`;
  const budget: DropBudget = { drops: 0 };
  const proxies: ConfirmDroppingProxy[] = [
    await confirmDroppingProxy(s1, budget),
    await confirmDroppingProxy(s2, budget),
  ];
  const via = new Map([
    [proxies[0]!.server, s1],
    [proxies[1]!.server, s2],
  ]);
  const topology = new Topology()
    .registerQueue(name)
    .registerMessage<string, string>(name, { redundant: options.redundant });
  const publisher = new Publisher({
    config: config({
      servers: proxies.map((p) => p.server),
      publisherReadResponseTimeout: 3,
      publisherLazyQueueSetup: options.lazySetup ?? true,
    }),
    topology,
  });
  const store = new RedisDedupStore({
    redisServer,
    db: 4,
    statusKeyExpiryInterval: options.statusKeyExpiryInterval ?? 0,
  });
  const subscriber = new Subscriber({
    config: createConfig({ servers: [s1, s2], subscriberReconnectDelay: 0.2, stopTimeout: 2 }),
    topology,
    store,
  });
  const runs = new Map<string, number>();
  const processed: { body: string; uuid: string | undefined; outcome: string | undefined }[] = [];
  subscriber.on('processed', (e) =>
    processed.push({ body: e.message?.text() ?? '', uuid: e.message?.uuid, outcome: e.outcome }),
  );
  const events: string[] = [];
  const failovers: PublisherEvents['failover'][] = [];
  publisher.on('failover', (e) => {
    failovers.push(e);
    events.push(`failover ${via.get(e.server) ?? e.server}`);
  });
  publisher.on('brokerDead', (e) => events.push(`dead ${via.get(e.server) ?? e.server}`));
  publisher.on('partial', (e) => events.push(`partial ${via.get(e.server) ?? e.server}`));
  cleanups.push(async () => {
    await subscriber.stop({ timeout: 1 });
    await publisher.close({ timeout: 1 });
    await store.close();
    for (const proxy of proxies) await proxy.close();
    await cleanup({ queues: [name], exchanges: [name] });
  });
  const copies = async (): Promise<number[]> => [await messageCount(s1, name), await messageCount(s2, name)];
  const listen = async (): Promise<void> => {
    subscriber.register(name, (message) => {
      const body = message.text();
      runs.set(body, (runs.get(body) ?? 0) + 1);
    });
    await subscriber.listen();
  };
  return { name, budget, proxies, publisher, copies, listen, runs, processed, events, failovers };
}

describe('Publisher after an outcome-unknown failure (a confirm lost with its connection)', () => {
  it('redundant, fast path: the copy whose confirm was lost is not placed again (2 copies, handled once)', async () => {
    const t = await setup({ redundant: true });
    // Both brokers ready (channels open, exchange declared): the next publish takes the fast path.
    expect(await t.publisher.publish(t.name, 'warm-up')).toBe(2);
    t.budget.drops = 1;
    const count = await t.publisher.publish(t.name, 'the message');
    expect(t.proxies[0]!.dropped + t.proxies[1]!.dropped).toBe(1);
    // The copy is on the broker although its confirm never came: 2 copies besides the warm-up pair.
    expect({
      count,
      copies: await t.copies(),
      events: t.events.filter((e) => !e.startsWith('failover')),
    }).toEqual({
      count: 1,
      copies: [2, 2],
      events: [expect.stringMatching(/^partial /) as string],
    });
    expect(t.failovers).toHaveLength(1);
    expect(t.failovers[0]!.error).toBeInstanceOf(BrokerError);
    expect((t.failovers[0]!.error as BrokerError).outcomeUnknown).toBe(true);
    await t.listen();
    await waitFor('both queues drained', async () => (await t.copies()).every((n) => n === 0));
    // The held acks of the subscriber are flushed at stop; the handler counts are final by then.
    await new Promise((r) => setTimeout(r, 500));
    expect(Object.fromEntries(t.runs)).toEqual({ 'warm-up': 1, 'the message': 1 });
  }, 60_000);

  it('redundant, slow path (first publish): the copy whose confirm was lost is not placed again either', async () => {
    // Queues and policies declared up front (their policy messages are confirmed before the drop is armed, and
    // no lazy setup publishes them again); the exchange is not prepared yet, so this publish takes the slow path.
    const t = await setup({ redundant: true, lazySetup: false });
    await t.publisher.setupQueuesAndPolicies();
    t.budget.drops = 1;
    const count = await t.publisher.publish(t.name, 'the message');
    expect(t.proxies[0]!.dropped + t.proxies[1]!.dropped).toBe(1);
    expect({ count, copies: await t.copies() }).toEqual({ count: 1, copies: [1, 1] });
  }, 60_000);

  it('non-redundant: at least once, retried with the same message id; the store drops the repeat', async () => {
    // The decision (README "Guarantees"): the publisher retries a publish whose outcome is unknown, with the
    // same message id, rather than failing a publish a broker may well have stored. A consumer handles the
    // repeat once while the message's dedup keys or its completed status (redisStatusKeyExpiryInterval) live.
    const t = await setup({ redundant: false, statusKeyExpiryInterval: 60 });
    // Round robin: one publish per broker opens both channels.
    expect(await t.publisher.publish(t.name, 'warm-up 1')).toBe(1);
    expect(await t.publisher.publish(t.name, 'warm-up 2')).toBe(1);
    t.budget.drops = 1;
    const ids: string[] = [];
    t.publisher.on('published', (e) => ids.push(e.messageId));
    expect(await t.publisher.publish(t.name, 'the message')).toBe(1);
    expect(t.proxies[0]!.dropped + t.proxies[1]!.dropped).toBe(1);
    expect(t.failovers).toHaveLength(1);
    expect((t.failovers[0]!.error as BrokerError).outcomeUnknown).toBe(true);
    expect(t.failovers[0]!.messageId).toBe(ids[0]);
    // Two copies of it (the unconfirmed one and the retry) besides the two warm-ups.
    const [c1, c2] = await t.copies();
    expect(c1! + c2!).toBe(4);
    await t.listen();
    await waitFor('every copy handled', () => t.processed.length === 4);
    const copies = t.processed.filter((e) => e.body === 'the message');
    expect(copies.map((e) => e.uuid)).toEqual([ids[0], ids[0]]);
    expect(Object.fromEntries(t.runs)).toEqual({ 'warm-up 1': 1, 'warm-up 2': 1, 'the message': 1 });
  }, 60_000);
});
