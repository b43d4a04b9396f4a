import { randomBytes, randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import type * as Amqp from 'amqplib';
import { servers as allServers } from '../../broker-amqp/test/helpers.js';
import { type Payload } from '@beetle/core';
import { encodeMessage, type EncodeOptions } from '@beetle/core/kit';

// amqplib is a dependency of @beetle/broker-amqp, not of this package: load it from there (tests only).
const requireFromBroker = createRequire(new URL('../../broker-amqp/package.json', import.meta.url));
const amqp = requireFromBroker('amqplib') as typeof Amqp;

/** The first two shared brokers (global setup fails the run when they are missing). */
export const servers = allServers.slice(0, 2);

export const redisServer = process.env.BEETLE_TEST_REDIS ?? '127.0.0.1:6379';

export const uid = (): string => randomBytes(4).toString('hex');

/** Runs `fn` on a fresh raw amqplib channel of `server`. */
export async function raw<T>(server: string, fn: (ch: Amqp.ConfirmChannel) => Promise<T>): Promise<T> {
  const conn = await amqp.connect(`amqp://guest:guest@${server}`);
  try {
    const ch = await conn.createConfirmChannel();
    ch.on('error', () => undefined);
    return await fn(ch);
  } finally {
    await conn.close().catch(() => undefined);
  }
}

/** Publishes a Beetle message (format 1 envelope) to `exchange` with `key` on each given broker. */
export async function publish(
  targets: readonly string[],
  exchange: string,
  key: string,
  payload: Payload,
  options: EncodeOptions = {},
): Promise<string> {
  const { body, properties } = encodeMessage(payload, options);
  for (const server of targets) {
    await raw(server, async (ch) => {
      ch.publish(exchange, key, body, properties);
      await ch.waitForConfirms();
    });
  }
  return properties.messageId;
}

/** Publishes raw bytes with raw properties (for non-Beetle messages). */
export async function publishRaw(
  server: string,
  exchange: string,
  key: string,
  body: Buffer,
  properties: Amqp.Options.Publish,
): Promise<void> {
  await raw(server, async (ch) => {
    ch.publish(exchange, key, body, properties);
    await ch.waitForConfirms();
  });
}

/** Ready messages in a queue (unacked ones are counted once their channel closed). */
export async function messageCount(server: string, queue: string): Promise<number> {
  return raw(server, async (ch) => (await ch.checkQueue(queue)).messageCount);
}

/** Takes the next message of a queue (acked), if any. */
export async function take(server: string, queue: string): Promise<Amqp.GetMessage | false> {
  return raw(server, (ch) => ch.get(queue, { noAck: true }));
}

export async function deleteQueues(names: readonly string[]): Promise<void> {
  for (const server of servers) {
    await raw(server, async (ch) => {
      for (const name of names) {
        await ch.deleteQueue(name).catch(() => undefined);
        await ch.deleteExchange(name).catch(() => undefined);
      }
    }).catch(() => undefined);
  }
}

/** Polls `check` until it returns true or `ms` pass. */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  ms = 10_000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Calls the RabbitMQ management API of a broker ("1" + AMQP port). */
export async function management(server: string, method: string, path: string): Promise<Response> {
  const [host, port] = server.split(':');
  return fetch(`http://${host}:1${port}${path}`, {
    method,
    headers: { authorization: `Basic ${Buffer.from('guest:guest').toString('base64')}` },
    signal: AbortSignal.timeout(10_000),
  });
}

/** Force-closes this process's consumer connection(s) on `server`; returns how many were closed. */
export async function killConsumerConnections(server: string): Promise<number> {
  const response = await management(server, 'GET', '/api/connections?columns=name,client_properties');
  const connections = (await response.json()) as {
    name: string;
    client_properties?: Record<string, unknown>;
  }[];
  const ours = connections.filter(
    (c) => c.client_properties?.connection_name === `beetle-${process.pid}-consumer`,
  );
  for (const connection of ours) {
    await management(server, 'DELETE', `/api/connections/${encodeURIComponent(connection.name)}`);
  }
  return ours.length;
}

/** Publishes one redundant copy of each message to every broker (one connection per broker). */
export async function publishCopies(
  targets: readonly string[],
  exchange: string,
  payloads: readonly Payload[],
): Promise<string[]> {
  const ids = payloads.map(() => randomUUID());
  const encoded = payloads.map((payload, i) =>
    encodeMessage(payload, { messageId: ids[i], redundant: true }),
  );
  for (const server of targets) {
    await raw(server, async (ch) => {
      for (const { body, properties } of encoded) ch.publish(exchange, exchange, body, properties);
      await ch.waitForConfirms();
    });
  }
  return ids;
}
