/**
 * Bad input against a running Subscriber (real RabbitMQ + RedisDedupStore): what real queues contain besides
 * well-formed Beetle messages, published with raw amqplib, and configuration mistakes. Every case asserts its
 * documented outcome (the `processed` event), that the delivery was acked (the queue ends empty), that the
 * subscriber keeps running and that a valid message interleaved in the same queue is handled.
 *
 * Documented behaviour (see also the README of @beetle/subscriber):
 * - no headers (amqplib yields `{}`: "header format_version is missing"), missing/empty message id, a Beetle header missing or not an integer (a table, a float, a
 *   boolean, more than 16 digits) → `DecodingError`: acked, handler not run, `error` hook gets the
 *   `MessageDecodingError` naming the problem. Integer-typed headers (not strings) are accepted, as Ruby's
 *   `to_i` does.
 * - `expires_at` in the past → `Ancient`: acked, handler not run, no hooks.
 * - `expires_at` absurdly far (1e15) → handled normally (`OK`); on the Redis path the `expires` key holds it
 *   and is cleaned up on ack like any other.
 * - empty body and an 8 MB body → handled normally, body intact.
 * - invalid UTF-8 where the handler calls `message.json()` → the handler's `MessageDecodingError`; with
 *   attempts 1 (simple path, acked before running) → `AttemptsLimitReached`; with `retryOn` excluding it →
 *   `ExceptionNotAccepted` at once. Acked either way.
 * - unknown routing key: a wildcard binding delivers it (routing key visible to the handler); an unbound key
 *   is dropped by the broker and never reaches the subscriber.
 * - a queue deleted under the consumer: the broker cancels the consumer; the subscriber logs it, emits an
 *   `error` event (phase `consume`), keeps consuming its other queues and the same queue on the other broker,
 *   and after a backoff re-declares the queue and consumes it again.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { createServer, type Server, type Socket } from 'node:net';
import type * as Amqp from 'amqplib';
import {
  MessageDecodingError,
  Outcome,
  Topology,
  createConfig,
  type BeetleConfigInput,
  type Logger,
} from '@beetle/core';
import { encodeMessage, type EncodeOptions } from '@beetle/core/kit';
import { RedisDedupStore } from '@beetle/dedup-redis';
import {
  Subscriber,
  type AnyMessage,
  type ProcessedEvent,
  type SubscriberErrorEvent,
} from '@beetle/subscriber';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deleteQueues, messageCount, redisServer, servers, uid, waitFor } from './integration-helpers.js';

// amqplib is a dependency of @beetle/broker-amqp, not of this package: load it from there (tests only).
const requireFromBroker = createRequire(new URL('../../broker-amqp/package.json', import.meta.url));
const amqp = requireFromBroker('amqplib') as typeof Amqp;

const prefix = `beetle-bad-${uid()}`;
const Q = {
  /** Default handler options: attempts 1, the simple path (acked before the handler runs, no Redis). */
  simple: `${prefix}-simple`,
  /** attempts 2, exceptions 1: the full path through the dedup store; body decoding errors are not retried. */
  full: `${prefix}-full`,
  /** Bound with a wildcard key. */
  wild: `${prefix}-wild`,
  /** Deleted under the consumer. */
  doomed: `${prefix}-doomed`,
} as const;
const WILD_KEY = `${prefix}.wild.#`;

const [server, otherServer] = [servers[0]!, servers[1]!];
const now = (): number => Math.floor(Date.now() / 1000);

interface Run {
  queue: string;
  body: Buffer;
  routingKey: string;
  redundant: boolean;
}
interface Hooked {
  queue: string;
  decoded: boolean;
  body: string;
  error: unknown;
}

let connection: Amqp.ChannelModel;
let channel: Amqp.ConfirmChannel;
let subscriber: Subscriber;
let store: RedisDedupStore;
const processed: ProcessedEvent[] = [];
const errorEvents: SubscriberErrorEvent[] = [];
const runs: Run[] = [];
const hooked: Hooked[] = [];
const warnings: string[] = [];

const captureLogger: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: (...args: unknown[]) => {
    warnings.push(args.filter((a): a is string => typeof a === 'string').join(' '));
  },
  error: () => undefined,
};

/** Publishes with raw amqplib on the file's confirm channel (servers[0] unless told otherwise). */
async function publishRaw(
  exchange: string,
  key: string,
  body: Buffer,
  properties: Amqp.Options.Publish,
  on: Amqp.ConfirmChannel = channel,
): Promise<void> {
  on.publish(exchange, key, body, properties);
  await on.waitForConfirms();
}

/** A well-formed Beetle message; returns its message id. */
async function publishValid(queue: string, text: string, options: EncodeOptions = {}): Promise<string> {
  const { body, properties } = encodeMessage(text, options);
  await publishRaw(queue, queue, body, properties);
  return properties.messageId;
}

/** Beetle's three headers, as strings, for a message expiring in a day. */
const beetleHeaders = (overrides: Record<string, unknown> = {}): Record<string, unknown> => ({
  format_version: '1',
  flags: '0',
  expires_at: String(now() + 86_400),
  ...overrides,
});

/** Waits for `count` more processed events of `queue` (after `from`), returns them. */
async function eventsOf(queue: string, from: number, count: number, ms = 10_000): Promise<ProcessedEvent[]> {
  const mine = (): ProcessedEvent[] => processed.slice(from).filter((e) => e.queue === queue);
  await waitFor(() => mine().length >= count, ms, `${count} processed events on ${queue}`);
  return mine();
}

const byUuid = (events: ProcessedEvent[], uuid: string): ProcessedEvent | undefined =>
  events.find((e) => e.message?.uuid === uuid);

const errorText = (error: unknown): string => (error instanceof Error ? error.message : String(error));

async function readyCount(queue: string): Promise<number> {
  return (await channel.checkQueue(queue)).messageCount;
}

beforeAll(async () => {
  connection = await amqp.connect(`amqp://guest:guest@${server}`);
  channel = await connection.createConfirmChannel();
  channel.on('error', () => undefined);

  const topology = new Topology()
    .registerQueue(Q.simple)
    .registerQueue(Q.full)
    .registerQueue(Q.wild, { key: WILD_KEY })
    .registerQueue(Q.doomed);
  const config = createConfig({
    servers,
    prefetchCount: 10,
    subscriberConcurrency: 4,
    rejectRequeueDelay: 0.2,
    subscriberReconnectDelay: 0.2,
    subscriberReconnectMaxDelay: 1,
    subscriberConnectTimeout: 3,
    stopTimeout: 5,
  });
  store = new RedisDedupStore({ redisServer, failoverTimeout: 3 });
  subscriber = new Subscriber({ config, topology, store, logger: captureLogger });
  subscriber.on('processed', (event) => processed.push(event));
  subscriber.on('error', (event) => errorEvents.push(event));
  const hooks = (queue: string) => ({
    errback: (message: AnyMessage, error: unknown) =>
      void hooked.push({ queue, decoded: message.decoded, body: message.body.toString('latin1'), error }),
  });
  const handler =
    (queue: string) =>
    (message: { body: Buffer; routingKey: string; redundant: boolean; json(): unknown }): void => {
      runs.push({ queue, body: message.body, routingKey: message.routingKey, redundant: message.redundant });
      // Handlers that expect JSON: everything starting with "{" or invalid UTF-8 is parsed.
      if (message.body.length > 0 && (message.body[0] === 0x7b || message.body[0]! >= 0x80)) message.json();
    };
  subscriber
    .register(Q.simple, handler(Q.simple), hooks(Q.simple))
    .register(Q.full, handler(Q.full), {
      ...hooks(Q.full),
      attempts: 2,
      exceptions: 1,
      delay: 1,
      retryOn: (error) => !(error instanceof MessageDecodingError),
    })
    .register(Q.wild, handler(Q.wild), hooks(Q.wild))
    .register(Q.doomed, handler(Q.doomed), hooks(Q.doomed));
  const status = await subscriber.listen();
  expect(status.map((s) => s.state)).toEqual(['consuming', 'consuming']);
});

afterAll(async () => {
  await subscriber?.stop({ timeout: 2 });
  await store?.close();
  await connection?.close().catch(() => undefined);
  await deleteQueues(Object.values(Q));
});

describe('Subscriber fed bad input (real brokers and Redis)', () => {
  it('messages from non-Beetle publishers: no headers / no message id → DecodingError, acked, handler not run', async () => {
    const from = processed.length;
    const runsBefore = runs.length;
    await publishRaw(Q.simple, Q.simple, Buffer.from('foreign-1'), { messageId: 'foreign-no-headers' });
    await publishRaw(Q.simple, Q.simple, Buffer.from('foreign-2'), {});
    const valid = await publishValid(Q.simple, 'valid between foreigners');
    const { properties } = encodeMessage('x');
    await publishRaw(Q.simple, Q.simple, Buffer.from('foreign-3'), { ...properties, messageId: undefined });
    await publishRaw(Q.simple, Q.simple, Buffer.from('foreign-4'), { ...properties, messageId: '' });

    const events = await eventsOf(Q.simple, from, 5);
    const failed = events.filter((e) => e.outcome === Outcome.DecodingError);
    // amqplib hands out an empty table for a message without headers: the first Beetle header is missing.
    expect(failed.map((e) => errorText(e.error)).sort()).toEqual([
      'header format_version is missing',
      'message_id is missing',
      'message_id is missing',
      'message_id is missing',
    ]);
    expect(failed.every((e) => e.error instanceof MessageDecodingError && e.message === undefined)).toBe(
      true,
    );
    expect(byUuid(events, valid)).toMatchObject({ outcome: Outcome.OK, settled: 'acked' });
    expect(events.every((e) => e.settled === 'acked')).toBe(true);
    // Only the valid one reached the handler; the error hook saw the undecodable ones, raw body included.
    expect(runs.slice(runsBefore).map((r) => r.body.toString())).toEqual(['valid between foreigners']);
    expect(
      hooked
        .filter((h) => h.queue === Q.simple && !h.decoded)
        .map((h) => h.body)
        .sort(),
    ).toEqual(['foreign-1', 'foreign-2', 'foreign-3', 'foreign-4']);
    expect(await readyCount(Q.simple)).toBe(0);
  });

  it('Beetle headers of the wrong types → DecodingError naming the header; integer-typed headers are accepted', async () => {
    const from = processed.length;
    const cases: [string, Record<string, unknown>, string][] = [
      [
        'flags-table',
        beetleHeaders({ flags: { redundant: 1 } }),
        'header flags must be an integer, got object',
      ],
      [
        'expires-float',
        beetleHeaders({ expires_at: now() + 3600.5 }),
        'header expires_at must be an integer, got number',
      ],
      [
        'expires-bool',
        beetleHeaders({ expires_at: true }),
        'header expires_at must be an integer, got boolean',
      ],
      [
        'expires-text',
        beetleHeaders({ expires_at: 'tomorrow' }),
        'header expires_at must be an integer, got string',
      ],
      ['no-format', { flags: '0', expires_at: String(now() + 60) }, 'header format_version is missing'],
    ];
    for (const [id, headers] of cases) {
      await publishRaw(Q.simple, Q.simple, Buffer.from(id), { messageId: id, headers });
    }
    // Integers instead of strings (e.g. another client's encoder): Ruby's `to_i` accepts them, so do we.
    await publishRaw(Q.simple, Q.simple, Buffer.from('integer headers'), {
      messageId: 'integer-headers',
      headers: { format_version: 1, flags: 0, expires_at: now() + 3600 },
    });
    const valid = await publishValid(Q.simple, 'valid after wrong types');

    const events = await eventsOf(Q.simple, from, cases.length + 2);
    const failed = events.filter((e) => e.outcome === Outcome.DecodingError);
    expect(failed).toHaveLength(cases.length);
    for (const [id, , message] of cases) {
      expect(
        failed.map((e) => errorText(e.error)).some((text) => text.startsWith(message)),
        id,
      ).toBe(true);
    }
    expect(byUuid(events, 'integer-headers')).toMatchObject({ outcome: Outcome.OK, settled: 'acked' });
    expect(byUuid(events, valid)).toMatchObject({ outcome: Outcome.OK, settled: 'acked' });
    expect(events.every((e) => e.settled === 'acked')).toBe(true);
    expect(await readyCount(Q.simple)).toBe(0);
  });

  it('expires_at in the past → Ancient (acked, handler and hooks not run); absurd expires_at (1e15) → handled normally', async () => {
    const from = processed.length;
    const hookedBefore = hooked.length;
    const runsBefore = runs.length;
    const ancient = await publishValid(Q.full, 'ancient', { ttl: -10 });
    const farFuture = 'far-future';
    await publishRaw(Q.full, Q.full, Buffer.from(farFuture), {
      messageId: farFuture,
      headers: beetleHeaders({ expires_at: '1000000000000000' }),
    });
    // Past what a JS number holds exactly: rejected rather than rounded.
    await publishRaw(Q.full, Q.full, Buffer.from('too-far'), {
      messageId: 'too-far',
      headers: beetleHeaders({ expires_at: '10000000000000000' }),
    });
    const valid = await publishValid(Q.full, 'valid after expiry cases');

    const events = await eventsOf(Q.full, from, 4);
    expect(byUuid(events, ancient)).toMatchObject({ outcome: Outcome.Ancient, settled: 'acked' });
    expect(byUuid(events, farFuture)).toMatchObject({ outcome: Outcome.OK, settled: 'acked' });
    expect(byUuid(events, farFuture)?.message?.expiresAt).toBe(1e15);
    expect(events.find((e) => e.outcome === Outcome.DecodingError)?.error).toBeInstanceOf(
      MessageDecodingError,
    );
    expect(byUuid(events, valid)).toMatchObject({ outcome: Outcome.OK, settled: 'acked' });
    expect(
      runs
        .slice(runsBefore)
        .map((r) => r.body.toString())
        .sort(),
    ).toEqual([farFuture, 'valid after expiry cases']);
    // Ancient runs no hooks; only the undecodable one reached the error hook.
    expect(hooked.slice(hookedBefore).map((h) => h.body)).toEqual(['too-far']);
    // The full path went through Redis and cleaned up after itself: only the completed status is kept (with
    // expires, both with a TTL); the Ancient one never reached the store.
    expect(await store.inspect({ queue: Q.full, uuid: farFuture })).toEqual({
      status: 'completed',
      expires: String(1e15),
    });
    expect(await store.inspect({ queue: Q.full, uuid: ancient })).toEqual({});
    expect(await readyCount(Q.full)).toBe(0);
  });

  it('an empty body and an 8 MB body are handled normally, bodies intact', async () => {
    const from = processed.length;
    const runsBefore = runs.length;
    const big = Buffer.alloc(8 * 1024 * 1024, 'beetle ');
    const empty = await publishValid(Q.full, '');
    const large = await publishValid(Q.full, big.toString());
    const valid = await publishValid(Q.full, 'valid after the big one');
    const events = await eventsOf(Q.full, from, 3, 20_000);
    for (const uuid of [empty, large, valid]) {
      expect(byUuid(events, uuid)).toMatchObject({ outcome: Outcome.OK, settled: 'acked' });
    }
    const bodies = runs.slice(runsBefore).map((r) => r.body);
    expect(bodies.map((b) => b.length).sort((a, b) => a - b)).toEqual([0, 23, big.length]);
    const received = bodies.find((b) => b.length === big.length)!;
    const digest = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
    expect(digest(received)).toBe(digest(big));
    expect(await readyCount(Q.full)).toBe(0);
  });

  it('invalid UTF-8 with message.json(): AttemptsLimitReached (attempts 1), ExceptionNotAccepted (retryOn); acked', async () => {
    const from = processed.length;
    const invalid = Buffer.from([0xff, 0xfe, 0x7b, 0x22, 0x61, 0x22, 0x7d]);
    const simple = encodeMessage(invalid);
    await publishRaw(Q.simple, Q.simple, simple.body, simple.properties);
    const validSimple = await publishValid(Q.simple, '{"ok":true}');
    const full = encodeMessage(invalid);
    await publishRaw(Q.full, Q.full, full.body, full.properties);
    const validFull = await publishValid(Q.full, '{"ok":true}');

    const simpleEvents = await eventsOf(Q.simple, from, 2);
    const fullEvents = await eventsOf(Q.full, from, 2);
    const simpleFailure = byUuid(simpleEvents, simple.properties.messageId);
    expect(simpleFailure).toMatchObject({ outcome: Outcome.AttemptsLimitReached, settled: 'acked' });
    expect(simpleFailure?.error).toBeInstanceOf(MessageDecodingError);
    expect(errorText(simpleFailure?.error)).toBe(
      `message ${simple.properties.messageId}: body is not valid UTF-8`,
    );
    const fullFailure = byUuid(fullEvents, full.properties.messageId);
    expect(fullFailure).toMatchObject({ outcome: Outcome.ExceptionNotAccepted, settled: 'acked' });
    expect(fullFailure?.error).toBeInstanceOf(MessageDecodingError);
    expect(byUuid(simpleEvents, validSimple)).toMatchObject({ outcome: Outcome.OK, settled: 'acked' });
    expect(byUuid(fullEvents, validFull)).toMatchObject({ outcome: Outcome.OK, settled: 'acked' });
    expect(Object.keys(await store.inspect({ queue: Q.full, uuid: full.properties.messageId }))).toEqual([
      'status',
      'expires',
    ]);
    expect(await readyCount(Q.simple)).toBe(0);
    expect(await readyCount(Q.full)).toBe(0);
  });

  it('unknown routing keys: a wildcard binding delivers them; an unbound key never arrives, the subscriber is unaffected', async () => {
    const from = processed.length;
    const runsBefore = runs.length;
    const wildKey = `${prefix}.wild.some.unknown.key`;
    const routed = encodeMessage('routed by the wildcard');
    await publishRaw(Q.wild, wildKey, routed.body, routed.properties);
    const unbound = encodeMessage('nobody listens');
    await publishRaw(Q.wild, `${prefix}.nowhere`, unbound.body, unbound.properties);
    const valid = await publishValid(Q.simple, 'valid elsewhere');
    const events = await eventsOf(Q.wild, from, 1);
    await eventsOf(Q.simple, from, 1);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(byUuid(events, routed.properties.messageId)).toMatchObject({
      outcome: Outcome.OK,
      settled: 'acked',
    });
    expect(runs.slice(runsBefore).find((r) => r.queue === Q.wild)?.routingKey).toBe(wildKey);
    expect(processed.some((e) => e.message?.uuid === unbound.properties.messageId)).toBe(false);
    expect(byUuid(processed.slice(from), valid)).toMatchObject({ outcome: Outcome.OK });
    expect(await readyCount(Q.wild)).toBe(0);
  });

  it('a queue deleted under the consumer: the cancel is logged, other queues and the other broker keep working', async () => {
    const from = processed.length;
    await channel.deleteQueue(Q.doomed);
    await waitFor(
      () => warnings.some((w) => w.includes(`consumer of ${Q.doomed} cancelled by the broker`)),
      5_000,
      'the cancel warning',
    );
    // The subscriber keeps running: the same queue on the other broker and the other queues still work.
    const other = await amqp.connect(`amqp://guest:guest@${otherServer}`);
    try {
      const otherChannel = await other.createConfirmChannel();
      const onOther = encodeMessage('doomed queue, other broker');
      await publishRaw(Q.doomed, Q.doomed, onOther.body, onOther.properties, otherChannel);
      const valid = await publishValid(Q.simple, 'valid after the delete');
      const doomedEvents = await eventsOf(Q.doomed, from, 1);
      expect(byUuid(doomedEvents, onOther.properties.messageId)).toMatchObject({
        outcome: Outcome.OK,
        server: otherServer,
      });
      expect(byUuid(await eventsOf(Q.simple, from, 1), valid)).toMatchObject({ outcome: Outcome.OK });
    } finally {
      await other.close();
    }
    expect(subscriber.status().every((s) => s.state === 'consuming')).toBe(true);
    // No connection or channel was lost over it.
    expect(errorEvents.filter((e) => e.phase === 'connect')).toEqual([]);
  });

  // After a broker-side cancel the subscriber sets the queue up again (after the reconnect backoff) and consumes it.
  it('a deleted queue is re-declared and consumed again', async () => {
    const from = processed.length;
    await channel.assertQueue(Q.doomed, { durable: true });
    await channel.bindQueue(Q.doomed, Q.doomed, Q.doomed);
    await publishValid(Q.doomed, 'after re-creation');
    await eventsOf(Q.doomed, from, 1, 3_000);
  });

  it('after all that, every queue is empty on both brokers once the subscriber stops (nothing left unacked)', async () => {
    // Nothing should be left; purging only keeps a failure here from hiding the assertions below.
    await channel.purgeQueue(Q.doomed);
    await subscriber.stop({ timeout: 2 });
    for (const target of servers) {
      for (const queue of Object.values(Q))
        expect(await messageCount(target, queue), `${target} ${queue}`).toBe(0);
    }
    expect(errorEvents.filter((e) => e.phase === 'processing')).toEqual([]);
  });
});

describe('configuration errors produce one clear error naming the problem', () => {
  const baseTopology = (): Topology => new Topology().registerQueue(`${prefix}-config`);

  it('unknown key (camelCase typo and Ruby name)', () => {
    expect(() => createConfig({ prefetchCont: 10 } as BeetleConfigInput)).toThrow(
      'unknown option `prefetchCont`; did you mean `prefetchCount`?',
    );
    expect(() => createConfig({ prefetch_count: 10 } as BeetleConfigInput)).toThrow(
      'unknown option `prefetch_count`; did you mean `prefetchCount`?',
    );
  });

  it('wrong types and values', async () => {
    expect(() => createConfig({ prefetchCount: '10' } as unknown as BeetleConfigInput)).toThrow(
      'option `prefetchCount` must be an integer between 1 and 65535, got string "10"',
    );
    expect(() => createConfig({ subscriberConnectTimeout: -1 })).toThrow(
      'option `subscriberConnectTimeout` must be a positive number up to 2147483 (seconds), got number -1',
    );
    expect(() => createConfig({ servers: 'localhost:x' })).toThrow(
      'option `servers` contains an invalid server "localhost:x": expected "host:port"',
    );
    const unused = new RedisDedupStore({ redisServer, failoverTimeout: 1 });
    const subscriber = new Subscriber({
      config: createConfig({ servers: [server] }),
      topology: baseTopology(),
      store: unused,
    });
    expect(() => subscriber.register(`${prefix}-config`, () => undefined, { attempts: -1 })).toThrow(
      'handler option `attempts` must be a non-negative number, got -1',
    );
    expect(() => subscriber.register('no-such-queue', () => undefined)).toThrow(
      'unknown queue "no-such-queue": register it first',
    );
    await unused.close();
  });

  /** Listens with one broker and `input`; returns the status, the error events and how long listen() took. */
  async function listenOnce(input: BeetleConfigInput) {
    const store = new RedisDedupStore({ redisServer, failoverTimeout: 1 });
    const config = createConfig({ subscriberReconnectDelay: 60, subscriberReconnectMaxDelay: 60, ...input });
    const subscriber = new Subscriber({ config, topology: baseTopology(), store });
    const errors: SubscriberErrorEvent[] = [];
    subscriber.on('error', (event) => errors.push(event));
    subscriber.register(`${prefix}-config`, () => undefined);
    const started = Date.now();
    try {
      const status = await subscriber.listen();
      return { status, errors, ms: Date.now() - started };
    } finally {
      await subscriber.stop({ timeout: 1 });
      await store.close();
    }
  }

  it('unreachable host (nothing listening): one connect error naming the server, within the connect timeout', async () => {
    const port = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const address = probe.address();
        probe.close(() => resolve(typeof address === 'object' && address ? address.port : 1));
      });
    });
    const target = `127.0.0.1:${port}`;
    const { status, errors, ms } = await listenOnce({ servers: [target], subscriberConnectTimeout: 2 });
    expect(ms).toBeLessThan(2500);
    expect(status).toMatchObject([{ server: target, state: 'disconnected', failures: 1 }]);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ phase: 'connect', server: target });
    expect(errorText(errors[0]!.error)).toMatch(
      new RegExp(`^${target}: cannot connect \\(consumer connection\\): .*ECONNREFUSED`),
    );
  });

  it('a host that accepts but never answers: one connect error within the connect timeout', async () => {
    const sockets: Socket[] = [];
    const silent: Server = createServer((socket) => void sockets.push(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const address = silent.address();
    const target = `127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
    try {
      const { status, errors, ms } = await listenOnce({ servers: [target], subscriberConnectTimeout: 1 });
      expect(ms).toBeGreaterThanOrEqual(900);
      expect(ms).toBeLessThan(2500);
      expect(status).toMatchObject([{ server: target, state: 'disconnected' }]);
      expect(errors).toHaveLength(1);
      expect(errorText(errors[0]!.error)).toMatch(
        new RegExp(`^${target}: cannot connect \\(consumer connection\\): .*timed? ?out`, 'i'),
      );
    } finally {
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  });

  it('bad credentials: one connect error naming authentication', async () => {
    const { status, errors } = await listenOnce({ servers: [server], password: 'not-the-password' });
    expect(status).toMatchObject([{ server, state: 'disconnected' }]);
    expect(errors).toHaveLength(1);
    expect(errorText(errors[0]!.error)).toMatch(
      new RegExp(
        `^${server}: authentication failed for user "guest" on vhost "/" \\(consumer connection\\): .*ACCESS_REFUSED`,
      ),
    );
  });
});
