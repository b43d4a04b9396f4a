import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NoRedisMasterError, type MessageRef } from '@beetle/core';
import { keyOf } from '@beetle/core/kit';
import { freePort, type ServiceHandle, startRedis } from '@beetle/test-services';
import { isRedisAddress, parseRedisAddress, parseRedisMasterFile, RedisDedupStore } from '../src/index.js';
import { nowSeconds, rawClient, requireSharedRedis, sleep, TEST_REDIS } from './helpers.js';

const freshRef = (): MessageRef => ({ queue: 'master-file-test', uuid: randomUUID() });

describe('parseRedisMasterFile', () => {
  it('reads a legacy single line, whatever the system name', () => {
    expect(parseRedisMasterFile('redis1:6379', 'system')).toBe('redis1:6379');
    expect(parseRedisMasterFile('redis1:6379', 'other')).toBe('redis1:6379');
  });

  it('ignores a trailing newline and surrounding blanks (CRLF too)', () => {
    expect(parseRedisMasterFile('redis1:6379\n', 'system')).toBe('redis1:6379');
    expect(parseRedisMasterFile('  redis1:6379 \r\n', 'system')).toBe('redis1:6379');
    expect(parseRedisMasterFile('a/redis1:6379\r\nb/redis2:6380\r\n', 'b')).toBe('redis2:6380');
  });

  it('picks the line of the system in a multi-system file', () => {
    const content = 'alpha/10.0.0.1:6379\nbeta/10.0.0.2:6380\nsystem/10.0.0.3:6381';
    expect(parseRedisMasterFile(content, 'alpha')).toBe('10.0.0.1:6379');
    expect(parseRedisMasterFile(content, 'beta')).toBe('10.0.0.2:6380');
    expect(parseRedisMasterFile(content, 'system')).toBe('10.0.0.3:6381');
    expect(parseRedisMasterFile(content, 'gamma')).toBeUndefined();
  });

  it('lets the last matching line win', () => {
    expect(parseRedisMasterFile('alpha/a:1\nalpha/b:2', 'alpha')).toBe('b:2');
    // A line without a system applies to every system, in its turn.
    expect(parseRedisMasterFile('alpha/a:1\nlegacy:3', 'alpha')).toBe('legacy:3');
    expect(parseRedisMasterFile('legacy:3\nalpha/a:1', 'alpha')).toBe('a:1');
    expect(parseRedisMasterFile('legacy:3\nalpha/a:1', 'beta')).toBe('legacy:3');
  });

  it('returns undefined for a blank file or an invalidated system (`name/`)', () => {
    expect(parseRedisMasterFile('', 'system')).toBeUndefined();
    expect(parseRedisMasterFile('\n', 'system')).toBeUndefined();
    expect(parseRedisMasterFile('   \n \n', 'system')).toBeUndefined();
    expect(parseRedisMasterFile('alpha/\nbeta/b:2', 'alpha')).toBeUndefined();
    expect(parseRedisMasterFile('alpha/a:1\nalpha/', 'alpha')).toBeUndefined();
  });

  it('does not match a system name by prefix', () => {
    expect(parseRedisMasterFile('alphabet/a:1', 'alpha')).toBeUndefined();
  });
});

describe('redis addresses', () => {
  it("tells host:port from a file path like Ruby's /^\\S+:\\d+$/", () => {
    expect(isRedisAddress('localhost:6379')).toBe(true);
    expect(isRedisAddress('10.0.0.1:6379')).toBe(true);
    expect(isRedisAddress('/etc/beetle/redis-master')).toBe(false);
    expect(isRedisAddress('./redis-master')).toBe(false);
    expect(isRedisAddress('host: 6379')).toBe(false);
    expect(isRedisAddress('host:')).toBe(false);
  });

  it('splits host and port at the last colon', () => {
    expect(parseRedisAddress('localhost:6379')).toEqual({ host: 'localhost', port: 6379 });
    expect(parseRedisAddress('[::1]:6380')).toEqual({ host: '::1', port: 6380 });
  });
});

describe('a store following a master file', () => {
  beforeAll(requireSharedRedis);

  let dir: string;
  const stores: RedisDedupStore[] = [];
  const track = (store: RedisDedupStore): RedisDedupStore => {
    stores.push(store);
    return store;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'beetle-master-file-'));
  });

  afterEach(async () => {
    await Promise.all(stores.splice(0).map((store) => store.close()));
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('connects to the master named for its system', async () => {
    const file = join(dir, `master-${randomUUID()}`);
    await writeFile(file, `other/127.0.0.1:1\nbeetle-test/${TEST_REDIS}\n`);
    const store = track(
      new RedisDedupStore({ redisServer: file, systemName: 'beetle-test', failoverTimeout: 5 }),
    );
    const ref = freshRef();
    expect(await store.claim(ref, { expiresAt: nowSeconds() + 60, timeoutAt: 1 })).toEqual({
      first: true,
      attempts: 1,
    });
    expect(store.currentServer).toBe(TEST_REDIS);
    await store.acknowledged(ref, { redundant: false });
  });

  it('a pending call completes once a dead master is replaced in the file', async () => {
    const file = join(dir, `master-${randomUUID()}`);
    await writeFile(file, '127.0.0.1:1\n');
    const store = track(new RedisDedupStore({ redisServer: file, failoverTimeout: 20 }));
    const ref = freshRef();
    const started = Date.now();
    const pending = store.claim(ref, { expiresAt: nowSeconds() + 60, timeoutAt: 1 });
    await sleep(1500);
    expect(store.currentServer).toBe('127.0.0.1:1');
    await writeFile(file, `system/${TEST_REDIS}\n`);
    expect(await pending).toEqual({ first: true, attempts: 1 });
    expect(Date.now() - started).toBeLessThan(5000);
    expect(store.currentServer).toBe(TEST_REDIS);
    await store.acknowledged(ref, { redundant: false });
  });

  it('waits while the file is blank or missing, then uses the master it names', async () => {
    const file = join(dir, `master-${randomUUID()}`);
    const store = track(new RedisDedupStore({ redisServer: file, failoverTimeout: 20 }));
    const ref = freshRef();
    const pending = store.inspect(ref);
    await sleep(1200);
    await writeFile(file, '');
    await sleep(1200);
    await writeFile(file, TEST_REDIS);
    expect(await pending).toEqual({});
  });

  it('rejects with NoRedisMasterError after failoverTimeout when the file names no master', async () => {
    const file = join(dir, `master-${randomUUID()}`);
    await writeFile(file, 'system/\n');
    const store = track(new RedisDedupStore({ redisServer: file, failoverTimeout: 2 }));
    const started = Date.now();
    const error = await store.claim(freshRef(), { expiresAt: 1, timeoutAt: 1 }).then(
      () => undefined,
      (err: unknown) => err,
    );
    const elapsed = Date.now() - started;
    expect(error).toBeInstanceOf(NoRedisMasterError);
    expect((error as NoRedisMasterError).reason).toBe('no-redis-master');
    expect((error as Error).cause).toBeInstanceOf(Error);
    expect(String((error as Error).cause)).toMatch(/names no master/);
    expect(elapsed).toBeGreaterThanOrEqual(1900);
    expect(elapsed).toBeLessThan(4000);
  });

  it('rejects with NoRedisMasterError after failoverTimeout when the master is dead or the file missing', async () => {
    const dead = join(dir, `master-${randomUUID()}`);
    await writeFile(dead, '127.0.0.1:1');
    const missing = join(dir, `master-${randomUUID()}`);
    const started = Date.now();
    const results = await Promise.allSettled([
      track(new RedisDedupStore({ redisServer: dead, failoverTimeout: 2 })).inspect(freshRef()),
      track(new RedisDedupStore({ redisServer: missing, failoverTimeout: 2 })).inspect(freshRef()),
      track(new RedisDedupStore({ redisServer: '127.0.0.1:1', failoverTimeout: 2 })).inspect(freshRef()),
    ]);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(1900);
    expect(elapsed).toBeLessThan(4000);
    for (const result of results) {
      expect(result.status).toBe('rejected');
      if (result.status === 'rejected') expect(result.reason).toBeInstanceOf(NoRedisMasterError);
    }
    const [deadResult, missingResult] = results;
    if (deadResult?.status === 'rejected') expect(String(deadResult.reason)).toMatch(/127\.0\.0\.1:1/);
    if (missingResult?.status === 'rejected') expect(String(missingResult.reason)).toMatch(/ENOENT/);
  });

  describe('switching between two live masters', () => {
    let second: ServiceHandle;

    beforeAll(async () => {
      second = await startRedis(await freePort());
    });

    afterAll(async () => {
      await second.kill();
    });

    it('moves to the new master when the file changes, and closes the old connection', async () => {
      const file = join(dir, `master-${randomUUID()}`);
      await writeFile(file, `system/${second.address}`);
      const store = track(new RedisDedupStore({ redisServer: file, failoverTimeout: 10 }));
      const first = freshRef();
      await store.claim(first, { expiresAt: nowSeconds() + 60, timeoutAt: 1 });
      expect(store.currentServer).toBe(second.address);

      const onShared = rawClient(TEST_REDIS);
      const onSecond = rawClient(second.address);
      try {
        const clientsOnSecond = async (): Promise<number> =>
          Number(/connected_clients:(\d+)/.exec(await onSecond.info('clients'))?.[1]);
        expect(await clientsOnSecond()).toBe(2); // the store's and ours

        await writeFile(file, `other/${second.address}\nsystem/${TEST_REDIS}`);
        await sleep(1100); // the hot path looks at the file at most once a second
        const moved = freshRef();
        expect(await store.claim(moved, { expiresAt: nowSeconds() + 60, timeoutAt: 1 })).toEqual({
          first: true,
          attempts: 1,
        });
        expect(store.currentServer).toBe(TEST_REDIS);
        expect(await onShared.get(keyOf(moved, 'status'))).toBe('incomplete');
        expect(await onSecond.get(keyOf(moved, 'status'))).toBeNull();
        expect(await onSecond.get(keyOf(first, 'status'))).toBe('incomplete');
        await sleep(200);
        expect(await clientsOnSecond()).toBe(1); // the store quit its old connection
        await store.acknowledged(moved, { redundant: false });
      } finally {
        await onShared.quit();
        await onSecond.quit();
      }
    });
  });

  const replica = process.env['BEETLE_TEST_REDIS_REPLICA'];

  it.runIf(replica !== undefined)(
    'retries READONLY from a replica until the file names the master',
    async () => {
      const file = join(dir, `master-${randomUUID()}`);
      await writeFile(file, replica ?? '');
      const store = track(new RedisDedupStore({ redisServer: file, failoverTimeout: 20 }));
      const ref = freshRef();
      const pending = store.claim(ref, { expiresAt: nowSeconds() + 60, timeoutAt: 1 });
      await sleep(1500);
      await writeFile(file, TEST_REDIS);
      expect(await pending).toEqual({ first: true, attempts: 1 });
      expect(store.currentServer).toBe(TEST_REDIS);
      await store.acknowledged(ref, { redundant: false });
    },
  );
});
