import net from 'node:net';

import { afterAll, describe, expect, it } from 'vitest';

import { resolveServices, startRedis, type ServiceHandle } from '../src/index.js';

/** Raw socket round trip, independent of the probes under test: write, collect `bytes` bytes. */
function roundTrip(
  address: string,
  payload: Buffer | string,
  bytes: number,
  timeoutMs = 2000,
): Promise<Buffer> {
  const colon = address.lastIndexOf(':');
  return new Promise<Buffer>((resolve, reject) => {
    let received = Buffer.alloc(0);
    const socket = net.connect({ host: address.slice(0, colon), port: Number(address.slice(colon + 1)) });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`${address}: timed out`));
    }, timeoutMs);
    socket.once('connect', () => socket.write(payload));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= bytes) {
        clearTimeout(timer);
        socket.destroy();
        resolve(received);
      }
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

const ping = async (address: string, timeoutMs?: number): Promise<string> =>
  (await roundTrip(address, 'PING\r\n', 7, timeoutMs)).toString('latin1');

describe('test services', () => {
  it('resolves at least two brokers and a redis master', async () => {
    const services = await resolveServices();
    expect(services.servers.length).toBeGreaterThanOrEqual(2);
    expect(services.redis).toMatch(/^.+:\d+$/);
    expect(services.managementPort('127.0.0.1:5673')).toBe(15673);
  });

  it('every broker answers the AMQP 0-9-1 protocol header with connection.start', async () => {
    const { servers } = await resolveServices();
    for (const server of servers) {
      const reply = await roundTrip(server, Buffer.from('AMQP\x00\x00\x09\x01', 'latin1'), 11);
      expect(reply[0], `${server} frame type`).toBe(1); // method frame
      expect(reply.readUInt16BE(1), `${server} channel`).toBe(0);
      expect([reply.readUInt16BE(7), reply.readUInt16BE(9)], `${server} class/method`).toEqual([10, 10]);
    }
  });

  it('redis (and its replica) answer PING', async () => {
    const { redis, redisReplica } = await resolveServices();
    expect(await ping(redis)).toBe('+PONG\r\n');
    if (redisReplica) expect(await ping(redisReplica)).toBe('+PONG\r\n');
  });

  describe('disposable redis on 6391', () => {
    let handle: ServiceHandle | undefined;
    afterAll(async () => {
      await handle?.stop();
    });

    it('can be started, paused, resumed, killed and started again', async () => {
      handle = await startRedis(6391);
      expect(handle.address).toBe('127.0.0.1:6391');
      expect(await ping(handle.address)).toBe('+PONG\r\n');

      await handle.pause();
      await expect(ping(handle.address, 500)).rejects.toThrow(/timed out/);

      await handle.resume();
      expect(await ping(handle.address)).toBe('+PONG\r\n');

      await handle.kill();
      await expect(ping(handle.address, 500)).rejects.toThrow(/ECONNREFUSED/);

      await handle.start();
      expect(await ping(handle.address)).toBe('+PONG\r\n');
    });
  });
});
