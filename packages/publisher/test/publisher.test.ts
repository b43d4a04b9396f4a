import { afterEach, describe, expect, it } from 'vitest';
import {
  BrokerError,
  NoMessageSentError,
  PublishTimeoutError,
  Topology,
  UnknownMessageError,
} from '@beetle/core';
import { BrokerPool, type BrokerConnection } from '@beetle/broker-amqp';
import { Publisher, QueueSetupError, type PublisherEvents } from '@beetle/publisher';
import {
  blackHole,
  cleanup,
  config,
  drain,
  management,
  queueExists,
  servers,
  uid,
  UNREACHABLE,
} from '../../broker-amqp/test/helpers.js';

const [s1, s2] = servers as [string, string];
const publishers: Publisher[] = [];
const names: { queues: string[]; exchanges: string[] } = { queues: [], exchanges: [] };

function setup(name: string, options: { redundant?: boolean } = {}): Topology<Record<string, string>> {
  names.queues.push(name);
  names.exchanges.push(name);
  return new Topology().registerQueue(name).registerMessage(name, options);
}

function publisher(
  topology: Topology<Record<string, string>>,
  input: Parameters<typeof config>[0] = {},
): Publisher<Record<string, string>> {
  const p = new Publisher({ config: config(input), topology });
  publishers.push(p);
  return p;
}

afterEach(async () => {
  await Promise.all(publishers.splice(0).map((p) => p.close({ timeout: 2 })));
  await cleanup({ queues: names.queues.splice(0), exchanges: names.exchanges.splice(0) });
});

describe('Publisher', () => {
  it('redundant publish: one copy with the same id on each broker, exactly the format-1 envelope', async () => {
    const name = `bt-red-${uid()}`;
    const p = publisher(setup(name, { redundant: true }));
    const before = Math.floor(Date.now() / 1000);
    expect(await p.publish(name, '{"seq":42}', { headers: { foo: 1, bar: 'x' } })).toBe(2);
    const [a, b] = [await drain(s1, name), await drain(s2, name)];
    expect(a).toHaveLength(1);
    expect(b).toHaveLength(1);
    const m1 = a[0]!;
    const m2 = b[0]!;
    expect(m1.content.toString()).toBe('{"seq":42}');
    expect(m2.content).toEqual(m1.content);
    expect(m1.properties.messageId).toBe(m2.properties.messageId);
    expect(m1.properties.messageId).toMatch(
      /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
    );
    for (const m of [m1, m2]) {
      expect(m.fields).toMatchObject({ exchange: name, routingKey: name });
      const { headers, timestamp, ...rest } = m.properties as unknown as Record<string, unknown>;
      expect(rest).toEqual({
        contentType: 'application/octet-stream',
        contentEncoding: undefined,
        deliveryMode: 2,
        priority: 0,
        correlationId: undefined,
        replyTo: undefined,
        expiration: undefined,
        messageId: m1.properties.messageId as string,
        type: undefined,
        userId: undefined,
        appId: undefined,
        clusterId: undefined,
      });
      expect(timestamp).toBeGreaterThanOrEqual(before);
      const h = headers as Record<string, unknown>;
      // User headers first, with their AMQP types; then the Beetle headers as strings.
      expect(Object.keys(h)).toEqual(['foo', 'bar', 'format_version', 'flags', 'expires_at']);
      expect(h).toEqual({
        foo: 1,
        bar: 'x',
        format_version: '1',
        flags: '1',
        expires_at: String((timestamp as number) + 86400),
      });
    }
  });

  it('non-redundant publishes alternate between brokers and declare the queues lazily on each broker', async () => {
    const name = `bt-rr-${uid()}`;
    const p = publisher(setup(name));
    const used: string[] = [];
    p.on('published', (e) => used.push(...e.servers));
    for (let i = 0; i < 6; i++) expect(await p.publish(name, `m${i}`)).toBe(1);
    for (let i = 1; i < used.length; i++) expect(used[i]).not.toBe(used[i - 1]);
    // Ruby declares the queue only on the first broker (weak spot 10); we declare it on each.
    expect((await drain(s1, name)).map((m) => String(m.properties.headers?.flags))).toEqual(['0', '0', '0']);
    expect(await drain(s2, name)).toHaveLength(3);
  });

  it('pipelines many publishes (none waits for another) within the in-flight window', async () => {
    const name = `bt-pipe-${uid()}`;
    const p = publisher(setup(name), { publisherMaxInFlight: 50 });
    const results = await Promise.all(Array.from({ length: 500 }, (_, i) => p.publish(name, String(i))));
    expect(results.every((r) => r === 1)).toBe(true);
    expect(p.inFlight).toBe(0);
    expect((await drain(s1, name)).length + (await drain(s2, name)).length).toBe(500);
  });

  it('fails over from an unreachable broker: marked dead after two failures, no hung promise', async () => {
    const name = `bt-fo-${uid()}`;
    const p = publisher(setup(name), { servers: [UNREACHABLE, s1] });
    const dead: PublisherEvents['brokerDead'][] = [];
    const failovers: PublisherEvents['failover'][] = [];
    p.on('brokerDead', (e) => dead.push(e));
    p.on('failover', (e) => failovers.push(e));
    for (let i = 0; i < 6; i++) expect(await p.publish(name, `m${i}`)).toBe(1);
    expect(dead.map((d) => d.server)).toEqual([UNREACHABLE]);
    expect(failovers.filter((f) => f.server === UNREACHABLE).length).toBe(2);
    expect(p.deadServers()).toEqual([UNREACHABLE]);
    expect(await drain(s1, name)).toHaveLength(6);
  });

  it('a redundant publish with only one live broker goes out once with flags "0" (also the first one)', async () => {
    const name = `bt-red1-${uid()}`;
    const p = publisher(setup(name, { redundant: true }), { servers: [UNREACHABLE, s1] });
    const partial: unknown[] = [];
    p.on('partial', (e) => partial.push(e));
    // First publish: the unreachable broker is found out while getting both brokers ready, before the flags
    // are fixed — unlike Ruby, which sends this one flagged "1".
    expect(await p.publish(name, 'first')).toBe(1);
    // Now it is dead: fewer than two live brokers → flag cleared, failover publish.
    expect(await p.publish(name, 'second')).toBe(1);
    expect(partial).toHaveLength(0);
    expect(p.deadServers()).toEqual([UNREACHABLE]);
    const messages = await drain(s1, name);
    expect(messages.map((m) => [m.content.toString(), String(m.properties.headers?.flags)])).toEqual([
      ['first', '0'],
      ['second', '0'],
    ]);
  });

  it('a second copy that fails after both brokers were ready: result 1, warned, partial event, flags stay "1"', async () => {
    const name = `bt-part-${uid()}`;
    const cfg = config({ servers: [s1, 'failing:5672'] });
    const real = new BrokerPool(cfg);
    const failing = {
      server: 'failing:5672',
      lastBackgroundError: undefined,
      readyPublishChannel: () => failingChannel,
      publishChannel: () => Promise.resolve(failingChannel),
      // Declarations succeed: both brokers get ready, then the copy on this one fails.
      declarer: () => Promise.resolve(acceptingDeclarer),
      publisherConnected: true,
      onLost: () => () => undefined,
    };
    const acceptingDeclarer = {
      declareExchange: () => Promise.resolve(),
      declareQueue: () => Promise.resolve(),
      bindQueue: () => Promise.resolve(),
      queueLength: () => Promise.resolve(0),
      purgeQueue: () => Promise.resolve(),
    };
    const failingChannel = {
      server: 'failing:5672',
      publish: () =>
        Promise.reject(new BrokerError('broker-closed', 'failing:5672', 'publish channel closed')),
    };
    const pool = new (class extends BrokerPool {
      override get(server: string): BrokerConnection {
        return server === 'failing:5672' ? (failing as unknown as BrokerConnection) : real.get(server);
      }
    })(cfg);
    const p = new Publisher({ config: cfg, topology: setup(name, { redundant: true }), pool });
    const partial: PublisherEvents['partial'][] = [];
    p.on('partial', (e) => partial.push(e));
    try {
      expect(await p.publish(name, 'x')).toBe(1);
      expect(partial).toHaveLength(1);
      expect(partial[0]!.server).toBe(s1);
      const [m] = await drain(s1, name);
      // Unavoidable once the copy is on the wire: the consumer keeps its dedup keys until garbage collection.
      expect(m!.properties.headers?.flags).toBe('1');
    } finally {
      await p.close();
      await real.close();
    }
  });

  it('the Topology type parameter makes unknown names and wrong payloads compile-time errors', () => {
    const typed = new Topology<Record<never, never>>()
      .registerQueue('typed')
      .registerMessage<'typed', { n: number }>('typed');
    const p = new Publisher({ config: config(), topology: typed });
    publishers.push(p);
    const check = (): void => {
      // @ts-expect-error unknown message name
      void p.publish('nope', { n: 1 });
      // @ts-expect-error wrong payload type
      void p.publish('typed', { n: 'x' });
      void p.publish('typed', { n: 1 });
    };
    expect(typeof check).toBe('function');
  });

  it('rejects NoMessageSentError with the broker-connect causes when no broker is reachable', async () => {
    const name = `bt-none-${uid()}`;
    const p = publisher(setup(name), { servers: [UNREACHABLE] });
    const error = (await p.publish(name, 'x').catch((e: unknown) => e)) as NoMessageSentError;
    expect(error).toBeInstanceOf(NoMessageSentError);
    expect(error.errors).toHaveLength(2);
    expect(error.errors.every((e) => (e as { reason?: string }).reason === 'broker-connect')).toBe(true);
  });

  it('wrong credentials: the causes say authentication failed', async () => {
    const name = `bt-auth-${uid()}`;
    const p = publisher(setup(name), { servers: [s1], user: 'nobody', password: 'wrong' });
    const error = (await p.publish(name, 'x').catch((e: unknown) => e)) as NoMessageSentError;
    expect(error).toBeInstanceOf(NoMessageSentError);
    expect(String((error.errors[0] as Error).message)).toMatch(/authentication failed/);
  });

  it('a full in-flight window against a black-holing broker rejects PublishTimeoutError within publishTimeout', async () => {
    const hole = await blackHole();
    try {
      const name = `bt-hole-${uid()}`;
      const p = publisher(setup(name), {
        servers: [hole.server],
        publisherMaxInFlight: 1,
        publishTimeout: 1,
        publisherConnectTimeout: 5,
      });
      const started = Date.now();
      const results = await Promise.allSettled([
        p.publish(name, 'a'),
        p.publish(name, 'b'),
        p.publish(name, 'c'),
      ]);
      const elapsed = Date.now() - started;
      expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected', 'rejected']);
      for (const r of results)
        expect((r as PromiseRejectedResult).reason).toBeInstanceOf(PublishTimeoutError);
      expect(elapsed).toBeLessThan(1600);
    } finally {
      await hole.close();
    }
  });

  it('without confirms a publish resolves once written', async () => {
    const name = `bt-noconf-${uid()}`;
    const p = publisher(setup(name), { publisherConfirms: false });
    const results = await Promise.all(Array.from({ length: 100 }, (_, i) => p.publish(name, String(i))));
    expect(results.every((r) => r === 1)).toBe(true);
    await p.close();
    // close() closes the channel before the connection, so none is lost; routing may trail a moment.
    let seen = 0;
    await expect
      .poll(
        async () => {
          seen += (await drain(s1, name)).length;
          seen += (await drain(s2, name)).length;
          return seen;
        },
        { timeout: 15_000 },
      )
      .toBe(100);
  });

  it('close() waits for outstanding publishes and rejects new ones', async () => {
    const name = `bt-close-${uid()}`;
    const p = publisher(setup(name));
    const pending = Array.from({ length: 300 }, (_, i) => p.publish(name, String(i)));
    await p.close();
    expect(await Promise.all(pending)).toEqual(Array.from({ length: 300 }, () => 1));
    await expect(p.publish(name, 'late')).rejects.toMatchObject({ reason: 'closed' });
    const total = (await drain(s1, name)).length + (await drain(s2, name)).length;
    expect(total).toBe(300);
  });

  it('a payload that cannot be encoded rejects and frees its slot', async () => {
    const name = `bt-enc-${uid()}`;
    const p = publisher(setup(name), { publisherMaxInFlight: 1 });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await expect(p.publish(name, cyclic as unknown as string)).rejects.toThrow(/circular/i);
    expect(p.inFlight).toBe(0);
    expect(await p.publish(name, 'ok')).toBe(1);
  });

  it('unknown messages reject UnknownMessageError', async () => {
    const p = publisher(setup(`bt-unk-${uid()}`));
    await expect(p.publish('nope', 'x')).rejects.toBeInstanceOf(UnknownMessageError);
  });

  it('merges headers over registered ones and honours key, ttl, priority, persistent, replyTo, messageId', async () => {
    const name = `bt-opts-${uid()}`;
    names.queues.push(name);
    names.exchanges.push(name);
    const topology = new Topology()
      .registerQueue(name, { key: 'custom.#' })
      .registerMessage<string, string>(name, { headers: { a: 'reg', b: 'reg' } });
    const p = publisher(topology, { servers: [s1] });
    await p.publish(name, 'x', {
      key: 'custom.key',
      ttl: 60,
      headers: { b: 'pub', c: null },
      priority: 3,
      persistent: false,
      replyTo: 'reply-q',
      messageId: 'my-id-1',
    });
    const [m] = await drain(s1, name);
    expect(m!.fields.routingKey).toBe('custom.key');
    expect(m!.properties).toMatchObject({
      priority: 3,
      deliveryMode: 1,
      replyTo: 'reply-q',
      messageId: 'my-id-1',
    });
    const h = m!.properties.headers as Record<string, unknown>;
    expect(h).toMatchObject({ a: 'reg', b: 'pub', flags: '0' });
    expect('c' in h).toBe(false);
    expect(Number(h.expires_at) - (m!.properties.timestamp as number)).toBe(60);
  });

  it('setupQueuesAndPolicies declares every registered queue on every broker', async () => {
    const name = `bt-setup-${uid()}`;
    const p = publisher(setup(name));
    const report = await p.setupQueuesAndPolicies();
    expect(report.map((r) => r.server).sort()).toEqual([s1, s2].sort());
    for (const r of report) expect(r.queues.map((q) => q.queue)).toEqual(['beetle-policy-updates', name]);
    expect(await queueExists(s1, name)).toBe(true);
    expect(await queueExists(s2, name)).toBe(true);
  });

  it('after setupQueuesAndPolicies the first publishes declare nothing (a declaration can time out behind a flood)', async () => {
    const name = `bt-setupx-${uid()}`;
    const cfg = config({ servers: [s1] });
    const real = new BrokerPool(cfg);
    const declarations: string[] = [];
    const counting = (declarer: object): object =>
      new Proxy(declarer, {
        get(target, key) {
          const value: unknown = Reflect.get(target, key, target);
          if (typeof value !== 'function') return value;
          return (...args: unknown[]) => {
            if (String(key).startsWith('declare') || key === 'bindQueue') declarations.push(String(key));
            return (value as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      });
    const wrapped = new Map<string, BrokerConnection>();
    const pool = new (class extends BrokerPool {
      override get(server: string): BrokerConnection {
        const connection = real.get(server);
        let proxy = wrapped.get(server);
        if (proxy === undefined) {
          proxy = new Proxy(connection, {
            get(target, key) {
              if (key === 'declarer') return async () => counting(await target.declarer());
              const value: unknown = Reflect.get(target, key, target);
              return typeof value === 'function' ? (value as () => unknown).bind(target) : value;
            },
          });
          wrapped.set(server, proxy);
        }
        return proxy;
      }
    })(cfg);
    const p = new Publisher({ config: cfg, topology: setup(name, { redundant: false }), pool });
    try {
      await p.setupQueuesAndPolicies();
      expect(declarations).toContain('declareExchange');
      declarations.length = 0;
      expect(await p.publish(name, 'a')).toBe(1);
      expect(await p.publish(name, 'b')).toBe(1);
      expect(declarations).toEqual([]);
      expect((await drain(s1, name)).map((m) => m.content.toString())).toEqual(['a', 'b']);
    } finally {
      await p.close();
      await real.close();
    }
  });

  it('setupQueuesAndPolicies rejects with a report naming the failed broker', async () => {
    const name = `bt-setupf-${uid()}`;
    const p = publisher(setup(name), { servers: [s1, UNREACHABLE] });
    const error = await p.setupQueuesAndPolicies().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QueueSetupError);
    if (!(error instanceof QueueSetupError)) return;
    expect(error.reason).toBe('queue-setup');
    expect(error.message).toContain(UNREACHABLE);
    expect(error.report.find((r) => r.server === UNREACHABLE)?.error).toBeDefined();
    expect(error.report.find((r) => r.server === s1)?.error).toBeUndefined();
  });

  it('throttles while a queue is longer than its limit, without blocking the event loop', async () => {
    const name = `bt-thr-${uid()}`;
    const p = publisher(setup(name), { servers: [s1], throttlingRefreshInterval: 0.2 });
    await p.publish(name, 'a');
    await p.publish(name, 'b');
    p.throttle({ [name]: 1 });
    await expect.poll(() => p.throttled(), { timeout: 5000 }).toBe(true);
    expect(p.throttlingStatus()).toBe('throttled');
    let ticks = 0;
    const ticker = setInterval(() => ticks++, 50);
    const started = Date.now();
    await p.publish(name, 'c');
    clearInterval(ticker);
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(ticks).toBeGreaterThan(10);
    await p.purge([name]);
    await expect.poll(() => p.throttled(), { timeout: 5000 }).toBe(false);
  });

  it('purge empties the queues on every broker', async () => {
    const name = `bt-purge-${uid()}`;
    const p = publisher(setup(name));
    for (let i = 0; i < 4; i++) await p.publish(name, String(i));
    await p.purge([name]);
    expect(await drain(s1, name)).toHaveLength(0);
    expect(await drain(s2, name)).toHaveLength(0);
  });

  it('shares a given pool and leaves it open on close', async () => {
    const name = `bt-pool-${uid()}`;
    const cfg = config();
    const pool = new BrokerPool(cfg);
    const p = new Publisher({ config: cfg, topology: setup(name), pool });
    await p.publish(name, 'x');
    await p.close();
    await expect(p.publish(name, 'y')).rejects.toMatchObject({ reason: 'closed' });
    await (await pool.get(s1).publishChannel()).publish('', 'nope', Buffer.from('x'), {});
    await pool.close();
  });

  it('publisherHealthy reflects recent background errors', async () => {
    const name = `bt-health-${uid()}`;
    const p = publisher(setup(name), { servers: [s1], connectionName: name });
    await p.publish(name, 'x');
    expect(p.publisherHealthy()).toBe(true);
    type Connections = { name: string; client_properties?: { connection_name?: string } }[];
    await expect
      .poll(
        async () => {
          const conns = (await (await management(s1, 'GET', '/api/connections')).json()) as Connections;
          const target = conns.find(
            (c) => c.client_properties?.connection_name === `${name}-${process.pid}-publisher`,
          );
          if (target) await management(s1, 'DELETE', `/api/connections/${encodeURIComponent(target.name)}`);
          return target !== undefined;
        },
        { timeout: 10_000 },
      )
      .toBe(true);
    await expect.poll(() => p.publisherHealthy(), { timeout: 5000 }).toBe(false);
    // It reconnects on the next publish.
    expect(await p.publish(name, 'y')).toBe(1);
  });
});
