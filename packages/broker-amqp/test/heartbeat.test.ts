/**
 * Heartbeats as negotiated on the wire: the broker's record of each connection (its `timeout` is the
 * heartbeat both sides agreed in tune-ok), and the heartbeat frames that really flow through a TCP proxy.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '@beetle/core';
import { BrokerConnection, brokerOptions } from '@beetle/broker-amqp';
import { config, management, servers, uid } from './helpers.js';

const server = servers[0]!;
const opened: BrokerConnection[] = [];
const closers: (() => void)[] = [];

afterEach(async () => {
  await Promise.all(opened.splice(0).map((c) => c.close()));
  for (const close of closers.splice(0)) close();
});

function connection(input: Parameters<typeof config>[0], target = server): BrokerConnection {
  const c = new BrokerConnection(
    brokerOptions(config({ ...input, servers: [target] }), target, silentLogger),
  );
  opened.push(c);
  return c;
}

/** The heartbeat (seconds) the broker recorded for the connection named `name`, once it shows up. */
async function negotiated(name: string): Promise<number> {
  const until = Date.now() + 15_000;
  for (;;) {
    const response = await management(
      server,
      'GET',
      '/api/connections?columns=name,timeout,client_properties',
    );
    const connections = (await response.json()) as {
      timeout: number;
      client_properties?: { connection_name?: string };
    }[];
    const found = connections.find((c) => c.client_properties?.connection_name === name);
    if (found !== undefined) return found.timeout;
    // The management API samples connections every few seconds.
    if (Date.now() > until) throw new Error(`connection ${name} not listed by the broker`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

describe('heartbeats', () => {
  it.each([
    ['server', 60],
    [7, 7],
    [0, 0],
  ] as const)(
    'heartbeat %s: the broker records %i s on the publishing connection',
    async (heartbeat, expected) => {
      const name = `bt-hb-${uid()}`;
      const c = connection({ connectionName: name, heartbeat });
      await c.publishChannel();
      expect(await negotiated(`${name}-${process.pid}-publisher`)).toBe(expected);
    },
  );

  it.each([
    ['server', 60],
    [0, 0],
  ] as const)(
    'subscriberHeartbeat %s (Ruby default 0 = off): %i s on the consuming connection',
    async (subscriberHeartbeat, expected) => {
      const name = `bt-hb-${uid()}`;
      const c = connection({ connectionName: name, subscriberHeartbeat });
      const channel = await c.openConsumerChannel(1);
      expect(await negotiated(`${name}-${process.pid}-consumer`)).toBe(expected);
      await channel.close();
    },
  );

  it('sends heartbeat frames at the negotiated rate, and none when off', async () => {
    /** Heartbeat frames (type 8) the client sent through a proxy to the broker during `ms`. */
    const heartbeatsSent = async (heartbeat: number, ms: number): Promise<number> => {
      let frames = 0;
      const [host, port] = server.split(':');
      const proxy = net.createServer((client) => {
        const upstream = net.connect(Number(port), host);
        let buffer = Buffer.alloc(0);
        let header = true;
        client.on('data', (chunk: Buffer) => {
          upstream.write(chunk);
          buffer = Buffer.concat([buffer, chunk]);
          if (header && buffer.length >= 8) {
            buffer = buffer.subarray(8); // "AMQP" 0 0 9 1
            header = false;
          }
          // Frames: type (1), channel (2), size (4), payload, frame-end 0xCE.
          while (!header && buffer.length >= 7 && buffer.length >= 8 + buffer.readUInt32BE(3)) {
            if (buffer[0] === 8) frames++;
            buffer = buffer.subarray(8 + buffer.readUInt32BE(3));
          }
        });
        upstream.on('data', (chunk: Buffer) => client.write(chunk));
        const end = (): void => {
          client.destroy();
          upstream.destroy();
        };
        client.on('error', end).on('close', end);
        upstream.on('error', end).on('close', end);
      });
      await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
      closers.push(() => proxy.close());
      const proxied = `127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
      const c = connection({ heartbeat }, proxied);
      await c.publishChannel();
      await new Promise((resolve) => setTimeout(resolve, ms));
      return frames;
    };
    // amqplib sends a heartbeat when it sent nothing else for a heartbeat period (checked twice per period).
    const [on, off] = await Promise.all([heartbeatsSent(1, 4500), heartbeatsSent(0, 4500)]);
    expect(on).toBeGreaterThanOrEqual(3);
    expect(off).toBe(0);
  });
});
