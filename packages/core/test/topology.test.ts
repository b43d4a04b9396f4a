import { describe, expect, expectTypeOf, it } from 'vitest';
import { ConfigurationError, UnknownMessageError, UnknownQueueError } from '../src/errors.js';
import { Topology } from '../src/topology.js';

describe('Topology', () => {
  it('pre-registers the policy exchange, queue and binding like a fresh Ruby client', () => {
    const t = new Topology();
    expect(t.exchanges().map((e) => e.name)).toEqual(['beetle-policies']);
    expect(t.queues().map((q) => q.name)).toEqual(['beetle-policy-updates']);
    expect(t.bindings()).toEqual([
      { queue: 'beetle-policy-updates', exchange: 'beetle-policies', key: 'beetle.policy.update' },
    ]);
    expect(t.queue('beetle-policy-updates')).toMatchObject({ lazy: false, deadLettering: false });
    expect(t.messages()).toEqual([]);
  });

  it('forces durable topic exchanges', () => {
    const t = new Topology().registerExchange('ex', { autoDelete: true });
    expect(t.exchange('ex')).toMatchObject({
      type: 'topic',
      durable: true,
      autoDelete: true,
      internal: false,
    });
  });

  it('gives queues Ruby defaults and an implicit first binding', () => {
    const t = new Topology({ deadLetteringEnabled: true, lazyQueuesEnabled: true, deadLetteringMsgTtl: 500 });
    t.registerQueue('orders');
    expect(t.queue('orders')).toEqual({
      name: 'orders',
      amqpName: 'orders',
      durable: true,
      exclusive: false,
      autoDelete: false,
      arguments: undefined,
      lazy: true,
      deadLettering: true,
      deadLetteringMsgTtl: 500,
    });
    expect(t.bindings('orders')).toEqual([{ queue: 'orders', exchange: 'orders', key: 'orders' }]);
    expect(t.hasExchange('orders')).toBe(true);
  });

  it('binds a queue to several exchanges and lists queues per exchange', () => {
    const t = new Topology()
      .registerQueue('q', { exchange: 'a', key: 'x.#' })
      .registerBinding('q', { exchange: 'b', key: 'y' })
      .registerBinding('q', { exchange: 'b', key: 'y' });
    expect(t.bindings('q')).toHaveLength(2);
    expect(t.queuesOfExchange('b').map((q) => q.name)).toEqual(['q']);
    expect(t.exchangesOfQueues(['q']).map((e) => e.name)).toEqual(['a', 'b']);
  });

  it('rejects duplicates and unknown names with typed errors', () => {
    const t = new Topology().registerQueue('q').registerMessage('m');
    expect(() => t.registerQueue('q')).toThrow(ConfigurationError);
    expect(() => t.registerMessage('m')).toThrow(ConfigurationError);
    expect(() => t.registerExchange('q')).toThrow(ConfigurationError);
    expect(() => t.registerBinding('nope')).toThrow(UnknownQueueError);
    expect(() => t.message('nope')).toThrow(UnknownMessageError);
    expect(() => t.registerQueue('a:b')).toThrow(/must not contain ":"/);
    expect(() => t.registerQueue('')).toThrow(ConfigurationError);
  });

  it('registers messages with Ruby defaults and records their payload types', () => {
    const t = new Topology().registerMessage<'order.created', { id: number }>('order.created', {
      redundant: true,
    });
    expect(t.message('order.created')).toEqual({
      name: 'order.created',
      exchange: 'order.created',
      key: 'order.created',
      ttl: 86_400,
      redundant: true,
      persistent: true,
      headers: undefined,
      mandatory: false,
      priority: undefined,
      replyTo: undefined,
    });
    type Map = typeof t extends Topology<infer M> ? M : never;
    expectTypeOf<Map['order.created']>().toEqualTypeOf<{ id: number }>();
  });
});
