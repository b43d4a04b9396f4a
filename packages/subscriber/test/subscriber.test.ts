import {
  ConfigurationError,
  MemoryDedupStore,
  Outcome,
  Topology,
  UnknownQueueError,
  createConfig,
  type BeetleConfigInput,
  type EncodeOptions,
  type ExchangeDefinition,
  type Payload,
  type QueueDefinition,
} from '@beetle/core';
import {
  Subscriber,
  type Delivery,
  type ProcessedEvent,
  type SubscriberChannel,
  type SubscriberPool,
} from '@beetle/subscriber';
import { beforeEach, describe, expect, it } from 'vitest';
import { FakeClock, flush, rawDelivery } from './helpers.js';

/** A consumer channel that records everything and lets the test deliver messages or kill it. */
class FakeChannel implements SubscriberChannel {
  readonly calls: string[] = [];
  readonly acked: number[] = [];
  readonly rejected: { tag: number; requeue: boolean }[] = [];
  readonly published: { exchange: string; key: string; body: string; properties: Record<string, unknown> }[] =
    [];
  readonly consumers = new Map<string, { queue: string; onDelivery: (d: Delivery) => void }>();
  closed = false;
  private nextTag = 1;
  private nextConsumer = 1;
  private readonly closeListeners: ((error: Error | undefined) => void)[] = [];

  constructor(readonly server: string) {}

  consume(queue: string, onDelivery: (delivery: Delivery) => void): Promise<string> {
    const tag = `ctag-${this.nextConsumer++}`;
    this.calls.push(`consume ${queue}`);
    this.consumers.set(tag, { queue, onDelivery });
    return Promise.resolve(tag);
  }

  cancel(consumerTag: string): Promise<void> {
    this.calls.push(`cancel ${this.consumers.get(consumerTag)?.queue}`);
    this.consumers.delete(consumerTag);
    return Promise.resolve();
  }

  ack(delivery: Delivery): boolean {
    if (this.closed) return false;
    this.acked.push(delivery.fields.deliveryTag);
    return true;
  }

  reject(delivery: Delivery, requeue: boolean): boolean {
    if (this.closed) return false;
    this.rejected.push({ tag: delivery.fields.deliveryTag, requeue });
    return true;
  }

  publish(exchange: string, key: string, body: Buffer, properties: Record<string, unknown>): Promise<void> {
    this.published.push({ exchange, key, body: body.toString(), properties });
    return Promise.resolve();
  }

  onClose(listener: (error: Error | undefined) => void): void {
    this.closeListeners.push(listener);
  }

  close(): Promise<void> {
    this.calls.push('close');
    this.kill(undefined);
    return Promise.resolve();
  }

  kill(error: Error | undefined = new Error('connection lost')): void {
    if (this.closed) return;
    this.closed = true;
    this.consumers.clear();
    for (const listener of this.closeListeners.splice(0)) listener(error);
  }

  declareExchange(exchange: ExchangeDefinition): Promise<void> {
    this.calls.push(`exchange ${exchange.name}`);
    return Promise.resolve();
  }

  declareQueue(queue: QueueDefinition): Promise<void> {
    this.calls.push(`queue ${queue.amqpName}`);
    return Promise.resolve();
  }

  bindQueue(queue: string, exchange: string, key: string): Promise<void> {
    this.calls.push(`bind ${queue} ${exchange} ${key}`);
    return Promise.resolve();
  }

  queueLength(): Promise<number> {
    return Promise.resolve(0);
  }

  purgeQueue(): Promise<void> {
    return Promise.resolve();
  }

  /** Delivers a message to the consumer of `queue`; returns its delivery tag. */
  deliver(queue: string, payload: Payload, options: EncodeOptions = {}): number {
    const consumer = [...this.consumers.values()].find((c) => c.queue === queue);
    if (!consumer) throw new Error(`no consumer for ${queue} on ${this.server}`);
    const raw = rawDelivery(payload, options, queue);
    const deliveryTag = this.nextTag++;
    consumer.onDelivery({ ...raw, fields: { ...raw.fields, deliveryTag, consumerTag: 'x' } });
    return deliveryTag;
  }
}

class FakePool implements SubscriberPool {
  readonly channels: FakeChannel[] = [];
  readonly unreachable = new Set<string>();
  readonly opened: string[] = [];

  get(server: string): { openConsumerChannel(prefetch: number): Promise<SubscriberChannel> } {
    return {
      openConsumerChannel: () => {
        this.opened.push(server);
        if (this.unreachable.has(server)) return Promise.reject(new Error(`${server} unreachable`));
        const channel = new FakeChannel(server);
        this.channels.push(channel);
        return Promise.resolve(channel);
      },
    };
  }

  /** The live channel of a server. */
  channel(server: string): FakeChannel {
    const channel = this.channels.filter((c) => c.server === server && !c.closed).at(-1);
    if (!channel) throw new Error(`no open channel on ${server}`);
    return channel;
  }
}

const A = 'a:5672';
const B = 'b:5672';

let clock: FakeClock;
let pool: FakePool;
let store: MemoryDedupStore;
let topology: Topology;
let processed: ProcessedEvent[];

beforeEach(() => {
  clock = new FakeClock();
  pool = new FakePool();
  store = new MemoryDedupStore({ now: () => clock.nowMs() });
  topology = new Topology();
  topology.registerQueue('orders');
  topology.registerQueue('audit', { deadLettering: true });
  topology.registerBinding('orders', { exchange: 'shop', key: 'order.*' });
  processed = [];
});

function subscriber(input: BeetleConfigInput = {}): Subscriber {
  const config = createConfig({ servers: [A, B], subscriberReconnectDelay: 1, ...input });
  const sub = new Subscriber({ config, topology, store, pool, clock, random: () => 0 });
  sub.on('processed', (event) => processed.push(event));
  return sub;
}

/** Each message gets its own id. */
let seq = 0;
const id = (): EncodeOptions => ({ messageId: `00000000-0000-4000-8000-${String(++seq).padStart(12, '0')}` });

describe('Subscriber: registration and listening', () => {
  it('rejects unknown queues and queues without a handler', async () => {
    const sub = subscriber();
    expect(() => sub.register('nope', () => 1)).toThrow(UnknownQueueError);
    sub.register('orders', () => 1);
    expect(() => sub.register('orders', () => 1)).toThrow(ConfigurationError);
    await expect(sub.listen(['audit'])).rejects.toThrow(ConfigurationError);
    await expect(subscriber().listen()).rejects.toThrow(ConfigurationError);
  });

  it('declares exchanges, queues and bindings, then consumes, on every broker', async () => {
    const sub = subscriber();
    sub.register('orders', () => 1);
    const status = await sub.listen();
    expect(status.map((s) => [s.server, s.state, s.consuming])).toEqual(
      expect.arrayContaining([
        [A, 'consuming', ['orders']],
        [B, 'consuming', ['orders']],
      ]),
    );
    const calls = pool.channel(A).calls;
    expect(calls.slice(0, 2)).toEqual(['exchange orders', 'exchange shop']);
    expect(calls).toContain('queue orders');
    expect(calls).toContain('bind orders orders orders');
    expect(calls).toContain('bind orders shop order.*');
    expect(calls.at(-1)).toBe('consume orders');
    // The policy update message went out on the consumer channel.
    expect(pool.channel(A).published.map((p) => p.key)).toEqual(['beetle.policy.update']);
    await sub.stop();
  });

  it('keeps consuming on the other brokers when one is unreachable, and retries it with backoff', async () => {
    pool.unreachable.add(B);
    const sub = subscriber({ subscriberReconnectDelay: 1, subscriberReconnectMaxDelay: 4 });
    sub.register('orders', () => 'ok');
    const status = await sub.listen();
    expect(Object.fromEntries(status.map((s) => [s.server, s.state]))).toEqual({
      [A]: 'consuming',
      [B]: 'disconnected',
    });
    pool.channel(A).deliver('orders', 'x', id());
    await flush();
    expect(processed.map((p) => p.outcome)).toEqual([Outcome.OK]);
    // random() = 0 → delays of half the ceiling: 0.5 s, 1 s, 2 s, 2 s …
    const attempts = (): number => pool.opened.filter((s) => s === B).length;
    expect(attempts()).toBe(1);
    await clock.advance(499);
    expect(attempts()).toBe(1);
    await clock.advance(1);
    expect(attempts()).toBe(2);
    await clock.advance(1000);
    expect(attempts()).toBe(3);
    await clock.advance(2000);
    expect(attempts()).toBe(4);
    pool.unreachable.delete(B);
    await clock.advance(2000);
    expect(attempts()).toBe(5);
    expect(sub.status().find((s) => s.server === B)).toMatchObject({ state: 'consuming', failures: 0 });
    await sub.stop();
  });

  it('reconnects a broker whose channel died and restores its consumers, without touching the others', async () => {
    const sub = subscriber();
    const events: string[] = [];
    sub.on('disconnected', (e) => events.push(`disconnected ${e.server}`));
    sub.on('connected', (e) => events.push(`connected ${e.server}`));
    sub.register('orders', () => 'ok');
    await sub.listen();
    events.length = 0;
    const channelB = pool.channel(B);
    pool.channel(A).kill();
    expect(sub.status().find((s) => s.server === A)?.state).toBe('disconnected');
    await clock.advance(1000);
    expect(events).toEqual([`disconnected ${A}`, `connected ${A}`]);
    expect(pool.channel(A).calls.at(-1)).toBe('consume orders');
    expect(pool.channel(B)).toBe(channelB);
    pool.channel(A).deliver('orders', 'after reconnect', id());
    await flush();
    expect(processed).toHaveLength(1);
    await sub.stop();
  });
});

describe('Subscriber: deliveries', () => {
  it('runs at most subscriberConcurrency handlers at once', async () => {
    const sub = subscriber({ subscriberConcurrency: 2 });
    let running = 0;
    let peak = 0;
    const gates: (() => void)[] = [];
    sub.register('orders', async () => {
      running++;
      peak = Math.max(peak, running);
      await new Promise<void>((resolve) => gates.push(resolve));
      running--;
    });
    await sub.listen();
    for (let i = 0; i < 3; i++) pool.channel(A).deliver('orders', i, id());
    pool.channel(B).deliver('orders', 3, id());
    await flush();
    expect(running).toBe(2);
    gates.shift()?.();
    await flush();
    expect(running).toBe(2);
    while (gates.length > 0) {
      gates.shift()?.();
      await flush();
    }
    expect(processed).toHaveLength(4);
    expect(peak).toBe(2);
    await sub.stop();
  });

  it('requeues a rejected delivery after rejectRequeueDelay without blocking other deliveries', async () => {
    const sub = subscriber({ subscriberConcurrency: 1 });
    sub.register(
      'orders',
      (m) => {
        if (m.text() === 'crash') throw new Error('crash');
      },
      { attempts: 3, exceptions: 2 },
    );
    await sub.listen();
    const channel = pool.channel(A);
    const crashTag = channel.deliver('orders', 'crash', id());
    const okTag = channel.deliver('orders', 'fine', id());
    await flush();
    expect(processed.map((p) => p.outcome)).toEqual([Outcome.HandlerCrash, Outcome.OK]);
    expect(channel.acked).toEqual([okTag]);
    expect(channel.rejected).toEqual([]);
    await clock.advance(999);
    expect(channel.rejected).toEqual([]);
    await clock.advance(1);
    expect(channel.rejected).toEqual([{ tag: crashTag, requeue: true }]);
    await sub.stop();
  });

  it('rejects to the dead letter queue at once when the queue has dead lettering', async () => {
    const sub = subscriber();
    sub.register(
      'audit',
      () => {
        throw new Error('x');
      },
      { attempts: 2, exceptions: 1 },
    );
    await sub.listen();
    const tag = pool.channel(A).deliver('audit', 'a', id());
    await flush();
    expect(pool.channel(A).rejected).toEqual([{ tag, requeue: false }]);
    expect(pool.channel(A).calls).toContain('queue audit');
    await sub.stop();
  });

  it('publishes RPC replies on the consumer channel: exchange "", not persistent, status header', async () => {
    const sub = subscriber();
    sub.register('orders', (m) => `re: ${m.text()}`);
    await sub.listen();
    pool.channel(A).deliver('orders', 'ping', { ...id(), replyTo: 'amq.gen-reply' });
    await flush();
    expect(pool.channel(A).published.at(-1)).toEqual({
      exchange: '',
      key: 'amq.gen-reply',
      body: 're: ping',
      properties: { deliveryMode: 1, headers: { status: 'OK' } },
    });
    await sub.stop();
  });

  it('pauses and resumes consumers on all brokers', async () => {
    const sub = subscriber();
    sub.register('orders', () => 1);
    sub.register('audit', () => 1);
    await sub.listen();
    await sub.pauseListening(['orders']);
    for (const server of [A, B]) {
      expect(pool.channel(server).calls.at(-1)).toBe('cancel orders');
      expect(sub.status().find((s) => s.server === server)?.consuming).toEqual(['audit']);
    }
    // A reconnect while paused does not resubscribe the paused queue.
    pool.channel(A).kill();
    await clock.advance(1000);
    expect(pool.channel(A).calls.filter((c) => c.startsWith('consume'))).toEqual(['consume audit']);
    await sub.resumeListening(['orders']);
    for (const server of [A, B]) expect(pool.channel(server).calls.at(-1)).toBe('consume orders');
    await expect(sub.pauseListening(['unknown'])).rejects.toThrow(UnknownQueueError);
    await sub.stop();
  });
});

describe('Subscriber: stop', () => {
  it('cancels consumers, finishes running handlers (acked), leaves waiting and late deliveries unsettled', async () => {
    const sub = subscriber({ subscriberConcurrency: 1 });
    let release!: () => void;
    const started: string[] = [];
    sub.register(
      'orders',
      async (m) => {
        started.push(m.text());
        if (m.text() === 'first') await new Promise<void>((resolve) => (release = resolve));
      },
      { attempts: 2 },
    );
    await sub.listen();
    const channel = pool.channel(A);
    const first = channel.deliver('orders', 'first', id());
    const consumer = [...channel.consumers.values()][0]!;
    channel.deliver('orders', 'waiting', id());
    await flush();
    const stopping = sub.stop({ timeout: 10 });
    await flush();
    expect(channel.calls).toContain('cancel orders');
    expect(channel.closed).toBe(false);
    // A delivery that was already on its way when the consumer was cancelled.
    const raw = rawDelivery('late', id(), 'orders');
    consumer.onDelivery({ ...raw, fields: { ...raw.fields, deliveryTag: 99, consumerTag: 'x' } });
    release();
    expect(await stopping).toEqual({ abandoned: 0 });
    expect(started).toEqual(['first']);
    expect(channel.acked).toEqual([first]);
    expect(channel.rejected).toEqual([]);
    expect(channel.closed).toBe(true);
    expect(store.size).toBe(0);
  });

  it('abandons handlers still running at the deadline: signal aborted, delivery unsettled, then closes', async () => {
    const sub = subscriber();
    let signal: AbortSignal | undefined;
    const abandoned: string[] = [];
    sub.on('abandoned', (e) => abandoned.push(e.message?.text() ?? '?'));
    sub.register(
      'orders',
      (_m, ctx) => {
        signal = ctx.signal;
        return new Promise(() => undefined);
      },
      { attempts: 2 },
    );
    await sub.listen();
    const channel = pool.channel(A);
    channel.deliver('orders', 'stuck', id());
    await flush();
    const stopping = sub.stop({ timeout: 2 });
    await clock.advance(2000);
    expect(await stopping).toEqual({ abandoned: 1 });
    expect(signal?.aborted).toBe(true);
    expect(abandoned).toEqual(['stuck']);
    expect(channel.acked).toEqual([]);
    expect(channel.rejected).toEqual([]);
    expect(channel.closed).toBe(true);
  });

  it('flushes pending requeues at stop (rejects them before closing the channel)', async () => {
    const sub = subscriber();
    sub.register(
      'orders',
      () => {
        throw new Error('x');
      },
      { attempts: 2, exceptions: 1 },
    );
    await sub.listen();
    const channel = pool.channel(A);
    const tag = channel.deliver('orders', 'x', id());
    await flush();
    expect(channel.rejected).toEqual([]);
    await sub.stop();
    expect(channel.rejected).toEqual([{ tag, requeue: true }]);
    expect(clock.pendingTimers).toBe(0);
  });
});
