import {
  ConfigurationError,
  MemoryDedupStore,
  Outcome,
  Topology,
  UnknownQueueError,
  createConfig,
  type BeetleConfigInput,
  type ExchangeDefinition,
  type Payload,
  type QueueDefinition,
} from '@beetle/core';
import { type EncodeOptions } from '@beetle/core/kit';
import type { Delivery } from '@beetle/broker-amqp';
import {
  Subscriber,
  type ProcessedEvent,
  type SubscriberChannel,
  type SubscriberErrorEvent,
  type SubscriberPool,
} from '@beetle/subscriber';
import { getEventListeners } from 'node:events';
import { beforeEach, describe, expect, it } from 'vitest';
import { FakeClock, flush, rawDelivery, recordingStore, warningsLogger } from './helpers.js';
import { HOLD_MS } from '../src/copies.js';
import { FIRST_NOT_YET_TIMED_OUT_HOLD_MS } from '../src/requeue.js';

/** A consumer channel that records everything and lets the test deliver messages or kill it. */
class FakeChannel implements SubscriberChannel {
  readonly calls: string[] = [];
  readonly acked: number[] = [];
  readonly rejected: { tag: number; requeue: boolean }[] = [];
  readonly published: { exchange: string; key: string; body: string; properties: Record<string, unknown> }[] =
    [];
  readonly consumers = new Map<
    string,
    { queue: string; onDelivery: (d: Delivery) => void; onCancel: (() => void) | undefined }
  >();
  /** Queues whose declaration fails (e.g. to test retries). */
  readonly failDeclare = new Set<string>();
  closed = false;
  private nextTag = 1;
  private nextConsumer = 1;
  private readonly closeListeners: ((error: Error | undefined) => void)[] = [];

  constructor(readonly server: string) {}

  consume(queue: string, onDelivery: (delivery: Delivery) => void, onCancel?: () => void): Promise<string> {
    const tag = `ctag-${this.nextConsumer++}`;
    this.calls.push(`consume ${queue}`);
    this.consumers.set(tag, { queue, onDelivery, onCancel });
    return Promise.resolve(tag);
  }

  /** A broker-initiated basic.cancel (e.g. the queue was deleted). */
  brokerCancel(queue: string): void {
    const entry = [...this.consumers].find(([, c]) => c.queue === queue);
    if (!entry) throw new Error(`no consumer for ${queue} on ${this.server}`);
    this.consumers.delete(entry[0]);
    entry[1].onCancel?.();
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

  readonly republished: { queue: string; tag: number }[] = [];
  republish(queue: string, delivery: Delivery): Promise<void> {
    this.republished.push({ queue, tag: delivery.fields.deliveryTag });
    return Promise.resolve();
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
    if (this.failDeclare.has(queue.amqpName))
      return Promise.reject(new Error(`cannot declare ${queue.amqpName}`));
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
    const raw = rawDelivery(payload, options, queue);
    return this.deliverRaw(queue, raw.content, raw.properties);
  }

  /** Delivers raw content and properties (e.g. a non-Beetle message); returns its delivery tag. */
  deliverRaw(queue: string, content: Buffer, properties: Delivery['properties']): number {
    const consumer = [...this.consumers.values()].find((c) => c.queue === queue);
    if (!consumer) throw new Error(`no consumer for ${queue} on ${this.server}`);
    const deliveryTag = this.nextTag++;
    consumer.onDelivery({
      content,
      properties,
      fields: { deliveryTag, redelivered: false, exchange: queue, routingKey: queue, consumerTag: 'x' },
    });
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
  store = new MemoryDedupStore({ now: () => clock.nowMs(), completedStatusTtl: 0 });
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

  it('requeue: a copy in progress elsewhere goes back soon the first time, then is held 2 s, 4 s', async () => {
    const sub = subscriber();
    sub.register('orders', () => undefined, { attempts: 2, timeout: 60 });
    await sub.listen();
    const message = { ...id(), redundant: true };
    // Another process runs the message (its claim is in the store).
    await store.claim(
      { queue: 'orders', uuid: message.messageId! },
      { expiresAt: clock.now() + 3600, timeoutAt: clock.now() + 60 },
    );
    const channel = pool.channel(A);
    const heldFor: number[] = [];
    for (let i = 0; i < 3; i++) {
      const tag = channel.deliver('orders', 'x', message);
      await flush();
      const start = clock.nowMs();
      while (!channel.rejected.some((r) => r.tag === tag)) await clock.advance(50);
      heldFor.push(clock.nowMs() - start);
    }
    // The first sighting is most often the twin copy, whose handler is about to finish (requeue.ts).
    expect(heldFor).toEqual([FIRST_NOT_YET_TIMED_OUT_HOLD_MS, 2000, 4000]);
    expect(channel.rejected.every((r) => r.requeue)).toBe(true);
    expect(processed.map((p) => p.outcome)).toEqual(Array(3).fill(Outcome.HandlerNotYetTimedOut));
    await sub.stop();
  });

  it('dead lettering: not-ready copies are held only while at most half the prefetch is held; the rest go at once', async () => {
    const sub = subscriber({ prefetchCount: 4, subscriberConcurrency: 4 });
    sub.register('audit', () => undefined, { attempts: 2, timeout: 60 });
    await sub.listen();
    const messages = [id(), id(), id()].map((m) => ({ ...m, redundant: true }));
    for (const m of messages) {
      await store.claim(
        { queue: 'audit', uuid: m.messageId! },
        { expiresAt: clock.now() + 3600, timeoutAt: clock.now() + 60 },
      );
    }
    const channel = pool.channel(A);
    // First sightings go to the dead letter queue at once, as in Ruby.
    const first = messages.map((m) => channel.deliver('audit', 'x', m));
    await flush();
    expect(channel.rejected).toEqual(first.map((tag) => ({ tag, requeue: false })));
    // Second sightings: two (half the prefetch of 4) are held for the base delay, the third goes at once.
    const second = messages.map((m) => channel.deliver('audit', 'x', m));
    await flush();
    expect(channel.rejected.slice(3)).toEqual([{ tag: second[2], requeue: false }]);
    await clock.advance(1000);
    expect(channel.rejected.slice(4)).toEqual([
      { tag: second[0], requeue: false },
      { tag: second[1], requeue: false },
    ]);
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

  it('a slot freed while the consumers are being cancelled is not given to a delivery waiting for one', async () => {
    const sub = subscriber({ subscriberConcurrency: 1 });
    let release!: () => void;
    const started: string[] = [];
    sub.register('orders', async (m) => {
      started.push(m.text());
      if (m.text() === 'first') await new Promise<void>((resolve) => (release = resolve));
    });
    await sub.listen();
    const channel = pool.channel(A);
    const first = channel.deliver('orders', 'first', id());
    channel.deliver('orders', 'waiting', id());
    await flush();
    // basic.cancel takes its time: the running handler finishes meanwhile.
    const cancels: (() => void)[] = [];
    for (const c of [channel, pool.channel(B)]) {
      c.cancel = () => new Promise<void>((resolve) => cancels.push(resolve));
    }
    const stopping = sub.stop({ timeout: 10 });
    await flush();
    release();
    await flush();
    expect(started).toEqual(['first']);
    for (const done of cancels) done();
    expect(await stopping).toEqual({ abandoned: 0 });
    expect(started).toEqual(['first']);
    expect(channel.acked).toEqual([first]);
    expect(channel.rejected).toEqual([]);
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

describe('Subscriber: copies of a message in flight in this process', () => {
  it.each([1, 4])(
    'a copy from the other broker waits for the running one, then is acked as completed (concurrency %i)',
    async (concurrency) => {
      const sub = subscriber({ subscriberConcurrency: concurrency });
      const runs: string[] = [];
      const gates: (() => void)[] = [];
      sub.register('orders', async (m) => {
        runs.push(m.text());
        await new Promise<void>((resolve) => gates.push(resolve));
      });
      await sub.listen();
      const [channelA, channelB] = [pool.channel(A), pool.channel(B)];
      const copy = { ...id(), redundant: true };
      const tagA = channelA.deliver('orders', 'twice', copy);
      await flush();
      const tagB = channelB.deliver('orders', 'twice', copy);
      // Another message is not held up by the waiting copy (it holds no slot).
      const other = channelB.deliver('orders', 'other', id());
      await flush();
      // With one slot `other` waits for it; otherwise it runs alongside.
      expect(runs).toEqual(concurrency === 1 ? ['twice'] : ['twice', 'other']);
      expect((sub as unknown as { deliveries: { copies: { size: number } } }).deliveries.copies.size).toBe(2); // 'twice' and 'other'
      expect(channelB.acked).toEqual(concurrency === 1 ? [] : [other]);
      expect(channelB.rejected).toEqual([]);
      while (gates.length > 0) {
        gates.shift()?.();
        await flush();
      }
      expect(runs.sort()).toEqual(['other', 'twice']);
      expect(channelA.acked).toEqual([tagA]);
      expect(channelB.acked.sort()).toEqual([tagB, other].sort());
      expect([...channelA.rejected, ...channelB.rejected]).toEqual([]);
      expect(processed.map((p) => p.outcome)).toEqual([Outcome.OK, Outcome.OK, Outcome.OK]);
      expect(processed.filter((p) => p.message?.text() === 'twice').map((p) => p.server)).toEqual([A, B]);
      expect(processed.some((p) => p.outcome === Outcome.HandlerNotYetTimedOut)).toBe(false);
      // The second ack of the redundant message removed its keys; no requeue (or wait) timer is left.
      expect(store.size).toBe(0);
      expect(clock.pendingTimers).toBe(0);
      // The in-flight map only holds refs in flight: empty again.
      expect((sub as unknown as { deliveries: { copies: { size: number } } }).deliveries.copies.size).toBe(0);
      await sub.stop();
    },
  );

  it('copies that meet here cost three store calls: claim, complete, one acknowledged for both acks', async () => {
    const log: string[] = [];
    const config = createConfig({ servers: [A, B], subscriberConcurrency: 4 });
    const sub = new Subscriber({ config, topology, store: recordingStore(store, log), pool, clock });
    let release!: () => void;
    sub.register('orders', () => new Promise<void>((resolve) => (release = resolve)));
    await sub.listen();
    const copy = { ...id(), redundant: true };
    const tagA = pool.channel(A).deliver('orders', 'x', copy);
    await flush();
    const tagB = pool.channel(B).deliver('orders', 'x', copy);
    await flush();
    release();
    await flush();
    expect(pool.channel(A).acked).toEqual([tagA]);
    expect(pool.channel(B).acked).toEqual([tagB]);
    expect(log).toEqual(['store.claim', 'store.complete', 'store.acknowledged']);
    expect(store.size).toBe(0);
    await sub.stop();
  });

  describe('the ack count of a first copy is held for its twin', () => {
    const setUp = async (): Promise<{ sub: Subscriber; log: string[]; runs: () => number }> => {
      const log: string[] = [];
      const config = createConfig({ servers: [A, B], subscriberConcurrency: 4 });
      const sub = new Subscriber({ config, topology, store: recordingStore(store, log), pool, clock });
      let runs = 0;
      sub.register('orders', () => {
        runs++;
      });
      await sub.listen();
      return { sub, log, runs: () => runs };
    };
    const refOf = (copy: EncodeOptions) => ({ queue: 'orders', uuid: copy.messageId! });

    it('a twin arriving after the first copy left records both acks in one call', async () => {
      const { sub, log, runs } = await setUp();
      const copy = { ...id(), redundant: true };
      const tagA = pool.channel(A).deliver('orders', 'x', copy);
      await flush();
      expect(pool.channel(A).acked).toEqual([tagA]);
      expect(log).toEqual(['store.claim', 'store.complete']); // the ack count is held
      expect(await store.inspect(refOf(copy))).toMatchObject({ status: 'completed' });
      await clock.advance(HOLD_MS / 2);
      const tagB = pool.channel(B).deliver('orders', 'x', copy);
      await flush();
      expect(pool.channel(B).acked).toEqual([tagB]);
      expect(runs()).toBe(1);
      // One acknowledged call counting both acks: the keys are gone.
      expect(log).toEqual(['store.claim', 'store.complete', 'store.acknowledged']);
      expect(store.size).toBe(0);
      await clock.advance(HOLD_MS);
      expect(log).toHaveLength(3);
      await sub.stop();
    });

    it('a held count whose twin does not come is recorded after the hold, as one ack', async () => {
      const { sub, log } = await setUp();
      const copy = { ...id(), redundant: true };
      pool.channel(A).deliver('orders', 'x', copy);
      await flush();
      expect(log).toEqual(['store.claim', 'store.complete']);
      await clock.advance(HOLD_MS + 1000);
      await flush();
      expect(log).toEqual(['store.claim', 'store.complete', 'store.acknowledged']);
      expect(await store.inspect(refOf(copy))).toMatchObject({ status: 'completed', ack_count: '1' });
      expect(clock.pendingTimers).toBe(0); // the sweep stops when nothing is held
      // The twin, late: known completed, acked, its ack counted: the keys are gone.
      pool.channel(B).deliver('orders', 'x', copy);
      await flush();
      expect(store.size).toBe(0);
      await sub.stop();
    });

    it('stop waits for held counts at most its timeout (a store that does not answer)', async () => {
      const { logger, warnings } = warningsLogger();
      const hanging = new Proxy(store, {
        get: (target, property, receiver) =>
          property === 'acknowledged'
            ? () => new Promise<void>(() => undefined)
            : (Reflect.get(target, property, receiver) as unknown),
      });
      const config = createConfig({ servers: [A, B] });
      const sub = new Subscriber({ config, topology, store: hanging, pool, clock, logger });
      sub.register('orders', () => undefined);
      await sub.listen();
      pool.channel(A).deliver('orders', 'x', { ...id(), redundant: true });
      await flush();
      let stopped = false;
      const stopping = sub.stop({ timeout: 2 }).then(() => (stopped = true));
      await flush();
      await clock.advance(1900);
      expect(stopped).toBe(false);
      await clock.advance(200);
      await stopping;
      expect(warnings).toContain(
        'stop timeout: held ack counts not recorded yet; their dedup keys stay until garbage collected',
      );
    });

    it('stop records the held counts', async () => {
      const { sub, log } = await setUp();
      const copy = { ...id(), redundant: true };
      pool.channel(A).deliver('orders', 'x', copy);
      await flush();
      expect(log).toEqual(['store.claim', 'store.complete']);
      await sub.stop();
      expect(log).toEqual(['store.claim', 'store.complete', 'store.acknowledged']);
      expect(await store.inspect(refOf(copy))).toMatchObject({ ack_count: '1' });
      expect(clock.pendingTimers).toBe(0);
    });
  });

  it('a copy stops waiting after the handler timeout + 10 s when the copy before hangs in a hook', async () => {
    const { logger, warnings } = warningsLogger();
    const config = createConfig({ servers: [A, B], subscriberConcurrency: 2 });
    const sub = new Subscriber({ config, topology, store, pool, clock, logger });
    let runs = 0;
    sub.register(
      'orders',
      {
        process: () => {
          runs++;
        },
        postProcess: () => new Promise<void>(() => undefined), // never settles
      },
      { timeout: 5 },
    );
    await sub.listen();
    const copy = { ...id(), redundant: true };
    const tagA = pool.channel(A).deliver('orders', 'x', copy);
    await flush();
    const tagB = pool.channel(B).deliver('orders', 'x', copy);
    await clock.advance(14_000);
    expect(pool.channel(A).acked).toEqual([tagA]);
    expect(pool.channel(B).acked).toEqual([]); // still waiting
    await clock.advance(2_000);
    // Past 5 + 10 s it went on: the store says completed, so it is acked without running the handler.
    expect(warnings).toContain(
      'a copy of this message is still being processed here; going on without waiting for it',
    );
    expect(pool.channel(B).acked).toEqual([tagB]);
    expect(runs).toBe(1);
    expect(store.size).toBe(0);
  });

  it('three copies line up; each runs the state machine after the one before (the store decides)', async () => {
    const sub = subscriber({ subscriberConcurrency: 3 });
    let runs = 0;
    const gates: (() => void)[] = [];
    sub.register(
      'orders',
      async () => {
        runs++;
        await new Promise<void>((resolve) => gates.push(resolve));
        throw new Error('crash');
      },
      { attempts: 3, exceptions: 2, delay: 5 },
    );
    await sub.listen();
    const copy = { ...id(), redundant: true };
    pool.channel(A).deliver('orders', 'x', copy);
    await flush();
    pool.channel(B).deliver('orders', 'x', copy);
    pool.channel(A).deliver('orders', 'x', copy); // e.g. a redelivery
    await flush();
    expect(runs).toBe(1);
    gates.shift()?.();
    await flush();
    // The first crashed; the others see the retry delay (Delayed), as the store says; none ran the handler.
    expect(processed.map((p) => p.outcome)).toEqual([Outcome.HandlerCrash, Outcome.Delayed, Outcome.Delayed]);
    expect(runs).toBe(1);
    await sub.stop();
  });

  it('a stop while a copy waits leaves it unsettled for redelivery', async () => {
    const sub = subscriber({ subscriberConcurrency: 2 });
    let release!: () => void;
    sub.register('orders', () => new Promise<void>((resolve) => (release = resolve)));
    await sub.listen();
    const copy = { ...id(), redundant: true };
    const tagA = pool.channel(A).deliver('orders', 'x', copy);
    await flush();
    pool.channel(B).deliver('orders', 'x', copy);
    await flush();
    const channelB = pool.channel(B);
    const stopping = sub.stop({ timeout: 10 });
    await flush();
    release();
    expect(await stopping).toEqual({ abandoned: 0 });
    expect(pool.channels.find((c) => c.server === A)?.acked).toEqual([tagA]);
    expect(channelB.acked).toEqual([]);
    expect(channelB.rejected).toEqual([]);
    expect(processed).toHaveLength(1);
    expect(clock.pendingTimers).toBe(0);
  });

  it('the wait is bounded by the handler timeout + grace; then the store decides', async () => {
    const sub = subscriber({ subscriberConcurrency: 2 });
    let hang = true;
    let releaseHook!: () => void;
    sub.register(
      'orders',
      {
        process: () => 'done',
        // The first copy's processing never finishes (its hook hangs) although the store says completed.
        postProcess: () => (hang ? new Promise<void>((resolve) => (releaseHook = resolve)) : undefined),
      },
      { timeout: 5 },
    );
    await sub.listen();
    const copy = { ...id(), redundant: true };
    const tagA = pool.channel(A).deliver('orders', 'x', copy);
    await flush();
    hang = false;
    const tagB = pool.channel(B).deliver('orders', 'x', copy);
    await flush();
    expect(pool.channel(A).acked).toEqual([tagA]);
    await clock.advance(14_999);
    expect(pool.channel(B).acked).toEqual([]);
    await clock.advance(1);
    expect(pool.channel(B).acked).toEqual([tagB]);
    expect(processed.map((p) => p.outcome)).toEqual([Outcome.OK]);
    releaseHook();
    await flush();
    expect(processed).toHaveLength(2);
    await sub.stop();
  });

  it('does not key undecodable deliveries (same message id, no Beetle headers): both handled at once', async () => {
    const sub = subscriber({ subscriberConcurrency: 2 });
    const entered: string[] = [];
    const gates: (() => void)[] = [];
    sub.register('orders', {
      process: () => undefined,
      error: (_error, message) => {
        entered.push(message.body.toString());
        return new Promise<void>((resolve) => gates.push(resolve));
      },
    });
    await sub.listen();
    pool.channel(A).deliverRaw('orders', Buffer.from('one'), { messageId: 'same-id' });
    pool.channel(B).deliverRaw('orders', Buffer.from('two'), { messageId: 'same-id' });
    await flush();
    expect(entered).toEqual(['one', 'two']);
    for (const gate of gates) gate();
    await flush();
    expect(processed.map((p) => p.outcome)).toEqual([Outcome.DecodingError, Outcome.DecodingError]);
    await sub.stop();
  });
});

describe('Subscriber: many concurrent handlers', () => {
  it('50 concurrent handlers share one stop-signal listener (no MaxListenersExceededWarning)', async () => {
    const warnings: Error[] = [];
    const onWarning = (warning: Error): void => void warnings.push(warning);
    process.on('warning', onWarning);
    try {
      const sub = subscriber({ subscriberConcurrency: 50, prefetchCount: 50 });
      const gates: (() => void)[] = [];
      sub.register('orders', () => new Promise<void>((resolve) => gates.push(resolve)), { attempts: 2 });
      await sub.listen();
      for (let i = 0; i < 50; i++) pool.channel(i % 2 === 0 ? A : B).deliver('orders', i, id());
      await flush();
      expect(gates).toHaveLength(50);
      const stopSignal = (sub as unknown as { deliveries: { stopController: AbortController } }).deliveries
        .stopController.signal;
      expect(getEventListeners(stopSignal, 'abort')).toHaveLength(1);
      for (const gate of gates.splice(0)) gate();
      await flush();
      expect(processed).toHaveLength(50);
      expect(getEventListeners(stopSignal, 'abort')).toHaveLength(1);
      await sub.stop();
      await new Promise((resolve) => setImmediate(resolve));
      expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });
});

describe('Subscriber: consumers cancelled by the broker (queue deleted)', () => {
  let errors: SubscriberErrorEvent[];

  function cancelSubscriber(): Subscriber {
    errors = [];
    const sub = subscriber({ subscriberReconnectDelay: 1, subscriberReconnectMaxDelay: 4 });
    sub.on('error', (event) => errors.push(event));
    sub.register('orders', () => 'ok');
    sub.register('audit', () => 'ok');
    return sub;
  }

  const consuming = (sub: Subscriber, server: string): readonly string[] | undefined =>
    sub.status().find((s) => s.server === server)?.consuming;

  it('reports it, drops the queue from status(), then sets the queue up again and consumes it after the backoff', async () => {
    const sub = cancelSubscriber();
    await sub.listen();
    const channel = pool.channel(A);
    const before = channel.calls.length;
    const policyMessages = channel.published.length;
    channel.brokerCancel('orders');
    expect(errors).toMatchObject([{ phase: 'consume', server: A, queue: 'orders' }]);
    expect(String(errors[0]?.error)).toContain('cancelled by the broker');
    expect(consuming(sub, A)).toEqual(['audit']);
    expect(consuming(sub, B)).toEqual(expect.arrayContaining(['orders', 'audit']));
    expect(sub.status().every((s) => s.state === 'consuming')).toBe(true);
    // random() = 0: half the first reconnect delay.
    await clock.advance(499);
    expect(channel.calls.slice(before)).toEqual([]);
    await clock.advance(1);
    const again = channel.calls.slice(before);
    expect(again).toContain('queue orders');
    expect(again).toContain('bind orders orders orders');
    expect(again).toContain('bind orders shop order.*');
    expect(again.at(-1)).toBe('consume orders');
    expect(again.filter((c) => c.startsWith('consume'))).toEqual(['consume orders']);
    expect(channel.published.length).toBe(policyMessages + 1); // the queue's policies again
    expect(pool.channel(A)).toBe(channel); // same channel, no reconnect
    expect(consuming(sub, A)).toEqual(expect.arrayContaining(['orders', 'audit']));
    channel.deliver('orders', 'after the cancel', id());
    await flush();
    expect(processed.map((p) => [p.server, p.outcome])).toEqual([[A, Outcome.OK]]);
    expect(errors).toHaveLength(1);
    await sub.stop();
  });

  it('retries a failing setup with capped exponential backoff', async () => {
    const sub = cancelSubscriber();
    await sub.listen();
    const channel = pool.channel(A);
    channel.failDeclare.add('orders');
    const attempts = (): number => channel.calls.filter((c) => c === 'queue orders').length;
    const initial = attempts();
    channel.brokerCancel('orders');
    await clock.advance(500);
    expect(attempts()).toBe(initial + 1);
    expect(errors.map((e) => e.phase)).toEqual(['consume', 'consume']);
    await clock.advance(999);
    expect(attempts()).toBe(initial + 1);
    await clock.advance(1);
    expect(attempts()).toBe(initial + 2);
    channel.failDeclare.delete('orders');
    await clock.advance(2000);
    expect(attempts()).toBe(initial + 3);
    expect(consuming(sub, A)).toEqual(expect.arrayContaining(['orders', 'audit']));
    expect(channel.calls.at(-1)).toBe('consume orders');
    await sub.stop();
  });

  it('not while paused (a resume sets it up again), and not after stop', async () => {
    const sub = cancelSubscriber();
    await sub.listen();
    const channel = pool.channel(A);
    channel.brokerCancel('orders');
    await sub.pauseListening(['orders']);
    const before = channel.calls.length;
    await clock.advance(10_000);
    expect(channel.calls.slice(before)).toEqual([]);
    await sub.resumeListening(['orders']);
    const resumed = channel.calls.slice(before);
    expect(resumed).toContain('queue orders');
    expect(resumed.at(-1)).toBe('consume orders');
    expect(consuming(sub, A)).toEqual(expect.arrayContaining(['orders', 'audit']));

    channel.brokerCancel('audit');
    await sub.stop();
    expect(clock.pendingTimers).toBe(0);
    const afterStop = channel.calls.length;
    await clock.advance(10_000);
    expect(channel.calls.slice(afterStop)).toEqual([]);
  });

  it('a channel loss before the recovery leaves it to the reconnect (one consumer per queue)', async () => {
    const sub = cancelSubscriber();
    await sub.listen();
    pool.channel(A).brokerCancel('orders');
    pool.channel(A).kill();
    await clock.advance(10_000);
    const calls = pool.channel(A).calls;
    expect(calls.filter((c) => c.startsWith('consume')).sort()).toEqual(['consume audit', 'consume orders']);
    expect(consuming(sub, A)).toEqual(expect.arrayContaining(['orders', 'audit']));
    await sub.stop();
  });
});
