import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startRedis, type ServiceHandle } from '@beetle/test-services';
import {
  RedisMaintenanceClient as RespClient,
  RedisReplyError,
  RedisUnavailableError as RedisConnectionError,
} from '@beetle/dedup-redis';

/** The maintenance commands' Redis client against a Redis of its own (password set, paused by a test). */
describe('RespClient', () => {
  let server: ServiceHandle;
  let address: string;
  const password = 'cli-secret';

  beforeAll(async () => {
    server = await startRedis(await freePort());
    address = server.address;
    const admin = await RespClient.connect(address);
    await admin.call('CONFIG', 'SET', 'requirepass', password);
    admin.close();
  });

  afterAll(async () => {
    // The services script stops Redis with a plain SHUTDOWN: no password then.
    const admin = await RespClient.connect(address, { password });
    await admin.call('CONFIG', 'SET', 'requirepass', '');
    admin.close();
    await server.stop();
  });

  it('authenticates, selects the database and keeps values binary-safe', async () => {
    const a = await RespClient.connect(address, { password, db: 3 });
    const b = await RespClient.connect(address, { password, db: 4 });
    try {
      const binary = Buffer.from([0xff, 0x00, 0xfe, 0x0a]);
      await a.set('k', binary);
      expect(await a.mgetBuffers(['k', 'missing'])).toEqual([binary, null]);
      expect(await b.get('k')).toBeNull();
      expect(await a.dbsize()).toBe(1);
      expect(await a.del(['k', 'missing'])).toBe(1);
    } finally {
      a.close();
      b.close();
    }
  });

  it('returns error replies of a pipeline in place and throws them from call', async () => {
    const c = await RespClient.connect(address, { password, db: 3 });
    try {
      await c.set('s', 'text');
      const replies = await c.pipeline([
        ['SET', 'n', '1'],
        ['INCR', 's'],
        ['INCR', 'n'],
      ]);
      expect(Buffer.isBuffer(replies[0]) ? replies[0].toString() : replies[0]).toBe('OK');
      expect(replies[1]).toBeInstanceOf(RedisReplyError);
      expect((replies[1] as RedisReplyError).message).toMatch(/not an integer/);
      expect(replies[2]).toBe(2);
      await expect(c.call('INCR', 's')).rejects.toBeInstanceOf(RedisReplyError);
      await c.del(['s', 'n']);
    } finally {
      c.close();
    }
  });

  it('a wrong password is an error reply naming the problem', async () => {
    const error = await RespClient.connect(address, { password: 'wrong' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RedisReplyError);
    expect((error as Error).message).toMatch(/WRONGPASS|invalid password/i);
  });

  it('no password where one is required fails at connect, not at the first command', async () => {
    const error = await RespClient.connect(address).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RedisReplyError);
    expect((error as Error).message).toMatch(/NOAUTH/);
  });

  it('nothing listening: a connection error naming the address', async () => {
    const port = await freePort();
    const error = await RespClient.connect(`127.0.0.1:${port}`, { connectTimeoutMs: 1000 }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(RedisConnectionError);
    expect((error as Error).message).toContain(`cannot connect to Redis 127.0.0.1:${port}`);
  });

  it('a stalled server (SIGSTOP): the command fails with a connection error after its timeout', async () => {
    const c = await RespClient.connect(address, { password, commandTimeoutMs: 500 });
    try {
      await server.pause();
      const started = Date.now();
      const error = await c.dbsize().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(RedisConnectionError);
      expect((error as Error).message).toMatch(/timed out/i);
      expect(Date.now() - started).toBeGreaterThanOrEqual(450);
    } finally {
      await server.resume();
      c.close();
    }
  });
});
