import { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { BrokerError, silentLogger, Topology } from '@beetle/core';
import { backoff } from '@beetle/core/kit';
import {
  BrokerConnection,
  BrokerPool,
  brokerOptions,
  type ConnectionLostEvent,
  type Delivery,
} from '@beetle/broker-amqp';
import { blackHole, cleanup, config, drain, management, raw, servers, uid, UNREACHABLE } from './helpers.js';

const server = servers[0]!;
const opened: BrokerConnection[] = [];

function connection(input: Parameters<typeof config>[0] = {}, target = server): BrokerConnection {
  const c = new BrokerConnection(
    brokerOptions(config({ ...input, servers: [target] }), target, silentLogger),
  );
  opened.push(c);
  return c;
}

afterEach(async () => {
  await Promise.all(opened.splice(0).map((c) => c.close()));
});

describe('backoff', () => {
  it('is capped exponential with full jitter', () => {
    expect(backoff({ base: 1, max: 30, attempt: 0, random: () => 0.999 })).toBeCloseTo(0.999);
    expect(backoff({ base: 1, max: 30, attempt: 3, random: () => 0.5 })).toBe(4);
    expect(backoff({ base: 1, max: 30, attempt: 10, random: () => 0.5 })).toBe(15);
    expect(backoff({ base: 1, max: 30, attempt: 1000, random: () => 1 - 1e-9 })).toBeLessThan(30);
    expect(backoff({ base: 1, max: 30, attempt: 5, random: () => 0 })).toBe(0);
  });

  it('with equal jitter stays in the upper half, so a retry never comes at once', () => {
    expect(backoff({ base: 1, max: 30, attempt: 3, random: () => 0, jitter: 'equal' })).toBe(4);
    expect(backoff({ base: 1, max: 30, attempt: 3, random: () => 0.5, jitter: 'equal' })).toBe(6);
    expect(backoff({ base: 0.5, max: 5, attempt: 100, random: () => 0, jitter: 'equal' })).toBe(2.5);
    expect(backoff({ base: 1, max: 30, attempt: 0, random: () => 1 - 1e-9, jitter: 'equal' })).toBeLessThan(
      1,
    );
  });
});

describe('BrokerConnection', () => {
  it('publishes with confirms on a named publishing connection and declares exactly like Ruby', async () => {
    const name = `bt-conn-${uid()}`;
    const topology = new Topology().registerQueue(name);
    const c = connection({ connectionName: `test-${name}` });
    const declarer = await c.declarer();
    await declarer.declareExchange(topology.exchange(name));
    await declarer.declareQueue(topology.queue(name));
    await declarer.bindQueue(name, name, name);
    const channel = await c.publishChannel();
    await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        channel.publish(name, name, Buffer.from(String(i)), { deliveryMode: 2 }),
      ),
    );
    expect(await declarer.queueLength(name)).toBe(50);

    const queue = (await (await management(server, 'GET', `/api/queues/%2F/${name}`)).json()) as Record<
      string,
      unknown
    >;
    expect(queue).toMatchObject({ durable: true, auto_delete: false, exclusive: false, arguments: {} });
    const exchange = (await (await management(server, 'GET', `/api/exchanges/%2F/${name}`)).json()) as Record<
      string,
      unknown
    >;
    expect(exchange).toMatchObject({
      type: 'topic',
      durable: true,
      auto_delete: false,
      internal: false,
      arguments: {},
    });

    // The connection name is visible in the management UI (stats may lag a little).
    let names: string[] = [];
    for (let i = 0; i < 30 && !names.includes(`test-${name}-${process.pid}-publisher`); i++) {
      const list = (await (await management(server, 'GET', '/api/connections')).json()) as {
        client_properties?: { connection_name?: string };
      }[];
      names = list.map((x) => x.client_properties?.connection_name ?? '');
      if (!names.includes(`test-${name}-${process.pid}-publisher`))
        await new Promise((r) => setTimeout(r, 200));
    }
    expect(names).toContain(`test-${name}-${process.pid}-publisher`);

    await declarer.purgeQueue(name);
    expect(await declarer.queueLength(name)).toBe(0);
    await cleanup({ queues: [name], exchanges: [name] });
  });

  it('a failing declaration does not kill the publish channel', async () => {
    const name = `bt-decl-${uid()}`;
    const topology = new Topology().registerQueue(name).registerQueue(`${name}-x`, {
      amqpName: name,
      exchange: name,
      autoDelete: true,
    });
    const c = connection();
    const channel = await c.publishChannel();
    const declarer = await c.declarer();
    await declarer.declareQueue(topology.queue(name));
    await declarer.declareExchange(topology.exchange(name));
    await declarer.bindQueue(name, name, name);
    await expect(declarer.declareQueue(topology.queue(`${name}-x`))).rejects.toThrow(
      /PRECONDITION|inequivalent/,
    );
    // Same publish channel object still works; the declarer reopens its channel.
    await channel.publish(name, name, Buffer.from('x'), {});
    expect(await declarer.queueLength(name)).toBe(1);
    await cleanup({ queues: [name], exchanges: [name] });
  });

  it('sends the frames of one tick in one system call, in order', async () => {
    const name = `bt-cork-${uid()}`;
    const topology = new Topology().registerQueue(name);
    const c = connection();
    const declarer = await c.declarer();
    await declarer.declareExchange(topology.exchange(name));
    await declarer.declareQueue(topology.queue(name));
    await declarer.bindQueue(name, name, name);
    const channel = await c.publishChannel();
    // Count what reaches the sockets' stream implementation: one _write/_writev call is one system call.
    const proto = Socket.prototype as unknown as Record<'_write' | '_writev', (...args: unknown[]) => void>;
    const original = { _write: proto._write, _writev: proto._writev };
    const port = Number(server.split(':')[1]);
    const calls = { write: 0, writev: 0, chunks: 0 };
    proto._write = function (this: Socket, ...args: unknown[]) {
      if (this.remotePort === port) {
        calls.write++;
        calls.chunks++;
      }
      return original._write.apply(this, args);
    };
    proto._writev = function (this: Socket, ...args: unknown[]) {
      if (this.remotePort === port) {
        calls.writev++;
        calls.chunks += (args[0] as unknown[]).length;
      }
      return original._writev.apply(this, args);
    };
    try {
      await Promise.all(
        Array.from({ length: 200 }, (_, i) => channel.publish(name, name, Buffer.from(String(i)), {})),
      );
    } finally {
      Object.assign(proto, original);
    }
    // 200 publishes (method + header + body frames each) in a handful of writev calls instead of 200+ writes.
    expect(calls.chunks).toBeGreaterThanOrEqual(200);
    expect(calls.write + calls.writev).toBeLessThan(10);
    const bodies = (await drain(server, name)).map((m) => m.content.toString());
    expect(bodies).toEqual(Array.from({ length: 200 }, (_, i) => String(i)));
  });

  it('rejects pending confirms when the connection is killed, fires onLost and reconnects lazily', async () => {
    const name = `bt-kill-${uid()}`;
    const c = connection({ connectionName: name });
    const lost: ConnectionLostEvent[] = [];
    c.onLost((e) => lost.push(e));
    const declarer = await c.declarer();
    await declarer.declareExchange(new Topology().registerExchange(name).exchange(name));
    const channel = await c.publishChannel();
    const body = Buffer.alloc(32 * 1024);
    const publishes = Array.from({ length: 1000 }, () => channel.publish(name, 'k', body, {}));
    // Force-close the publishing connection from the broker side.
    let closed = false;
    for (let i = 0; i < 50 && !closed; i++) {
      const list = (await (await management(server, 'GET', '/api/connections')).json()) as {
        name: string;
        client_properties?: { connection_name?: string };
      }[];
      const target = list.find(
        (x) => x.client_properties?.connection_name === `${name}-${process.pid}-publisher`,
      );
      if (target) {
        await management(server, 'DELETE', `/api/connections/${encodeURIComponent(target.name)}`);
        closed = true;
      } else await new Promise((r) => setTimeout(r, 100));
    }
    expect(closed).toBe(true);
    const results = await Promise.allSettled(publishes);
    const rejected = results.filter((r) => r.status === 'rejected');
    // Everything settled (no hang); whatever was not confirmed was rejected with a BrokerError.
    for (const r of rejected) expect(r.reason).toBeInstanceOf(BrokerError);
    await expect.poll(() => lost.length).toBeGreaterThan(0);
    expect(lost[0]).toMatchObject({ server, role: 'publisher' });
    // Reopened on demand.
    const again = await c.publishChannel();
    await again.publish(name, 'k', Buffer.from('x'), {});
    await cleanup({ exchanges: [name] });
  });

  it('a channel closed by the broker rejects every pending confirm (amqplib calls back with an error)', async () => {
    const name = `bt-404-${uid()}`;
    const c = connection();
    const declarer = await c.declarer();
    await declarer.declareExchange(new Topology().registerExchange(name).exchange(name));
    const channel = await c.publishChannel();
    const before = Array.from({ length: 50 }, () => channel.publish(name, 'k', Buffer.from('x'), {}));
    // Publishing to a missing exchange makes the broker close the channel (404 NOT_FOUND).
    const bad = channel.publish(`${name}-missing`, 'k', Buffer.from('x'), {});
    const after = Array.from({ length: 50 }, () => channel.publish(name, 'k', Buffer.from('x'), {}));
    const [rb, rbad, ra] = await Promise.all([
      Promise.allSettled(before),
      bad.then(
        () => 'resolved',
        (e: unknown) => e,
      ),
      Promise.allSettled(after),
    ]);
    expect(rb.every((r) => r.status === 'fulfilled')).toBe(true);
    expect(rbad).toBeInstanceOf(BrokerError);
    expect((rbad as BrokerError).reason).toBe('broker-closed');
    expect((rbad as BrokerError).message).toMatch(/NOT_FOUND|404/);
    for (const r of ra) {
      expect(r.status).toBe('rejected');
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(BrokerError);
    }
    // A later publish on the same (dead) channel object rejects at once; a new channel is opened on demand.
    await expect(channel.publish(name, 'k', Buffer.from('x'), {})).rejects.toBeInstanceOf(BrokerError);
    const reopened = await c.publishChannel();
    expect(reopened).not.toBe(channel);
    await reopened.publish(name, 'k', Buffer.from('x'), {});
    await cleanup({ exchanges: [name] });
  });

  it('fails fast with broker-connect for an unreachable broker', async () => {
    const c = connection({}, UNREACHABLE);
    const started = Date.now();
    await expect(c.publishChannel()).rejects.toMatchObject({ reason: 'broker-connect', server: UNREACHABLE });
    expect(Date.now() - started).toBeLessThan(2500);
  });

  it('reports wrong credentials as an authentication failure', async () => {
    const c = connection({ user: 'nobody', password: 'wrong' });
    const error = (await c.publishChannel().catch((e: unknown) => e)) as BrokerError;
    expect(error).toBeInstanceOf(BrokerError);
    expect(error.reason).toBe('broker-connect');
    expect(error.message).toMatch(/authentication failed/);
  });

  it('bounds the connect to a black-holing server by the connect timeout', async () => {
    const hole = await blackHole();
    try {
      const c = connection({ publisherConnectTimeout: 1 }, hole.server);
      const started = Date.now();
      await expect(c.publishChannel()).rejects.toMatchObject({ reason: 'broker-connect' });
      expect(Date.now() - started).toBeLessThan(2000);
      await c.close();
    } finally {
      await hole.close();
    }
  });

  it('consumer channels live on their own connection with prefetch, ack and reject', async () => {
    const name = `bt-cons-${uid()}`;
    const topology = new Topology().registerQueue(name);
    const c = connection({ connectionName: name });
    const consumer = await c.openConsumerChannel(2);
    await consumer.declareExchange(topology.exchange(name));
    await consumer.declareQueue(topology.queue(name));
    await consumer.bindQueue(name, name, name);
    const channel = await c.publishChannel();
    for (let i = 0; i < 3; i++) await channel.publish(name, name, Buffer.from(String(i)), {});
    const seen: string[] = [];
    const tag = await consumer.consume(name, (d) => {
      seen.push(d.content.toString());
      if (d.content.toString() === '1') consumer.reject(d, false);
      else consumer.ack(d);
    });
    await expect.poll(() => seen.length).toBe(3);
    await consumer.cancel(tag);
    let closedWith: Error | undefined | null = null;
    consumer.onClose((e) => (closedWith = e));
    await consumer.close();
    await expect.poll(() => closedWith).toBeUndefined();
    expect(await (await c.declarer()).queueLength(name)).toBe(0);
    const connectionNames = async (): Promise<(string | undefined)[]> => {
      const list = (await (await management(server, 'GET', '/api/connections')).json()) as {
        client_properties?: { connection_name?: string };
      }[];
      return list.map((x) => x.client_properties?.connection_name);
    };
    await expect.poll(connectionNames, { timeout: 10_000 }).toContain(`${name}-${process.pid}-consumer`);
    await cleanup({ queues: [name], exchanges: [name] });
  });

  it('calls onCancel when the broker cancels a consumer (queue deleted), not on our own cancel', async () => {
    const name = `bt-cancel-${uid()}`;
    const topology = new Topology().registerQueue(name).registerQueue(`${name}-kept`);
    const c = connection();
    const consumer = await c.openConsumerChannel(1);
    await consumer.declareQueue(topology.queue(name));
    await consumer.declareQueue(topology.queue(`${name}-kept`));
    const cancelled: string[] = [];
    await consumer.consume(
      name,
      () => undefined,
      () => cancelled.push(name),
    );
    const keptTag = await consumer.consume(
      `${name}-kept`,
      () => undefined,
      () => cancelled.push('kept'),
    );
    // Backward compatible: no onCancel.
    await consumer.consume(`${name}-kept`, () => undefined);
    await raw(server, (ch) => ch.deleteQueue(name));
    await expect.poll(() => cancelled).toEqual([name]);
    await consumer.cancel(keptTag);
    await raw(server, (ch) => ch.deleteQueue(`${name}-kept`));
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(cancelled).toEqual([name]);
    let closed = false;
    consumer.onClose(() => (closed = true));
    expect(closed).toBe(false); // the channel survives a broker cancel
    await consumer.close();
  });

  it('close() lets publishes without confirms and acks written just before it reach the broker', async () => {
    // amqplib interleaves channel buffers on the socket: a connection.close frame could overtake them.
    const name = `bt-flush-${uid()}`;
    const topology = new Topology().registerQueue(name);
    const setupConnection = connection();
    const declarer = await setupConnection.declarer();
    await declarer.declareExchange(topology.exchange(name));
    await declarer.declareQueue(topology.queue(name));
    await declarer.bindQueue(name, name, name);
    try {
      const count = 3000;
      const publisher = connection({ publisherConfirms: false });
      const channel = await publisher.publishChannel();
      const body = Buffer.alloc(512, 'x');
      await Promise.all(Array.from({ length: count }, () => channel.publish(name, name, body, {})));
      await publisher.close();
      // Routing to the queue may trail the close-ok by a moment; a lost publish never shows up.
      await expect.poll(() => declarer.queueLength(name), { timeout: 5_000 }).toBe(count);

      const consumerConnection = connection();
      const consumer = await consumerConnection.openConsumerChannel(count);
      const received: Delivery[] = [];
      await consumer.consume(name, (d) => received.push(d));
      await expect.poll(() => received.length, { timeout: 15_000 }).toBe(count);
      for (const d of received) consumer.ack(d);
      await consumerConnection.close();
      // Acks lost on the way put their messages back on the queue.
      await expect.poll(() => declarer.queueLength(name), { timeout: 5_000 }).toBe(0);
    } finally {
      await cleanup({ queues: [name], exchanges: [name] });
    }
  });

  it('close() never hangs, also with a black-holed pending connect', async () => {
    const hole = await blackHole();
    try {
      const c = connection({ publisherConnectTimeout: 2, publisherReadResponseTimeout: 1 }, hole.server);
      const pending = c.publishChannel().catch((e: unknown) => e);
      const started = Date.now();
      await c.close();
      expect(Date.now() - started).toBeLessThan(1500);
      expect(await pending).toBeInstanceOf(Error);
    } finally {
      await hole.close();
    }
  });

  it('BrokerPool shares one connection per server', async () => {
    const pool = new BrokerPool(config());
    expect(pool.get(servers[0]!)).toBe(pool.get(servers[0]!));
    expect(pool.get(servers[1]!)).not.toBe(pool.get(servers[0]!));
    await (await pool.get(servers[1]!).publishChannel()).publish('', 'nope', Buffer.from('x'), {});
    await pool.close();
    expect(() => pool.get(servers[0]!)).toThrow(/closed/);
  });

  it('raw helper sanity', async () => {
    expect(await raw(server, () => Promise.resolve(1))).toBe(1);
    expect(await drain(server, 'amq.nonexistent.queue').catch(() => [])).toEqual([]);
  });
});
