import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { type MessageRef } from '@beetle/core';
import { freePort, type ServiceHandle, startRedis } from '@beetle/test-services';
import { RedisDedupStore } from '../src/index.js';
import { nowSeconds, rawClient, sleep } from './helpers.js';

/** `INFO commandstats` as command → calls. */
async function commandCalls(admin: Redis): Promise<Map<string, number>> {
  const info = await admin.info('commandstats');
  const calls = new Map<string, number>();
  for (const match of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls.set(match[1]!, Number(match[2]));
  return calls;
}

const ADMIN_COMMANDS = /^(info|config|monitor|client|ping|hello|auth|select)/;

interface Observed {
  /** Commands sent by clients (one per round trip), from MONITOR. */
  topLevel: string[][];
  /** Commands run inside scripts on the messages' keys, from MONITOR. */
  inScripts: string[][];
  /** Commands run inside scripts on the stored replies of the calls (`beetle:reply:*`), from MONITOR. */
  replies: string[][];
  /** `INFO commandstats` deltas, admin commands left out. */
  stats: Map<string, number>;
}

const isReplyCommand = (args: readonly string[]): boolean => args[1]?.startsWith('beetle:reply:') === true;

describe('round trips on a Redis of our own', () => {
  let server: ServiceHandle;
  let admin: Redis;

  beforeAll(async () => {
    server = await startRedis(await freePort());
    admin = rawClient(server.address, 0);
  });

  afterAll(async () => {
    await admin.quit();
    await server.stop();
  });

  /** Runs `work` and reports what reached the server (nobody else uses this server). */
  async function observe(work: () => Promise<void>): Promise<Observed> {
    const monitor = await admin.monitor();
    const seen: { args: string[]; source: string }[] = [];
    monitor.on('monitor', (_time: string, args: string[], source: string) => seen.push({ args, source }));
    await admin.config('RESETSTAT');
    await work();
    await sleep(200);
    const stats = await commandCalls(admin);
    monitor.disconnect();
    for (const name of [...stats.keys()]) if (ADMIN_COMMANDS.test(name)) stats.delete(name);
    const relevant = seen.filter(({ args }) => !ADMIN_COMMANDS.test(args[0]?.toLowerCase() ?? ''));
    const inScripts = relevant.filter(({ source }) => source === 'lua').map(({ args }) => args);
    return {
      topLevel: relevant.filter(({ source }) => source !== 'lua').map(({ args }) => args),
      inScripts: inScripts.filter((args) => !isReplyCommand(args)),
      replies: inScripts.filter(isReplyCommand),
      stats,
    };
  }

  const happyPath = async (store: RedisDedupStore, ref: MessageRef, expiresAt: number, now: number) => {
    // First copy.
    expect(await store.claim(ref, { expiresAt, timeoutAt: now + 600 })).toEqual({ first: true, attempts: 1 });
    await store.complete(ref);
    await store.acknowledged(ref, { redundant: true });
    // Second copy (from the other broker).
    const second = await store.claim(ref, { expiresAt, timeoutAt: now + 600 });
    expect(second.first === false && second.state.status).toBe('completed');
    await store.acknowledged(ref, { redundant: true });
  };

  it('a redundant message on the happy path costs 5 round trips (Ruby: 8), running Ruby’s commands (completedStatusTtl 0)', async () => {
    const store = new RedisDedupStore({ redisServer: server.address, completedStatusTtl: 0 });
    try {
      const now = nowSeconds();
      const expiresAt = now + 86_400;
      // Warm-up: connection established (SELECT 4) and scripts loaded on it.
      await happyPath(store, { queue: 'test', uuid: randomUUID() }, expiresAt, now);

      const ref = { queue: 'test', uuid: randomUUID() };
      const observed = await observe(() => happyPath(store, ref, expiresAt, now));

      const roundTrips = observed.topLevel.map((args) => args[0]!.toLowerCase());
      console.info(`[round trips] redundant happy path: ${roundTrips.length} (${roundTrips.join(', ')})`);
      expect(roundTrips).toEqual(['evalsha', 'mset', 'evalsha', 'evalsha', 'evalsha']);
      const scriptCalls = (observed.stats.get('evalsha') ?? 0) + (observed.stats.get('eval') ?? 0);
      expect(scriptCalls).toBe(4);

      // Inside the scripts, plus complete's MSET: exactly Ruby's 8 commands of §12, in Ruby's order.
      const p = `msgid:test:${ref.uuid}`;
      // Each acknowledged call first checks that the message was not cleaned up already (EXISTS timeout).
      const exists = observed.inScripts.filter((args) => args[0] === 'exists');
      expect(exists).toEqual([
        ['exists', `${p}:timeout`],
        ['exists', `${p}:timeout`],
      ]);
      const executed = observed.inScripts.filter((args) => args[0] !== 'exists');
      executed.splice(2, 0, observed.topLevel[1]!); // complete's MSET came between the first two scripts
      expect(executed).toEqual([
        [
          'msetnx',
          `${p}:status`,
          'incomplete',
          `${p}:expires`,
          String(expiresAt),
          `${p}:timeout`,
          String(now + 600),
        ],
        ['incr', `${p}:attempts`],
        ['mset', `${p}:status`, 'completed', `${p}:timeout`, '0'],
        ['incr', `${p}:ack_count`],
        [
          'msetnx',
          `${p}:status`,
          'incomplete',
          `${p}:expires`,
          String(expiresAt),
          `${p}:timeout`,
          String(now + 600),
        ],
        ['mget', `${p}:status`, `${p}:delay`, `${p}:timeout`, `${p}:attempts`, `${p}:exceptions`],
        ['incr', `${p}:ack_count`],
        [
          'del',
          `${p}:status`,
          `${p}:ack_count`,
          `${p}:timeout`,
          `${p}:delay`,
          `${p}:attempts`,
          `${p}:exceptions`,
          `${p}:mutex`,
          `${p}:expires`,
        ],
      ]);
      // The claims and the first ack count store their replies (for a resend after a lost reply); the last
      // count, which deletes the keys, stores none (its resend finds them deleted). Only a resend looks for a
      // stored reply; the replies that arrived are deleted 16 at a time by a later call.
      const verbs = observed.replies.map((args) => args[0]);
      expect(verbs.filter((verb) => verb === 'set')).toHaveLength(3);
      expect(verbs.filter((verb) => verb === 'get')).toHaveLength(0);
      expect(verbs.filter((verb) => verb === 'del').length).toBeLessThanOrEqual(1);
      const totalCommands = [...observed.stats.values()].reduce((sum, calls) => sum + calls, 0);
      // commandstats counts script-internal commands too: 4 script calls + Ruby's 8 commands + 2 EXISTS + the
      // replies'.
      expect(totalCommands).toBe(4 + 8 + 2 + observed.replies.length);
      expect(observed.stats.get('select')).toBeUndefined();
    } finally {
      await store.close();
    }
  });

  it('both copies acked by one subscriber: 3 round trips, the last a plain DEL of all keys (completedStatusTtl 0)', async () => {
    const store = new RedisDedupStore({ redisServer: server.address, completedStatusTtl: 0 });
    try {
      const now = nowSeconds();
      const expiresAt = now + 86_400;
      await happyPath(store, { queue: 'test', uuid: randomUUID() }, expiresAt, now);
      const ref = { queue: 'test', uuid: randomUUID() };
      const observed = await observe(async () => {
        expect(await store.claim(ref, { expiresAt, timeoutAt: now + 600 })).toEqual({
          first: true,
          attempts: 1,
        });
        await store.complete(ref);
        await store.acknowledged(ref, { redundant: true, acks: 2 });
      });
      const p = `msgid:test:${ref.uuid}`;
      // Both acks bring the count to 2 whatever it was: Ruby's final DEL, without counting first.
      expect(observed.topLevel.slice(1)).toEqual([
        ['mset', `${p}:status`, 'completed', `${p}:timeout`, '0'],
        [
          'del',
          ...['status', 'ack_count', 'timeout', 'delay', 'attempts', 'exceptions', 'mutex', 'expires'].map(
            (s) => `${p}:${s}`,
          ),
        ],
      ]);
      expect(observed.topLevel[0]![0]!.toLowerCase()).toBe('evalsha');
      expect(await store.inspect(ref)).toEqual({});
    } finally {
      await store.close();
    }
  });

  it('both acks at once with status-key expiry: one forget call keeps status with its TTL (completedStatusTtl 0)', async () => {
    const store = new RedisDedupStore({
      redisServer: server.address,
      statusKeyExpiryInterval: 300,
      completedStatusTtl: 0,
    });
    try {
      const now = nowSeconds();
      await happyPath(store, { queue: 'test', uuid: randomUUID() }, now + 100, now);
      const ref = { queue: 'test', uuid: randomUUID() };
      const observed = await observe(async () => {
        await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        await store.complete(ref);
        await store.acknowledged(ref, { redundant: true, acks: 2 });
      });
      expect(observed.topLevel).toHaveLength(3);
      const p = `msgid:test:${ref.uuid}`;
      // Two acks reach 2 whatever the count was: no counting, Ruby's DEL of 7 keys + EXPIRE status.
      expect(observed.inScripts.slice(-3)).toEqual([
        ['exists', `${p}:timeout`],
        [
          'del',
          ...['ack_count', 'timeout', 'delay', 'attempts', 'exceptions', 'mutex', 'expires'].map(
            (s) => `${p}:${s}`,
          ),
        ],
        ['expire', `${p}:status`, '300'],
      ]);
      expect(await store.inspect(ref)).toEqual({ status: 'completed' });
    } finally {
      await store.close();
    }
  });

  it('with status-key expiry the cleanup is DEL of 7 keys + EXPIRE status, still 5 round trips (completedStatusTtl 0)', async () => {
    const store = new RedisDedupStore({
      redisServer: server.address,
      statusKeyExpiryInterval: 300,
      completedStatusTtl: 0,
    });
    try {
      const now = nowSeconds();
      await happyPath(store, { queue: 'test', uuid: randomUUID() }, now + 100, now);
      const ref = { queue: 'test', uuid: randomUUID() };
      const observed = await observe(() => happyPath(store, ref, now + 100, now));
      expect(observed.topLevel).toHaveLength(5);
      const p = `msgid:test:${ref.uuid}`;
      expect(observed.inScripts.slice(-2)).toEqual([
        [
          'del',
          ...['ack_count', 'timeout', 'delay', 'attempts', 'exceptions', 'mutex', 'expires'].map(
            (s) => `${p}:${s}`,
          ),
        ],
        ['expire', `${p}:status`, '300'],
      ]);
    } finally {
      await store.close();
    }
  });

  it('at the defaults: still 5 round trips; the last ack keeps status=completed and expires with a TTL', async () => {
    const store = new RedisDedupStore({ redisServer: server.address });
    try {
      const now = nowSeconds();
      const expiresAt = now + 86_400;
      await happyPath(store, { queue: 'test', uuid: randomUUID() }, expiresAt, now);
      const ref = { queue: 'test', uuid: randomUUID() };
      const observed = await observe(() => happyPath(store, ref, expiresAt, now));
      expect(observed.topLevel.map((args) => args[0]!.toLowerCase())).toEqual([
        'evalsha',
        'mset',
        'evalsha',
        'evalsha',
        'evalsha',
      ]);
      const p = `msgid:test:${ref.uuid}`;
      // The second ack: counted to 2, then the tombstone (TTL 600: the message lives a day).
      expect(observed.inScripts.slice(-7)).toEqual([
        ['exists', `${p}:timeout`],
        ['incr', `${p}:ack_count`],
        ['get', `${p}:expires`],
        ['time'],
        [
          'del',
          ...['ack_count', 'timeout', 'delay', 'attempts', 'exceptions', 'mutex'].map((s) => `${p}:${s}`),
        ],
        ['expire', `${p}:status`, '600'],
        ['expire', `${p}:expires`, '600'],
      ]);
      expect(await store.inspect(ref)).toEqual({ status: 'completed', expires: String(expiresAt) });
    } finally {
      await store.close();
    }
  });

  it('a simple message costs 1 round trip with status-key expiry, 0 without', async () => {
    const expiring = new RedisDedupStore({ redisServer: server.address, statusKeyExpiryInterval: 300 });
    const plain = new RedisDedupStore({ redisServer: server.address });
    try {
      await expiring.ping();
      const ref = { queue: 'test', uuid: randomUUID() };
      const observed = await observe(async () => {
        expect(await expiring.markCompletedIfNew(ref)).toBe(true);
        expect(await plain.markCompletedIfNew(ref)).toBe(true);
      });
      // Ruby's SET NX EX, in a script that stores its reply (a resent plain SET would answer nil).
      expect(observed.topLevel.map((args) => args[0]!.toLowerCase().replace(/^eval$/, 'evalsha'))).toEqual([
        'evalsha',
      ]);
      expect(observed.inScripts).toEqual([
        ['set', `msgid:test:${ref.uuid}:status`, 'completed', 'EX', '300', 'NX'],
      ]);
    } finally {
      await expiring.close();
      await plain.close();
    }
  });

  it('concurrent calls of independent messages share one connection', async () => {
    const store = new RedisDedupStore({ redisServer: server.address });
    try {
      await store.ping();
      const before = Number(/connected_clients:(\d+)/.exec(await admin.info('clients'))?.[1]);
      const now = nowSeconds();
      await Promise.all(
        Array.from({ length: 200 }, () =>
          store.claim({ queue: 'test', uuid: randomUUID() }, { expiresAt: now + 60, timeoutAt: now + 600 }),
        ),
      );
      const after = Number(/connected_clients:(\d+)/.exec(await admin.info('clients'))?.[1]);
      expect(after).toBe(before);
    } finally {
      await store.close();
    }
  });

  it('the claims, completions and cleanups of one tick go in one command each, Ruby’s commands per message', async () => {
    const store = new RedisDedupStore({ redisServer: server.address, completedStatusTtl: 0 });
    try {
      await store.ping();
      const now = nowSeconds();
      const refs = Array.from({ length: 150 }, () => ({ queue: 'test', uuid: randomUUID() }));
      const observed = await observe(async () => {
        const claims = await Promise.all(
          refs.map((ref) => store.claim(ref, { expiresAt: now + 60, timeoutAt: now + 600 })),
        );
        expect(claims.every((c) => c.first && c.attempts === 1)).toBe(true);
        await Promise.all(refs.map((ref) => store.complete(ref)));
        await Promise.all(refs.map((ref) => store.acknowledged(ref, { redundant: true, acks: 2 })));
      });
      // 150 messages: claims in 2 script calls (at most 100 messages each; the first loads the script with
      // EVAL), 2 MSETs, 2 DELs.
      expect(observed.topLevel.map((args) => args[0]!.toLowerCase().replace(/^eval$/, 'evalsha'))).toEqual([
        'evalsha',
        'evalsha',
        'mset',
        'mset',
        'del',
        'del',
      ]);
      expect(observed.topLevel[0]!.slice(2, 4)).toEqual(['100', `msgid:test:${refs[0]!.uuid}`]);
      // Inside the scripts, per message, Ruby's MSETNX and INCR.
      expect(observed.stats.get('msetnx')).toBe(150);
      expect(observed.stats.get('incr')).toBe(150);
      const p = `msgid:test:${refs[149]!.uuid}`;
      expect(observed.topLevel[3]!.slice(-4)).toEqual([`${p}:status`, 'completed', `${p}:timeout`, '0']);
      for (const ref of refs) expect(await store.inspect(ref)).toEqual({});
    } finally {
      await store.close();
    }
  });

  it('at the defaults, the cleanups of one tick are one forget call per 100 messages', async () => {
    const store = new RedisDedupStore({ redisServer: server.address });
    try {
      await store.ping();
      const now = nowSeconds();
      const refs = Array.from({ length: 150 }, () => ({ queue: 'test', uuid: randomUUID() }));
      await Promise.all(refs.map((ref) => store.claim(ref, { expiresAt: now + 60, timeoutAt: now + 600 })));
      await Promise.all(refs.map((ref) => store.complete(ref)));
      const observed = await observe(async () => {
        await Promise.all(refs.map((ref) => store.acknowledged(ref, { redundant: true, acks: 2 })));
      });
      expect(observed.topLevel.map((args) => args[0]!.toLowerCase().replace(/^eval$/, 'evalsha'))).toEqual([
        'evalsha',
        'evalsha',
      ]);
      expect(observed.topLevel[0]!.slice(2, 4)).toEqual(['100', `msgid:test:${refs[0]!.uuid}`]);
      for (const ref of refs) {
        expect(await store.inspect(ref)).toEqual({ status: 'completed', expires: String(now + 60) });
      }
    } finally {
      await store.close();
    }
  });

  it('a claim that fails for one message (a non-integer attempts key) fails it alone', async () => {
    const store = new RedisDedupStore({ redisServer: server.address });
    const data = rawClient(server.address, 4);
    try {
      await store.ping();
      const now = nowSeconds();
      const refs = Array.from({ length: 3 }, () => ({ queue: 'test', uuid: randomUUID() }));
      await data.set(`msgid:test:${refs[1]!.uuid}:attempts`, 'garbage');
      const results = await Promise.allSettled(
        refs.map((ref) => store.claim(ref, { expiresAt: now + 60, timeoutAt: now + 600 })),
      );
      expect(results[0]).toEqual({ status: 'fulfilled', value: { first: true, attempts: 1 } });
      expect(results[1]!.status).toBe('rejected');
      expect(String((results[1] as PromiseRejectedResult).reason)).toMatch(/claim failed: .*not an integer/);
      expect(results[2]).toEqual({ status: 'fulfilled', value: { first: true, attempts: 1 } });
    } finally {
      await data.quit();
      await store.close();
    }
  });

  it('a cleanup after the acks leaves one turn of the event loop later (the ack frames go first)', async () => {
    const store = new RedisDedupStore({ redisServer: server.address });
    try {
      await store.ping();
      const ref = { queue: 'test', uuid: randomUUID() };
      const order: string[] = [];
      // What reaches the socket: the store's writes are corked and leave in one _writev (or _write).
      const stream = (
        store as unknown as {
          connection: {
            client: { redis: { stream: Record<'_write' | '_writev', (...args: unknown[]) => void> } };
          };
        }
      ).connection.client.redis.stream;
      for (const method of ['_write', '_writev'] as const) {
        const original = stream[method];
        stream[method] = function (this: unknown, ...args: unknown[]) {
          order.push('redis write');
          return original.apply(this, args);
        };
      }
      // Another message's call earlier in the tick: its write is waiting to be flushed in the check phase.
      const now = nowSeconds();
      const other = store.claim(
        { queue: 'test', uuid: randomUUID() },
        { expiresAt: now + 60, timeoutAt: now + 600 },
      );
      // As with amqplib: the ack is called first; its frame reaches the socket in the check phase, from an
      // immediate that amqplib's muxer schedules a tick later.
      process.nextTick(() => setImmediate(() => order.push('ack frame')));
      const acknowledged = store.acknowledged(ref, { redundant: false });
      await Promise.all([other, acknowledged]);
      // The claim went before the ack frame, the cleanup after it.
      expect(order).toEqual(['redis write', 'ack frame', 'redis write']);
    } finally {
      await store.close();
    }
  });
});
