import { randomUUID } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { ConfigurationError, defaultConfig } from '@beetle/core';
import { keyOf } from '@beetle/core/kit';
import { isRetriableRedisError, RedisUnavailableError } from '../src/errors.js';
import { RedisDedupStore } from '../src/index.js';
import { rawClient, requireSharedRedis, TEST_REDIS } from './helpers.js';

describe('configuration', () => {
  it('rejects invalid values with ConfigurationError', () => {
    expect(() => new RedisDedupStore({ statusKeyExpiryInterval: -1 })).toThrow(ConfigurationError);
    expect(() => new RedisDedupStore({ statusKeyExpiryInterval: 1.5 })).toThrow(ConfigurationError);
    expect(() => new RedisDedupStore({ failoverTimeout: Number.NaN })).toThrow(ConfigurationError);
    expect(() => new RedisDedupStore({ db: -1 })).toThrow(ConfigurationError);
    expect(() => new RedisDedupStore({ redisServer: ' ' })).toThrow(ConfigurationError);
  });

  it('takes the core configuration fields (Ruby names and units)', async () => {
    const store = RedisDedupStore.fromConfig({ ...defaultConfig, redisStatusKeyExpiryInterval: 300 });
    expect(store.statusKeyExpiryInterval).toBe(300);
    expect(store.currentServer).toBeUndefined(); // connects lazily
    await store.close();
  });
});

describe('error classification', () => {
  const reply = (message: string): Error => Object.assign(new Error(message), { name: 'ReplyError' });

  it('retries connection-level failures and not-a-master replies', () => {
    for (const error of [
      new RedisUnavailableError('no master'),
      reply('READONLY You can not write against a read only replica.'),
      reply('LOADING Redis is loading the dataset in memory'),
      reply('MASTERDOWN Link with MASTER is down'),
      Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' }),
      new Error('Connection is closed.'),
      new Error("Stream isn't writeable and enableOfflineQueue options is false"),
      Object.assign(new Error('Reached the max retries per request limit'), {
        name: 'MaxRetriesPerRequestError',
      }),
    ]) {
      expect(isRetriableRedisError(error)).toBe(true);
    }
  });

  it('does not retry bugs', () => {
    for (const error of [
      reply('WRONGTYPE Operation against a key holding the wrong kind of value'),
      reply(
        'ERR Error running script (call to f_123): @user_script:1: Script attempted to access nonexistent global',
      ),
      reply('NOAUTH Authentication required.'),
      new TypeError('x is not a function'),
      'a string',
    ]) {
      expect(isRetriableRedisError(error)).toBe(false);
    }
  });
});

describe('fromConfig against the test Redis', () => {
  beforeAll(requireSharedRedis);

  it('uses redisServer, redisDb and the status-key expiry interval', async () => {
    const store = RedisDedupStore.fromConfig({
      ...defaultConfig,
      redisServer: TEST_REDIS,
      redisDb: 5,
      redisStatusKeyExpiryInterval: 60,
    });
    const raw = rawClient(TEST_REDIS, 5);
    try {
      const ref = { queue: 'config-test', uuid: randomUUID() };
      expect(await store.markCompletedIfNew(ref)).toBe(true);
      expect(await raw.get(keyOf(ref, 'status'))).toBe('completed');
      expect(await raw.ttl(keyOf(ref, 'status'))).toBeGreaterThan(55);
      await raw.del(keyOf(ref, 'status'));
    } finally {
      await store.close();
      await raw.quit();
    }
  });
});
