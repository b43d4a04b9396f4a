import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, expectTypeOf, it } from 'vitest';
import {
  Client,
  MemoryDedupStore,
  RedisDedupStore,
  traceQueueName,
  type DedupStore,
  type HandlerMessage,
} from '@beetle/client';
import { cleanup, servers } from '../../broker-amqp/test/helpers.js';

const redisServer = process.env.BEETLE_TEST_REDIS ?? '127.0.0.1:6379';
const uid = (): string => randomBytes(4).toString('hex');
const clients: Client[] = [];
const created: { queues: string[]; exchanges: string[] } = { queues: [], exchanges: [] };

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.stop({ timeout: 2 })));
  await cleanup({ queues: created.queues.splice(0), exchanges: created.exchanges.splice(0) });
});

const waitFor = async (predicate: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
};

interface Order {
  id: number;
}

function orderClient(name: string, store?: RedisDedupStore | MemoryDedupStore) {
  created.queues.push(name, traceQueueName(name));
  created.exchanges.push(name);
  const client = new Client({
    config: { servers: servers.slice(0, 2), redisServer, redisDb: 4, subscriberReconnectDelay: 1 },
    ...(store ? { store } : {}),
  })
    .queue(name)
    .message<typeof name, Order>(name, { redundant: true });
  clients.push(client);
  return client;
}

describe('Client', () => {
  it('checks message names and payload types at compile time', () => {
    const client = new Client().message<'order.created', Order>('order.created');
    expectTypeOf(client.publish<'order.created'>)
      .parameter(1)
      .toEqualTypeOf<Order>();
    // Both lines below must fail to compile: an unknown name, a wrong payload type.
    const compileChecks = (): void => {
      // @ts-expect-error unknown message name
      void client.publish('order.deleted', { id: 1 });
      // @ts-expect-error wrong payload type
      void client.publish('order.created', { id: 'one' });
    };
    expect(typeof compileChecks).toBe('function');
  });

  it('publishes redundantly and handles the message once with the Redis store, leaving no keys', async () => {
    const name = `client-${uid()}`;
    const store = new RedisDedupStore({ redisServer, db: 4 });
    const client = orderClient(name, store);
    const seen: HandlerMessage[] = [];
    client.handler(name, (message) => {
      seen.push(message);
    });
    await client.listen();
    expect(await client.publish(name, { id: 7 })).toBe(2);
    await waitFor(() => seen.length === 1);
    // The keys go (all but the completed status and expires) only when the second copy was acked, so after
    // that the duplicate has been seen.
    const ref = { queue: name, uuid: seen[0]!.uuid };
    await waitFor(
      async () =>
        Object.keys(await store.inspect(ref))
          .sort()
          .join() === 'expires,status',
    );
    expect(seen).toHaveLength(1);
    expect(seen[0]?.json()).toEqual({ id: 7 });
    expect(seen[0]?.redundant).toBe(true);
    const health = await client.health();
    expect(health.publisherHealthy).toBe(true);
    expect(health.subscriber.map((s) => s.state)).toEqual(['consuming', 'consuming']);
    await client.stop();
    await store.close();
  });

  it('traces a queue through a temporary queue without touching the declared topology', async () => {
    const name = `trace-src-${uid()}`;
    const client = orderClient(name, new MemoryDedupStore());
    const traced: string[] = [];
    const handle = await client.trace([name], (message) => {
      traced.push(message.text());
    });
    expect(handle.queues[name]).toBe(traceQueueName(name));
    expect(client.topology.hasQueue(traceQueueName(name))).toBe(false);
    expect(client.topology.queue(name).autoDelete).toBe(false);
    await client.publish(name, { id: 1 });
    await waitFor(() => traced.length === 1);
    expect(traced).toEqual(['{"id":1}']);
    await handle.stop();
  });

  it("health() reports the store's ping, whatever the store: none before there is one", async () => {
    const config = { servers: servers.slice(0, 2), redisServer, redisDb: 4 };
    const health = async (store?: DedupStore): Promise<unknown> =>
      (await new Client({ config, ...(store ? { store } : {}) }).health()).store;
    // A producer never creates a store, so it has no store health.
    expect(await health()).toBeUndefined();
    expect(await health(new MemoryDedupStore())).toEqual({ ok: true });
    const redis = new RedisDedupStore({ redisServer, db: 4 });
    const down = new RedisDedupStore({
      redisServer: '127.0.0.1:1',
      failoverTimeout: 0.2,
      retryInterval: 0.05,
    });
    try {
      expect(await health(redis)).toEqual({ ok: true });
      expect(await health(down)).toEqual({
        ok: false,
        reason: 'no-redis-master',
        error: expect.stringMatching(/^no Redis master reachable for 0.2s \(127\.0\.0\.1:1\)/) as string,
      });
    } finally {
      await Promise.all([redis.close(), down.close()]);
    }
    // Any DedupStore: a store of one's own with a ping, and one without.
    const memory = new MemoryDedupStore();
    const failing: DedupStore = Object.assign(Object.create(memory) as DedupStore, {
      ping: () => Promise.reject(new Error('database on fire')),
    });
    expect(await health(failing)).toEqual({ ok: false, error: 'database on fire' });
    const withoutPing: DedupStore = Object.assign(Object.create(memory) as DedupStore, { ping: undefined });
    expect(await health(withoutPing)).toBeUndefined();
  });

  it('rejects handlers for unknown queues', () => {
    expect(() => new Client().handler('nope', () => undefined)).toThrow(/unknown queue/);
  });
});
