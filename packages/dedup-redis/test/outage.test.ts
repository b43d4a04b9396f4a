import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NoRedisMasterError, type Logger, type MessageRef } from '@beetle/core';
import { freePort, type ServiceHandle, startRedis } from '@beetle/test-services';
import { RedisDedupStore } from '../src/index.js';
import { BlackholeProxy, nowSeconds, sleep } from './helpers.js';

interface LogEntry {
  level: 'debug' | 'info' | 'warn' | 'error';
  message: string;
}

const recordingLogger = (): {
  logger: Logger;
  entries: LogEntry[];
  count(level: LogEntry['level']): number;
} => {
  const entries: LogEntry[] = [];
  const record =
    (level: LogEntry['level']) =>
    (...args: unknown[]): void => {
      entries.push({ level, message: String(args.find((arg) => typeof arg === 'string') ?? '') });
    };
  return {
    logger: { debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') },
    entries,
    count: (level) => entries.filter((entry) => entry.level === level).length,
  };
};

/** Counts event-loop ticks: a blocked loop would stop it. */
const ticker = (): { ticks: () => number; stop: () => void } => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 50);
  return { ticks: () => ticks, stop: () => clearInterval(timer) };
};

const refs = (n: number): MessageRef[] =>
  Array.from({ length: n }, () => ({ queue: 'outage-test', uuid: randomUUID() }));

describe('outages of a disposable Redis', () => {
  let server: ServiceHandle;
  let store: RedisDedupStore | undefined;

  beforeAll(async () => {
    server = await startRedis(await freePort());
  });

  afterEach(async () => {
    await store?.close();
    store = undefined;
  });

  afterAll(async () => {
    await server.stop(); // resumes it first if paused
  });

  it('calls pending while Redis is frozen (SIGSTOP) complete after it resumes, without blocking', async () => {
    const log = recordingLogger();
    store = new RedisDedupStore({
      redisServer: server.address,
      failoverTimeout: 10,
      readTimeout: 0.5,
      logger: log.logger,
    });
    await store.ping();
    const messages = refs(20);
    const clock = ticker();
    try {
      await server.pause();
      const started = Date.now();
      const pending = Promise.all(
        messages.map((ref) =>
          store!.claim(ref, { expiresAt: nowSeconds() + 60, timeoutAt: nowSeconds() + 600 }),
        ),
      );
      await sleep(2000);
      // ~40 ticks of 50 ms in 2 s: the retry loop waits on timers, the event loop stays free.
      expect(clock.ticks()).toBeGreaterThanOrEqual(20);
      await server.resume();
      const results = await pending;
      expect(Date.now() - started).toBeLessThan(6000);
      const seen = results.filter((result) => !result.first).length;
      console.info(`[outage] SIGSTOP 2 s: ${results.length - seen} first sightings, ${seen} seen before`);
      // Nothing was resent to the frozen server, so no claim finds its own earlier execution.
      expect(seen).toBe(0);
      for (const ref of messages)
        expect(await store.inspect(ref)).toMatchObject({ status: 'incomplete', attempts: '1' });
    } finally {
      clock.stop();
      await server.resume();
    }
    // The outage is logged once, and its end once; not once per command.
    expect(log.count('warn')).toBe(1);
    expect(log.count('info')).toBe(1);
    expect(log.count('error')).toBe(0);
  });

  it('calls pending while Redis is down (connection refused) complete after it restarts', async () => {
    const log = recordingLogger();
    store = new RedisDedupStore({ redisServer: server.address, failoverTimeout: 10, logger: log.logger });
    await store.ping();
    const messages = refs(20);
    const clock = ticker();
    try {
      await server.kill();
      const pending = Promise.all(
        messages.map((ref) =>
          store!.claim(ref, { expiresAt: nowSeconds() + 60, timeoutAt: nowSeconds() + 600 }),
        ),
      );
      const inspected = store.inspect(refs(1)[0]!);
      await sleep(2000);
      expect(clock.ticks()).toBeGreaterThanOrEqual(20);
      await server.start();
      const results = await pending;
      expect(results.every((result) => result.first)).toBe(true);
      expect(await inspected).toEqual({});
    } finally {
      clock.stop();
    }
    expect(log.count('warn')).toBe(1);
    expect(log.count('info')).toBe(1);
  });

  it('rejects with NoRedisMasterError when the outage outlasts failoverTimeout, and recovers', async () => {
    const log = recordingLogger();
    store = new RedisDedupStore({ redisServer: server.address, failoverTimeout: 1.5, logger: log.logger });
    await store.ping();
    await server.kill();
    const started = Date.now();
    const results = await Promise.allSettled(refs(5).map((ref) => store!.inspect(ref)));
    const elapsed = Date.now() - started;
    for (const result of results) {
      expect(result.status).toBe('rejected');
      if (result.status === 'rejected') {
        expect(result.reason).toBeInstanceOf(NoRedisMasterError);
        expect((result.reason as Error).cause).toBeDefined();
      }
    }
    expect(elapsed).toBeGreaterThanOrEqual(1400);
    expect(elapsed).toBeLessThan(4000);
    await server.start();
    await store.ping();
    expect(log.count('warn')).toBe(1);
    expect(log.count('error')).toBe(1);
    expect(log.count('info')).toBe(1);
  });

  it('rejects with NoRedisMasterError when Redis stays frozen past failoverTimeout', async () => {
    store = new RedisDedupStore({ redisServer: server.address, failoverTimeout: 1.5, readTimeout: 0.5 });
    await store.ping();
    await server.pause();
    try {
      const started = Date.now();
      const error = await store.inspect(refs(1)[0]!).then(
        () => undefined,
        (err: unknown) => err,
      );
      const elapsed = Date.now() - started;
      expect(error).toBeInstanceOf(NoRedisMasterError);
      expect(String((error as Error).cause)).toMatch(/no reply/);
      expect(elapsed).toBeGreaterThanOrEqual(1400);
      expect(elapsed).toBeLessThan(3000);
    } finally {
      await server.resume();
    }
    expect(await store.inspect(refs(1)[0]!)).toEqual({});
  });

  it('does not queue commands inside ioredis while disconnected', async () => {
    store = new RedisDedupStore({ redisServer: server.address, failoverTimeout: 3 });
    await store.ping();
    await server.kill();
    try {
      const pending = Promise.allSettled(refs(50).map((ref) => store!.inspect(ref)));
      await sleep(500);
      // The calls wait in the store's retry loop (on timers); ioredis' offline queue stays empty.
      const client = (
        store as unknown as { connection: { client?: { redis: { offlineQueue: { length: number } } } } }
      ).connection.client?.redis;
      expect(client?.offlineQueue.length ?? 0).toBe(0);
      await server.start();
      const results = await pending;
      expect(results.every((result) => result.status === 'fulfilled')).toBe(true);
    } finally {
      await server.start().catch(() => undefined);
    }
  });

  it('replaces a connection that went silent while the server still answers', async () => {
    const proxy = await BlackholeProxy.start(server.address);
    try {
      const log = recordingLogger();
      store = new RedisDedupStore({
        redisServer: proxy.address,
        failoverTimeout: 10,
        readTimeout: 0.5,
        logger: log.logger,
      });
      await store.ping();
      expect(proxy.connections).toBe(1);
      proxy.blackholeExisting();
      const started = Date.now();
      const ref = refs(1)[0]!;
      expect(await store.claim(ref, { expiresAt: nowSeconds() + 60, timeoutAt: 1 })).toEqual({
        first: true,
        attempts: 1,
      });
      const elapsed = Date.now() - started;
      console.info(`[outage] silent connection replaced after ${elapsed} ms`);
      expect(elapsed).toBeLessThan(3000);
      // The original connection, one probe, the replacement.
      expect(proxy.connections).toBe(3);
      expect(log.entries.some((entry) => /connection silent/.test(entry.message))).toBe(true);
    } finally {
      await store?.close();
      store = undefined;
      await proxy.close();
    }
  });
});
