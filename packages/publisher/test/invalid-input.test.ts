import { afterEach, describe, expect, it } from 'vitest';
import { Topology, type Headers } from '@beetle/core';
import { BrokerPool, type BrokerConnection, type PublishChannel } from '@beetle/broker-amqp';
import { Publisher, type PublishOptions } from '@beetle/publisher';
import { cleanup, config, drain, servers, uid } from '../../broker-amqp/test/helpers.js';

const [s1, s2] = servers as [string, string];
const publishers: Publisher[] = [];
const names: { queues: string[]; exchanges: string[] } = { queues: [], exchanges: [] };

afterEach(async () => {
  await Promise.all(publishers.splice(0).map((p) => p.close({ timeout: 2 })));
  await cleanup({ queues: names.queues.splice(0), exchanges: names.exchanges.splice(0) });
});

/** A publisher of one message `name` (bound with `#`, so any routing key reaches the queue), and what it did. */
function setup(
  options: { redundant?: boolean; servers?: string[]; frameMax?: number; lazySetup?: boolean } = {},
): { name: string; p: Publisher; events: string[] } {
  const name = `bt-inv-${uid()}`;
  names.queues.push(name);
  names.exchanges.push(name);
  const topology = new Topology()
    .registerQueue(name, { key: '#' })
    .registerMessage(name, { redundant: options.redundant ?? false });
  const p = new Publisher({
    config: config({
      servers: options.servers ?? [s1, s2],
      // 3 s: a confirm matched to the wrong publish shows as a 3 s stall, then a killed connection.
      publisherReadResponseTimeout: 3,
      publisherLazyQueueSetup: options.lazySetup ?? true,
      ...(options.frameMax === undefined ? {} : { frameMax: options.frameMax }),
    }),
    topology,
  });
  publishers.push(p);
  const events: string[] = [];
  p.on('failover', (e) => events.push(`failover ${e.server}`));
  p.on('brokerDead', (e) => events.push(`dead ${e.server}`));
  p.on('partial', (e) => events.push(`partial ${e.server}`));
  return { name, p, events };
}

interface Rejection {
  name?: string;
  reason?: string;
  field?: string;
}

/** Publishes and describes the rejection (or `'resolved'`), and whether it came at once. */
async function attempt(
  p: Publisher,
  name: string,
  payload: string,
  options: PublishOptions,
): Promise<{ rejection: Rejection | 'resolved'; atOnce: boolean }> {
  const started = Date.now();
  const rejection = await p.publish(name, payload, options).then(
    () => 'resolved' as const,
    (e: unknown) => {
      const { name: errorName, reason, field } = e as Rejection;
      return { name: errorName, reason, field };
    },
  );
  return { rejection, atOnce: Date.now() - started < 200 };
}

const invalid = (field: string): Rejection => ({
  name: 'InvalidPublishError',
  reason: 'invalid-publish',
  field,
});

/** Inputs amqplib cannot encode (issue #15, finding 4). */
const unencodable: [string, PublishOptions, string][] = [
  ['a bigint header beyond the safe integers', { headers: { id: 2n ** 60n } }, 'headers.id'],
  ['a message id of 256 bytes', { messageId: 'm'.repeat(256) }, 'messageId'],
  ['a routing key of 256 bytes', { key: 'k'.repeat(256) }, 'key'],
  ['priority 256', { priority: 256 }, 'priority'],
  ['a header bigger than amqplib can encode (70 KB)', { headers: { big: 'x'.repeat(70_000) } }, 'headers'],
];

function cyclic(): Headers {
  const loop: Record<string, unknown> = {};
  loop.self = loop;
  return loop as Headers;
}

/** Inputs that would publish fine but that every consumer then drops (finding 7), and more of the kind. */
const dropped: [string, PublishOptions, string][] = [
  ['a message id with ":"', { messageId: 'order:42' }, 'messageId'],
  ['an empty message id', { messageId: '' }, 'messageId'],
  ['ttl NaN', { ttl: Number.NaN }, 'ttl'],
  ['ttl Infinity', { ttl: Number.POSITIVE_INFINITY }, 'ttl'],
  ['ttl -1', { ttl: -1 }, 'ttl'],
  ['ttl 0', { ttl: 0 }, 'ttl'],
  ['ttl 1e300 (expires_at not an integer a consumer reads)', { ttl: 1e300 }, 'ttl'],
  ['priority -1', { priority: -1 }, 'priority'],
  ['priority 1.5', { priority: 1.5 }, 'priority'],
  ['priority NaN', { priority: Number.NaN }, 'priority'],
  ['reply to of 256 bytes', { replyTo: 'r'.repeat(256) }, 'replyTo'],
  ['a header name of 256 bytes', { headers: { ['h'.repeat(256)]: 1 } }, 'headers'],
  ['a NaN header', { headers: { n: Number.NaN } }, 'headers.n'],
  [
    'a Date header (amqplib sends an empty table)',
    { headers: { at: new Date() as unknown as string } },
    'headers.at',
  ],
  ['a cyclic header', { headers: { loop: cyclic() } }, 'headers.loop'],
  [
    'undefined in a header array',
    { headers: { list: [1, undefined] as unknown as number[] } },
    'headers.list.1',
  ],
];

describe('Publisher: a publish amqplib cannot encode', () => {
  it.each(unencodable)(
    '%s: a typed error at once; the next publishes are confirmed without a stall, nothing extra queued',
    async (_what, options, field) => {
      // Queues declared up front and no lazy setup: no policy message shares the channel with these publishes.
      const { name, p, events } = setup({ servers: [s1], lazySetup: false });
      await p.setupQueuesAndPolicies();
      const bad = await attempt(p, name, 'bad', options);
      const good: (number | string)[] = [];
      const slow: number[] = [];
      for (let i = 0; i < 3; i++) {
        const t = Date.now();
        good.push(await p.publish(name, `good-${i}`).catch((e: unknown) => String((e as Error).name)));
        if (Date.now() - t >= 1000) slow.push(Date.now() - t);
      }
      const messages = (await drain(s1, name)).map((m) => m.content.toString());
      expect({ bad, good, slow, events, messages }).toEqual({
        bad: { rejection: invalid(field), atOnce: true },
        good: [1, 1, 1],
        slow: [],
        events: [],
        messages: ['good-0', 'good-1', 'good-2'],
      });
    },
    20_000,
  );
});

describe('Publisher: bad input is a caller error, never a broker failure', () => {
  it.each([...unencodable, ...dropped])(
    '%s: InvalidPublishError at once, no failover, no broker marked dead, nothing written',
    async (_what, options, field) => {
      const { name, p, events } = setup({ redundant: true });
      const bad = await attempt(p, name, 'bad', options);
      const counts: (number | string)[] = [];
      for (let i = 0; i < 3; i++) {
        counts.push(await p.publish(name, `good-${i}`).catch((e: unknown) => String((e as Error).name)));
      }
      const copies = [(await drain(s1, name)).length, (await drain(s2, name)).length];
      expect({ bad, events, dead: p.deadServers(), counts, copies }).toEqual({
        bad: { rejection: invalid(field), atOnce: true },
        events: [],
        dead: [],
        counts: [2, 2, 2],
        copies: [3, 3],
      });
    },
    20_000,
  );

  it('a publish bound for the slow path (brokers not ready, one unreachable) is validated before connecting', async () => {
    const { name, p, events } = setup({ redundant: true, servers: [s1, '127.0.0.1:5699'] });
    const started = Date.now();
    await expect(p.publish(name, 'x', { messageId: 'a:b' })).rejects.toMatchObject({ field: 'messageId' });
    expect(Date.now() - started).toBeLessThan(200);
    expect(events).toEqual([]);
    expect(p.deadServers()).toEqual([]);
  });
});

describe('Publisher: inputs at the limits go out', () => {
  it('a 255-byte message id, a caller id like ORDER-42, priority 255, a safe bigint header', async () => {
    const { name, p } = setup({ servers: [s1] });
    const long = 'é'.repeat(127) + 'x'; // 255 bytes of UTF-8
    expect(await p.publish(name, 'a', { messageId: long, key: 'k'.repeat(255) })).toBe(1);
    expect(
      await p.publish(name, 'b', { messageId: 'ORDER-42', priority: 255, replyTo: 'r'.repeat(255) }),
    ).toBe(1);
    const headers: Headers = { id: 2n ** 53n - 1n, small: -5n, nested: { list: [1n, 'x'] } };
    expect(await p.publish(name, 'c', { headers, ttl: 0.5 })).toBe(1);
    const [a, b, c] = await drain(s1, name);
    expect(a!.properties.messageId).toBe(long);
    expect(a!.fields.routingKey).toBe('k'.repeat(255));
    expect(b!.properties).toMatchObject({ messageId: 'ORDER-42', priority: 255 });
    // A bigint within the safe integers is sent as the AMQP integer amqplib picks for the number.
    expect(c!.properties.headers).toMatchObject({ id: 2 ** 53 - 1, small: -5, nested: { list: [1, 'x'] } });
    expect(Number(c!.properties.headers?.expires_at) - Number(c!.properties.timestamp)).toBe(1);
  });

  it('the largest header table amqplib encodes (65536 bytes) goes out; one byte more is refused', async () => {
    const { name, p } = setup({ servers: [s1] });
    const now = 1_700_000_000;
    // Table: 4-byte length, then per entry 1 + name + 1 (type) + 4 (length) + value for strings.
    const beetle = 3 * 6 + 'format_version'.length + 1 + 'flags'.length + 1 + 'expires_at'.length + 10;
    const fill = 65536 - 4 - beetle - (1 + 1 + 1 + 4);
    const p2 = new Publisher({
      config: config({ servers: [s1], publisherReadResponseTimeout: 3 }),
      topology: p.topology,
      now: () => now,
    });
    publishers.push(p2);
    expect(await p2.publish(name, 'max', { headers: { k: 'v'.repeat(fill) } })).toBe(1);
    await expect(p2.publish(name, 'over', { headers: { k: 'v'.repeat(fill + 1) } })).rejects.toMatchObject({
      reason: 'invalid-publish',
      field: 'headers',
    });
    const messages = await drain(s1, name);
    expect(messages.map((m) => m.content.toString())).toEqual(['max']);
    expect(String(messages[0]!.properties.headers?.k)).toHaveLength(fill);
  });

  it("the header frame must fit the connection's frame_max (4096 here): 4096 bytes go out, 4097 are refused", async () => {
    const { name, p } = setup({ servers: [s1], frameMax: 4096 });
    // Header frame: 7 (frame header) + 14 (class, weight, body size, flags) + properties + 1 (frame end), with
    // properties: content type (1 + 24), headers table, delivery mode 1, priority 1, message id (1 + 2),
    // timestamp 8.
    const fixed = 7 + 14 + 1 + (1 + 'application/octet-stream'.length) + 1 + 1 + (1 + 2) + 8;
    const beetle = 4 + 3 * 6 + 'format_version'.length + 1 + 'flags'.length + 1 + 'expires_at'.length + 10;
    const fill = 4096 - fixed - beetle - (1 + 1 + 1 + 4);
    const p2 = new Publisher({
      config: config({ servers: [s1], frameMax: 4096, publisherReadResponseTimeout: 3 }),
      topology: p.topology,
      now: () => 1_700_000_000,
    });
    publishers.push(p2);
    expect(await p2.publish(name, 'fits', { messageId: 'id', headers: { k: 'v'.repeat(fill) } })).toBe(1);
    for (const extra of [1, 200]) {
      await expect(
        p2.publish(name, 'too big', { messageId: 'id', headers: { k: 'v'.repeat(fill + extra) } }),
      ).rejects.toMatchObject({ reason: 'invalid-publish', field: 'headers' });
    }
    expect(await p2.publish(name, 'after', { messageId: 'id' })).toBe(1);
    expect((await drain(s1, name)).map((m) => m.content.toString())).toEqual(['fits', 'after']);
  });
});

/**
 * A pool whose publish channels add a bigint header to the message with body "poison": an encode error that
 * slips past the publisher's validation and happens in amqplib, on real channels to the real brokers.
 */
class PoisoningPool extends BrokerPool {
  private readonly wrapped = new WeakMap<PublishChannel, PublishChannel>();
  private readonly proxies = new Map<string, BrokerConnection>();

  override get(server: string): BrokerConnection {
    let connection = this.proxies.get(server);
    if (connection === undefined) {
      const real = super.get(server);
      const wrap = (channel: PublishChannel | undefined): PublishChannel | undefined =>
        channel === undefined ? undefined : this.poisoning(channel);
      connection = new Proxy(real, {
        get: (target, property): unknown => {
          if (property === 'readyPublishChannel') return () => wrap(target.readyPublishChannel());
          if (property === 'publishChannel') return async () => wrap(await target.publishChannel());
          const value: unknown = Reflect.get(target, property, target);
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        },
      });
      this.proxies.set(server, connection);
    }
    return connection;
  }

  private poisoning(channel: PublishChannel): PublishChannel {
    let wrapper = this.wrapped.get(channel);
    if (wrapper === undefined) {
      wrapper = {
        server: channel.server,
        publish: (exchange, key, body, properties, options) => {
          const poisoned =
            body.toString() === 'poison'
              ? { ...properties, headers: { ...(properties.headers as object), poison: 2n ** 60n } }
              : properties;
          return channel.publish(exchange, key, body, poisoned, options);
        },
      };
      this.wrapped.set(channel, wrapper);
    }
    return wrapper;
  }
}

describe('Publisher: an encode error in the broker layer (past validation)', () => {
  it.each([
    ['redundant', true],
    ['non-redundant', false],
  ])(
    '%s: InvalidPublishError, no failover, no broker marked dead; the next publishes are confirmed',
    async (_what, redundant) => {
      const { name, p: plain } = setup({ redundant });
      const cfg = config({ servers: [s1, s2], publisherReadResponseTimeout: 3 });
      const pool = new PoisoningPool(cfg);
      const p = new Publisher({ config: cfg, topology: plain.topology, pool });
      publishers.push(p);
      const events: string[] = [];
      p.on('failover', (e) => events.push(`failover ${e.server}`));
      p.on('brokerDead', (e) => events.push(`dead ${e.server}`));
      const copies = redundant ? 2 : 1;
      try {
        // Warm: both channels open and the exchange prepared, so the poison takes the fast path.
        for (let i = 0; i < 2; i++) expect(await p.publish(name, `warm-${i}`)).toBe(copies);
        const bad = await attempt(p, name, 'poison', {});
        const counts: (number | string)[] = [];
        const slow: number[] = [];
        for (let i = 0; i < 3; i++) {
          const t = Date.now();
          counts.push(await p.publish(name, `good-${i}`).catch((e: unknown) => String((e as Error).name)));
          if (Date.now() - t >= 1000) slow.push(Date.now() - t);
        }
        const messages = [...(await drain(s1, name)), ...(await drain(s2, name))].map((m) =>
          m.content.toString(),
        );
        expect({ bad, events, dead: p.deadServers(), counts, slow, total: messages.length }).toEqual({
          bad: { rejection: invalid('message'), atOnce: true },
          events: [],
          dead: [],
          counts: [copies, copies, copies],
          slow: [],
          total: 5 * copies,
        });
        expect(messages).not.toContain('poison');
      } finally {
        await p.close({ timeout: 2 });
        await pool.close();
      }
    },
    20_000,
  );
});
