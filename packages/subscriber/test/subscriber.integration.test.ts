import { Outcome, Topology, createConfig, type BeetleConfigInput, type DedupStore } from '@beetle/core';
import { RedisDedupStore, type RedisDedupStoreOptions } from '@beetle/dedup-redis';
import { freePort, startRedis, type ServiceHandle } from '@beetle/test-services';
import { Subscriber, type ProcessedEvent } from '@beetle/subscriber';
import { Deliveries } from '../src/delivery.js';
import { createHash } from 'node:crypto';
import { FORGET } from '../../dedup-redis/src/scripts.js';
import { Socket } from 'node:net';
import type { Delivery } from '@beetle/broker-amqp';
import { afterEach, describe, expect, it } from 'vitest';
import {
  deleteQueues,
  killConsumerConnections,
  messageCount,
  publish,
  publishCopies,
  publishRaw,
  redisServer,
  servers,
  take,
  uid,
  waitFor,
} from './integration-helpers.js';

const FORGET_SHA = createHash('sha1').update(FORGET.lua).digest('hex');

interface Setup {
  queue: string;
  subscriber: Subscriber;
  store: DedupStore;
  processed: ProcessedEvent[];
}

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function setup(
  configInput: BeetleConfigInput = {},
  storeOptions: RedisDedupStoreOptions = { redisServer, failoverTimeout: 3 },
): Setup {
  const queue = `beetle-sub-it-${uid()}`;
  const topology = new Topology();
  topology.registerQueue(queue);
  const config = createConfig({
    servers,
    subscriberReconnectDelay: 0.2,
    subscriberReconnectMaxDelay: 1,
    subscriberConnectTimeout: 2,
    publisherReadResponseTimeout: 3,
    stopTimeout: 5,
    ...configInput,
  });
  const store = new RedisDedupStore(storeOptions);
  const subscriber = new Subscriber({ config, topology, store });
  const processed: ProcessedEvent[] = [];
  subscriber.on('processed', (event) => processed.push(event));
  cleanups.push(async () => {
    await subscriber.stop({ timeout: 1 });
    await store.close();
    await deleteQueues([queue]);
  });
  return { queue, subscriber, store, processed };
}

describe('Subscriber against real brokers and Redis', () => {
  it('runs a redundant message published to both brokers exactly once; both copies acked; only the completed status left', async () => {
    const { queue, subscriber, store, processed } = setup();
    const runs: string[] = [];
    subscriber.register(queue, (message) => {
      runs.push(`${message.server}:${message.text()}`);
    });
    const status = await subscriber.listen();
    expect(status.map((s) => s.state)).toEqual(['consuming', 'consuming']);

    const uuid = await publish(servers, queue, queue, 'hello', { redundant: true });
    await waitFor(() => processed.length === 2, 10_000, 'both copies processed');
    expect(runs).toHaveLength(1);
    expect(processed.map((p) => p.outcome)).toEqual([Outcome.OK, Outcome.OK]);
    expect(new Set(processed.map((p) => p.server))).toEqual(new Set(servers));
    expect(processed.every((p) => p.settled === 'acked')).toBe(true);
    const kept = await store.inspect({ queue, uuid });
    expect(Object.keys(kept).sort()).toEqual(['expires', 'status']);
    expect(kept.status).toBe('completed');

    await subscriber.stop();
    for (const server of servers) expect(await messageCount(server, queue)).toBe(0);
  });

  it('writes the ack frames of both copies before the cleanup of their keys (300 redundant messages)', async () => {
    const { queue, subscriber, store, processed } = setup({ subscriberConcurrency: 50 });
    subscriber.register(queue, () => undefined);
    await subscriber.listen();
    const portOf = (address: string): number => Number(address.slice(address.lastIndexOf(':') + 1));
    const brokerPorts = new Set(servers.map(portOf));
    const redisPort = portOf(redisServer);
    // Each delivery's tag on its broker, from the subscriber's entry point.
    const tagsOf = new Map<string, string[]>(); // uuid -> ["port/tag", ...]
    const deliveredOn = new Map<number, bigint[]>(); // port -> delivery tags
    const proto = Deliveries.prototype as unknown as Record<'onDelivery', (...args: unknown[]) => void>;
    const originalOnDelivery = proto.onDelivery;
    proto.onDelivery = function (this: unknown, ...args: unknown[]) {
      const [server, , , delivery] = args as [string, unknown, unknown, Delivery];
      const uuid = String(delivery.properties.messageId);
      tagsOf.set(uuid, [...(tagsOf.get(uuid) ?? []), `${portOf(server)}/${delivery.fields.deliveryTag}`]);
      const port = portOf(server);
      deliveredOn.set(port, [...(deliveredOn.get(port) ?? []), BigInt(delivery.fields.deliveryTag)]);
      return originalOnDelivery.apply(this, args);
    };
    // What reaches the sockets, in the order of the system calls: basic.ack frames and DEL commands.
    const ackedAt = new Map<string, number>(); // "port/tag" -> write number
    const deletes: { at: number; uuids: string[] }[] = [];
    let writes = 0;
    const record = (socket: Socket, chunks: readonly Buffer[]): void => {
      const at = ++writes;
      const data = Buffer.concat(chunks);
      if (brokerPorts.has(socket.remotePort ?? -1)) {
        for (const { tag, multiple } of basicAcks(data)) {
          if (!multiple) ackedAt.set(`${socket.remotePort}/${tag}`, at);
          // basic.ack(multiple) acks every delivery up to its tag on that channel (one per broker here).
          else {
            for (const delivered of deliveredOn.get(socket.remotePort!) ?? []) {
              const key = `${socket.remotePort}/${delivered}`;
              if (delivered <= tag && !ackedAt.has(key)) ackedAt.set(key, at);
            }
          }
        }
      } else if (socket.remotePort === redisPort) {
        for (const command of respCommands(data)) {
          // The cleanup: the forget script over the message ids (at the defaults, keeping the completed
          // status), or Ruby's DEL of all keys.
          const name = command[0]?.toLowerCase();
          const forget =
            (name === 'evalsha' && command[1] === FORGET_SHA) ||
            (name === 'eval' && command[1] === FORGET.lua);
          if (name !== 'del' && !forget) continue;
          const uuids = command.flatMap((key) => {
            const match = /^msgid:[^:]+:([^:]+)(:status)?$/.exec(key);
            return match && (forget ? match[2] === undefined : match[2] !== undefined) ? [match[1]!] : [];
          });
          deletes.push({ at, uuids });
        }
      }
    };
    const socketProto = Socket.prototype as unknown as Record<
      '_write' | '_writev',
      (...args: unknown[]) => void
    >;
    const original = { _write: socketProto._write, _writev: socketProto._writev };
    socketProto._write = function (this: Socket, ...args: unknown[]) {
      record(this, [Buffer.from(args[0] as Buffer)]);
      return original._write.apply(this, args);
    };
    socketProto._writev = function (this: Socket, ...args: unknown[]) {
      record(
        this,
        (args[0] as { chunk: Buffer | string }[]).map(({ chunk }) => Buffer.from(chunk)),
      );
      return original._writev.apply(this, args);
    };
    try {
      const uuids = await publishCopies(
        servers,
        queue,
        Array.from({ length: 300 }, (_, i) => `m${i}`),
      );
      await waitFor(() => processed.length === 600, 30_000, 'all copies processed');
      await waitFor(
        async () =>
          (await Promise.all(uuids.map((uuid) => store.inspect({ queue, uuid })))).every(
            (keys) => Object.keys(keys).sort().join() === 'expires,status',
          ),
        10_000,
        'all keys cleaned up',
      );
      expect(ackedAt.size).toBe(600); // every copy's ack frame was seen on its socket
      const deleted = deletes.flatMap((d) => d.uuids);
      expect(new Set(deleted)).toEqual(new Set(uuids));
      for (const { at, uuids: inCommand } of deletes) {
        for (const uuid of inCommand) {
          const tags = tagsOf.get(uuid) ?? [];
          expect(tags).toHaveLength(2);
          for (const tag of tags) expect(ackedAt.get(tag) ?? Infinity).toBeLessThan(at);
        }
      }
    } finally {
      Object.assign(socketProto, original);
      proto.onDelivery = originalOnDelivery;
    }
  });

  const redisOutages: [
    string,
    (redis: ServiceHandle) => Promise<void>,
    (redis: ServiceHandle) => Promise<void>,
  ][] = [
    ['stalled (SIGSTOP 4 s)', (redis) => redis.pause(), (redis) => redis.resume()],
    // A restarted disposable Redis is empty: the first batch completed before, so nothing is lost with it.
    ['stopped (connection refused 4 s), then restarted', (redis) => redis.kill(), (redis) => redis.start()],
  ];

  it.each(redisOutages)(
    'waits while Redis is %s, then goes on: each message handled once, every copy acked',
    async (_, stopRedis, restoreRedis) => {
      const redis = await startRedis(await freePort());
      cleanups.push(() => redis.stop()); // runs after the setup's cleanup (reverse order)
      const { queue, subscriber, store, processed } = setup(
        { subscriberConcurrency: 8, prefetchCount: 10 },
        { redisServer: redis.address, failoverTimeout: 30, readTimeout: 1 },
      );
      const runs = new Map<string, number>();
      subscriber.register(queue, (message) => {
        runs.set(message.text(), (runs.get(message.text()) ?? 0) + 1);
      });
      await subscriber.listen();
      const before = Array.from({ length: 20 }, (_, i) => `before-${i}`);
      await publishCopies(servers, queue, before);
      await waitFor(() => processed.length === 40, 15_000, 'the first 40 copies processed');

      await stopRedis(redis);
      const after = Array.from({ length: 20 }, (_, i) => `after-${i}`);
      const ids = await publishCopies(servers, queue, after);
      await new Promise((resolve) => setTimeout(resolve, 4000));
      // Nothing ran meanwhile: every delivery waits for its first store call.
      expect(runs.size).toBe(20);
      expect(processed).toHaveLength(40);
      await restoreRedis(redis);

      await waitFor(() => processed.length === 80, 30_000, 'all 80 copies processed after the outage');
      expect([...runs.keys()].sort()).toEqual([...before, ...after].sort());
      expect([...runs.values()].every((n) => n === 1)).toBe(true);
      expect(processed.every((p) => p.outcome === Outcome.OK && p.settled === 'acked')).toBe(true);
      for (const uuid of ids) {
        expect(Object.keys(await store.inspect({ queue, uuid })).sort()).toEqual(['expires', 'status']);
      }
      await subscriber.stop();
      for (const server of servers) expect(await messageCount(server, queue)).toBe(0);
    },
  );

  it('retries with delay 1 s and attempts 3, spaced by the store delay and the requeue delay', async () => {
    const { queue, subscriber, store, processed } = setup();
    const times: number[] = [];
    subscriber.register(
      queue,
      () => {
        times.push(Date.now());
        if (times.length < 3) throw new Error(`attempt ${times.length} fails`);
        return 'third time lucky';
      },
      { delay: 1, attempts: 3, exceptions: 2 },
    );
    await subscriber.listen();
    const uuid = await publish([servers[0]!], queue, queue, 'retry me');
    await waitFor(() => processed.some((p) => p.outcome === Outcome.OK), 15_000, 'the successful attempt');
    expect(times).toHaveLength(3);
    for (let i = 1; i < times.length; i++) {
      // rejectRequeueDelay (1 s) before the redelivery, and the store's delay (whole seconds) respected.
      expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(950);
      expect(Math.floor(times[i]! / 1000)).toBeGreaterThanOrEqual(Math.floor(times[i - 1]! / 1000) + 1);
    }
    const outcomes = processed.map((p) => p.outcome);
    expect(outcomes.filter((o) => o === Outcome.HandlerCrash)).toHaveLength(2);
    expect(outcomes.at(-1)).toBe(Outcome.OK);
    expect(
      outcomes.every((o) => o === Outcome.HandlerCrash || o === Outcome.Delayed || o === Outcome.OK),
    ).toBe(true);
    expect(Object.keys(await store.inspect({ queue, uuid }))).toEqual(['status', 'expires']);
  });

  it('acks undecodable deliveries (DecodingError) and keeps processing the following valid message', async () => {
    const { queue, subscriber, processed } = setup();
    const bodies: string[] = [];
    const errors: string[] = [];
    subscriber.register(queue, (message) => void bodies.push(message.text()), {
      errback: (message, error) => errors.push(`${message.decoded}:${(error as Error).name}`),
    });
    await subscriber.listen();
    const server = servers[0]!;
    // No Beetle headers at all.
    await publishRaw(server, queue, queue, Buffer.from('plain'), { messageId: 'no-headers' });
    // Garbage Beetle headers.
    await publishRaw(server, queue, queue, Buffer.from('junk'), {
      messageId: 'garbage',
      headers: { format_version: 'x', flags: 'y', expires_at: 'z' },
    });
    // No message id, empty body.
    await publishRaw(server, queue, queue, Buffer.alloc(0), {});
    // A valid message with an empty body is fine.
    await publish([server], queue, queue, '');
    await publish([server], queue, queue, 'valid');
    await waitFor(() => processed.length === 5, 10_000, 'five deliveries');
    expect(processed.map((p) => p.outcome)).toEqual([
      Outcome.DecodingError,
      Outcome.DecodingError,
      Outcome.DecodingError,
      Outcome.OK,
      Outcome.OK,
    ]);
    expect(errors).toEqual([
      'false:MessageDecodingError',
      'false:MessageDecodingError',
      'false:MessageDecodingError',
    ]);
    expect(bodies).toEqual(['', 'valid']);
    await subscriber.stop();
    expect(await messageCount(server, queue)).toBe(0);
  });

  it('stop() acks what completed and leaves a handler still running at the deadline for redelivery', async () => {
    const { queue, subscriber, store } = setup({ prefetchCount: 2, subscriberConcurrency: 2 });
    const server = servers[0]!;
    let releaseQuick!: () => void;
    const quickGate = new Promise<void>((resolve) => (releaseQuick = resolve));
    const started: string[] = [];
    let slowSignal: AbortSignal | undefined;
    subscriber.register(
      queue,
      async (message, ctx) => {
        const body = message.text();
        started.push(body);
        if (body === 'quick') {
          await quickGate;
          return;
        }
        slowSignal = ctx.signal;
        await new Promise(() => undefined); // never finishes
      },
      { attempts: 2, exceptions: 1 },
    );
    await subscriber.listen([queue]);
    await publish([server], queue, queue, 'quick');
    const slowId = await publish([server], queue, queue, 'slow');
    await waitFor(() => started.length === 2, 10_000, 'both handlers running');

    const stopping = subscriber.stop({ timeout: 1.5 });
    // A delivery arriving while stopping is not processed (consumers are cancelled first).
    setTimeout(releaseQuick, 300);
    const result = await stopping;
    expect(result.abandoned).toBe(1);
    expect(slowSignal?.aborted).toBe(true);
    expect(await messageCount(server, queue)).toBe(1);
    const redelivered = await take(server, queue);
    expect(redelivered && redelivered.content.toString()).toBe('slow');
    expect(redelivered && redelivered.fields.redelivered).toBe(true);
    // The abandoned attempt is given back (uncounted, not running), so the redelivery runs at once.
    expect(await store.inspect({ queue, uuid: slowId })).toMatchObject({
      status: 'incomplete',
      attempts: '0',
      timeout: '0',
    });
    await store.acknowledged({ queue, uuid: slowId }, { redundant: false });
  });

  it('reconnects a broker whose connection was closed and restores its consumers; the other is undisturbed', async () => {
    const { queue, subscriber, processed } = setup();
    const events: string[] = [];
    subscriber.on('disconnected', (e) => events.push(`disconnected ${e.server}`));
    subscriber.on('connected', (e) => events.push(`connected ${e.server}`));
    subscriber.register(queue, (message) => message.text());
    await subscriber.listen();
    events.length = 0;
    const [victim, other] = [servers[0]!, servers[1]!];
    await waitFor(
      async () => (await killConsumerConnections(victim)) > 0,
      15_000,
      'the consumer connection to show up',
    );
    await waitFor(() => events.includes(`connected ${victim}`), 15_000, 'the reconnect');
    expect(events).toEqual([`disconnected ${victim}`, `connected ${victim}`]);
    await publish([victim], queue, queue, 'after reconnect');
    await publish([other], queue, queue, 'other broker');
    await waitFor(() => processed.length === 2, 10_000, 'both messages');
    expect(new Set(processed.map((p) => p.server))).toEqual(new Set(servers));
    expect(processed.every((p) => p.outcome === Outcome.OK)).toBe(true);
  });

  it('an unreachable broker in the list does not stop consumption on the others', async () => {
    const { queue, subscriber, processed } = setup({ servers: [...servers, '127.0.0.1:5699'] });
    const disconnected: string[] = [];
    subscriber.on('error', (event) => {
      if (event.phase === 'connect' && event.server) disconnected.push(event.server);
    });
    subscriber.register(queue, () => 'ok');
    const status = await subscriber.listen();
    const byServer = Object.fromEntries(status.map((s) => [s.server, s.state]));
    expect(byServer).toEqual({
      [servers[0]!]: 'consuming',
      [servers[1]!]: 'consuming',
      '127.0.0.1:5699': 'disconnected',
    });
    for (const server of servers) await publish([server], queue, queue, `via ${server}`);
    await waitFor(() => processed.length === 2, 10_000, 'messages from both live brokers');
    expect(processed.every((p) => p.outcome === Outcome.OK)).toBe(true);
    // It keeps retrying in the background.
    await waitFor(() => disconnected.length >= 2, 5_000, 'a reconnect attempt');
    expect(subscriber.status().find((s) => s.server === '127.0.0.1:5699')?.failures).toBeGreaterThanOrEqual(
      2,
    );
  });
});

/** The basic.ack frames in `data` (AMQP 0-9-1: method frame, class 60, method 80): tag and `multiple` bit. */
function basicAcks(data: Buffer): { tag: bigint; multiple: boolean }[] {
  const tags: { tag: bigint; multiple: boolean }[] = [];
  let offset = 0;
  while (offset + 7 <= data.length) {
    const type = data[offset]!;
    const size = data.readUInt32BE(offset + 3);
    if (
      type === 1 &&
      size >= 13 &&
      data.readUInt16BE(offset + 7) === 60 &&
      data.readUInt16BE(offset + 9) === 80
    ) {
      tags.push({ tag: data.readBigUInt64BE(offset + 11), multiple: (data[offset + 19]! & 1) === 1 });
    }
    offset += 7 + size + 1; // header, payload, frame end
  }
  return tags;
}

/** The commands (RESP arrays of bulk strings) in `data`, as ioredis writes them. */
function respCommands(data: Buffer): string[][] {
  const text = data.toString('latin1');
  const commands: string[][] = [];
  let at = 0;
  const line = (): string => {
    const end = text.indexOf('\r\n', at);
    const value = text.slice(at, end);
    at = end + 2;
    return value;
  };
  while (at < text.length && text[at] === '*') {
    const count = Number(line().slice(1));
    const args: string[] = [];
    for (let i = 0; i < count; i++) {
      const length = Number(line().slice(1));
      args.push(text.slice(at, at + length));
      at += length + 2;
    }
    commands.push(args);
  }
  return commands;
}
