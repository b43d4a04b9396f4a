import { randomBytes } from 'node:crypto';
import net from 'node:net';
import amqp from 'amqplib';
import type { GetMessage } from 'amqplib';
import { createConfig, type BeetleConfig, type BeetleConfigInput } from '@beetle/core';

/** The shared brokers (global setup fails the run when they are missing; nothing is skipped). */
export const servers = (process.env.BEETLE_TEST_SERVERS ?? '127.0.0.1:5672,127.0.0.1:5673')
  .split(',')
  .map((s) => s.trim())
  .filter((s) => s !== '');

export const uid = (): string => randomBytes(4).toString('hex');

export const config = (input: BeetleConfigInput = {}): BeetleConfig =>
  createConfig({
    servers: servers.slice(0, 2),
    publisherConnectTimeout: 2,
    publisherReadResponseTimeout: 3,
    publishTimeout: 8,
    ...input,
  });

export const managementUrl = (server: string, path: string): string => {
  const [host, port] = server.split(':');
  return `http://${host}:1${port}${path}`;
};

export async function management(
  server: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<Response> {
  return fetch(managementUrl(server, path), {
    method,
    headers: {
      authorization: `Basic ${Buffer.from('guest:guest').toString('base64')}`,
      'content-type': 'application/json',
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(10_000),
  });
}

/** A raw amqplib connection for checking what is on a broker. */
export async function raw<T>(server: string, fn: (ch: amqp.Channel) => Promise<T>): Promise<T> {
  const conn = await amqp.connect(`amqp://guest:guest@${server}`);
  try {
    const ch = await conn.createChannel();
    ch.on('error', () => undefined);
    return await fn(ch);
  } finally {
    await conn.close().catch(() => undefined);
  }
}

/** Takes every message of a queue (acked). */
export async function drain(server: string, queue: string): Promise<GetMessage[]> {
  return raw(server, async (ch) => {
    const out: GetMessage[] = [];
    for (;;) {
      const message = await ch.get(queue, { noAck: true });
      if (message === false) return out;
      out.push(message);
    }
  });
}

export async function queueExists(server: string, queue: string): Promise<boolean> {
  const response = await management(server, 'GET', `/api/queues/%2F/${encodeURIComponent(queue)}`);
  return response.status === 200;
}

/** Deletes queues, exchanges and policies on every broker; ignores what does not exist. */
export async function cleanup(names: {
  queues?: string[];
  exchanges?: string[];
  policies?: string[];
}): Promise<void> {
  for (const server of servers.slice(0, 2)) {
    await raw(server, async (ch) => {
      for (const q of names.queues ?? []) await ch.deleteQueue(q).catch(() => undefined);
      for (const e of names.exchanges ?? []) await ch.deleteExchange(e).catch(() => undefined);
    }).catch(() => undefined);
    for (const p of names.policies ?? []) {
      await management(server, 'DELETE', `/api/policies/%2F/${encodeURIComponent(p)}`).catch(() => undefined);
    }
  }
}

/** A TCP server that accepts connections and never answers (a black-holing broker). */
export async function blackHole(): Promise<{ server: string; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as net.AddressInfo;
  return {
    server: `127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        srv.close(() => resolve());
      }),
  };
}

/** A port where nothing listens. */
export const UNREACHABLE = '127.0.0.1:5699';
