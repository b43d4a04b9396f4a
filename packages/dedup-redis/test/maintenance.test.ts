import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BeetleConfig, MessageRef } from '@beetle/core';
import { allKeysOf, keyOf } from '@beetle/core/kit';
import {
  escapeGlob,
  MasterChangedError,
  RedisDedupStore,
  RedisMaintenanceClient,
  RedisReplyError,
  ScanInterruptedError,
  withRestarts,
  type RedisMaintenanceConfig,
} from '../src/index.js';
import { MasterFile } from '../src/master.js';
import { scanBatches } from '../src/scan.js';
import { nowSeconds, rawClient, requireSharedRedis, sleep, TEST_REDIS } from './helpers.js';

const REPLICA = process.env['BEETLE_TEST_REDIS_REPLICA'] ?? '127.0.0.1:6380';

let dir: string;
beforeAll(async () => {
  await requireSharedRedis();
  dir = await mkdtemp(join(tmpdir(), 'beetle-maintenance-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const config = (redisServer: string): RedisMaintenanceConfig => ({
  redisServer,
  systemName: 'system',
  redisPassword: undefined,
  redisTls: false,
  redisConnectTimeout: 2,
  redisReadTimeout: 2,
  redisFailoverTimeout: 5,
});

describe('scanBatches (the one SCAN loop)', () => {
  /** Three pages: cursors 0 → 1 → 2 → 0. */
  const pages =
    (log: string[]) =>
    (cursor: string): Promise<[string, string[]]> => {
      log.push(`scan ${cursor}`);
      const next = cursor === '2' ? '0' : String(Number(cursor) + 1);
      return Promise.resolve([next, [`key${cursor}`]]);
    };

  it('looks (beforeBatch) before every batch and pauses only between batches', async () => {
    const log: string[] = [];
    const started = Date.now();
    for await (const keys of scanBatches(pages(log), {
      pauseMs: 30,
      beforeBatch: () => {
        log.push('look');
        return Promise.resolve();
      },
    })) {
      log.push(...keys);
    }
    expect(log).toEqual(['look', 'scan 0', 'key0', 'look', 'scan 1', 'key1', 'look', 'scan 2', 'key2']);
    // Two pauses (after the first and the second batch), none after the last.
    expect(Date.now() - started).toBeGreaterThanOrEqual(55);
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('a stop signal ends the scan before the next batch with ScanInterruptedError (reason interrupted)', async () => {
    const log: string[] = [];
    const controller = new AbortController();
    const error = await (async () => {
      for await (const keys of scanBatches(pages(log), { signal: controller.signal })) {
        log.push(...keys);
        controller.abort();
      }
    })().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ScanInterruptedError);
    expect((error as ScanInterruptedError).reason).toBe('interrupted');
    expect(log).toEqual(['scan 0', 'key0']);
  });

  it('escapeGlob makes a queue prefix match literally', async () => {
    const client = await RedisMaintenanceClient.connect(TEST_REDIS, { db: 4 });
    const queue = `glob-${randomUUID().slice(0, 8)}`;
    try {
      await client.call('SET', `msgid:${queue}[*]?:u:expires`, '1');
      await client.call('SET', `msgid:${queue}x:u:expires`, '1');
      const found: string[] = [];
      for await (const keys of client.scanKeys(`msgid:${escapeGlob(`${queue}[*]?`)}*:expires`, 1000)) {
        found.push(...keys);
      }
      expect(found).toEqual([`msgid:${queue}[*]?:u:expires`]);
    } finally {
      await client.del([`msgid:${queue}[*]?:u:expires`, `msgid:${queue}x:u:expires`]);
      client.close();
    }
  });
});

describe('MasterFile', () => {
  it('reports a master change through its callback, once per change, and none while the file names none', async () => {
    const path = join(dir, `master-${randomUUID()}`);
    await writeFile(path, 'system/10.0.0.1:6379\n');
    const changes: (string | undefined)[] = [];
    const file = new MasterFile(path, 'system', 0, (master) => changes.push(master));
    await file.refresh();
    await file.refresh(); // unchanged: no report
    await writeFile(path, 'system/10.0.0.2:6380\nother/10.0.0.9:1\n');
    await file.refresh();
    await writeFile(path, 'other/10.0.0.9:1\n');
    await expect(file.refresh()).rejects.toThrow(/names no master for system "system"/);
    expect(file.mustLook(Date.now())).toBe(true);
    await writeFile(path, 'system/10.0.0.2:6380');
    await file.refresh();
    expect(changes).toEqual(['10.0.0.1:6379', '10.0.0.2:6380', undefined, '10.0.0.2:6380']);
    expect(file.master).toBe('10.0.0.2:6380');
  });
});

describe('withRestarts', () => {
  it('starts a run over on the new master when the master file changes during it', async () => {
    const path = join(dir, `master-${randomUUID()}`);
    await writeFile(path, `system/${TEST_REDIS}\n`);
    const masters: string[] = [];
    const restarts: unknown[] = [];
    const result = await withRestarts(
      config(path),
      async (watcher, connect) => {
        masters.push(watcher.master);
        const client = await connect(0);
        if (masters.length === 1) {
          await writeFile(path, `system/${REPLICA}\n`);
          await sleep(1100); // the watcher looks at most once a second
          await watcher.check();
        }
        return client.address;
      },
      { onRestart: (error) => restarts.push(error) },
    );
    expect(masters).toEqual([TEST_REDIS, REPLICA]);
    expect(result).toBe(REPLICA);
    expect(restarts).toHaveLength(1);
    expect(restarts[0]).toBeInstanceOf(MasterChangedError);
    expect((restarts[0] as MasterChangedError).reason).toBe('redis-unavailable');
  });

  it('does not start over for an error reply (RedisReplyError, reason redis-reply)', async () => {
    let runs = 0;
    const error = await withRestarts(config(TEST_REDIS), async (_watcher, connect) => {
      runs++;
      const client = await connect(4);
      return client.call('NO-SUCH-COMMAND');
    }).catch((e: unknown) => e);
    expect(runs).toBe(1);
    expect(error).toBeInstanceOf(RedisReplyError);
    expect((error as RedisReplyError).reason).toBe('redis-reply');
  });
});

describe('RedisDedupStore, errors and the ack flush', () => {
  const freshRef = (): MessageRef => ({ queue: 'maintenance-test', uuid: randomUUID() });

  it('an error reply of a script reaches the caller as RedisReplyError (reason redis-reply)', async () => {
    const store = new RedisDedupStore({ redisServer: TEST_REDIS });
    const raw = rawClient();
    const [claimed, failed] = [freshRef(), freshRef()];
    try {
      await raw.hset(keyOf(claimed, 'attempts'), 'not', 'a string');
      await raw.hset(keyOf(failed, 'exceptions'), 'not', 'a string');
      const errors = await Promise.all([
        // The claim script reports one message's error in its reply (the other messages of the batch go on).
        store.claim(claimed, { expiresAt: 1, timeoutAt: 1 }).catch((e: unknown) => e),
        // The fail script fails as a whole: Redis' error reply.
        store
          .fail(failed, {
            now: nowSeconds(),
            attemptsLimit: 5,
            exceptionsLimit: 5,
            accepted: true,
            delay: 1,
            maxDelay: undefined,
          })
          .catch((e: unknown) => e),
      ]);
      for (const error of errors) {
        expect(error).toBeInstanceOf(RedisReplyError);
        expect((error as RedisReplyError).reason).toBe('redis-reply');
        expect((error as Error).message).toMatch(/WRONGTYPE|wrong kind/);
      }
    } finally {
      await raw.del(...allKeysOf(claimed), ...allKeysOf(failed));
      raw.disconnect();
      await store.close();
    }
  });

  it('sends the calls that delete keys only when its AckFlush says the acks are written', async () => {
    const held: (() => void)[] = [];
    const store = new RedisDedupStore({ redisServer: TEST_REDIS, ackFlush: (flush) => held.push(flush) });
    const raw = rawClient();
    const [plain, redundant] = [freshRef(), freshRef()];
    try {
      const now = nowSeconds();
      for (const ref of [plain, redundant]) {
        await store.claim(ref, { expiresAt: now + 60, timeoutAt: now + 60 });
        await store.complete(ref);
      }
      let acknowledged = 0;
      const acks = [
        store.acknowledged(plain, { redundant: false }).then(() => acknowledged++), // the batched cleanup
        store.acknowledged(redundant, { redundant: true }).then(() => acknowledged++), // the counting script
      ];
      await sleep(100);
      expect(acknowledged).toBe(0);
      expect(await raw.exists(keyOf(plain, 'status'), keyOf(redundant, 'ack_count'))).toBe(1);
      expect(held).toHaveLength(2);
      for (const flush of held.splice(0)) flush();
      await Promise.all(acks);
      // Cleaned up: only the completed status (and expires) left, with their TTL.
      expect(await raw.exists(keyOf(plain, 'timeout'))).toBe(0);
      expect(await raw.ttl(keyOf(plain, 'status'))).toBeGreaterThan(0);
      expect(await raw.get(keyOf(redundant, 'ack_count'))).toBe('1');
    } finally {
      await raw.del(...allKeysOf(plain), ...allKeysOf(redundant));
      raw.disconnect();
      await store.close();
    }
  });
});

// The type the CLI passes is BeetleConfig itself.
const _fromBeetleConfig = (c: BeetleConfig): RedisMaintenanceConfig => c;
void _fromBeetleConfig;
