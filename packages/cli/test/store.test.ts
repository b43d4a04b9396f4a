import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { KEY_SUFFIXES } from '@beetle/core/kit';
import type { RedisMaintenanceClient as RespClient } from '@beetle/dedup-redis';
import { lines, redis, redisServer, run, tempFile, uid } from './helpers.js';

/** The store tools work on db 11 (and db 12 as a copy target); only these are flushed. */
const DB = 11;
const TARGET_DB = 12;
const base = ['--redis-server', redisServer, '--databases', String(DB), '--pause', '0'];

let source: RespClient;
let target: RespClient;
let db0: RespClient;
let previousLastGc: string | null;

beforeAll(async () => {
  [source, target, db0] = await Promise.all([redis(DB), redis(TARGET_DB), redis(0)]);
  previousLastGc = await db0.get('beetle:lastgc');
});

afterAll(async () => {
  // beetle:lastgc lives in db 0 of the shared Redis: put back what was there.
  if (previousLastGc === null) await db0.del(['beetle:lastgc']);
  else await db0.set('beetle:lastgc', previousLastGc);
  await Promise.all([source.call('FLUSHDB'), target.call('FLUSHDB')]);
  for (const client of [source, target, db0]) client.close();
});

beforeEach(async () => {
  await Promise.all([source.call('FLUSHDB'), target.call('FLUSHDB')]);
});

const now = (): number => Math.floor(Date.now() / 1000);

/** Writes keys of one message (`expires` included unless `null`), returns its msg id. */
async function seed(
  client: RespClient,
  queue: string,
  expires: number | null,
  suffixes: readonly string[] = KEY_SUFFIXES,
  id: string = randomUUID(),
): Promise<string> {
  const msgId = `msgid:${queue}:${id}`;
  const pairs: string[] = [];
  for (const suffix of suffixes) {
    if (suffix === 'expires') {
      if (expires !== null) pairs.push(`${msgId}:expires`, String(expires));
    } else {
      pairs.push(`${msgId}:${suffix}`, suffix === 'status' ? 'incomplete' : '1');
    }
  }
  await client.call('MSET', ...pairs);
  return msgId;
}

async function keysOf(client: RespClient, msgId: string): Promise<string[]> {
  const values = await client.mget(KEY_SUFFIXES.map((s) => `${msgId}:${s}`));
  return KEY_SUFFIXES.filter((_, i) => values[i] !== null);
}

describe('gc', () => {
  it('collects messages expired more than the threshold ago and orphan keys, keeps the rest', async () => {
    const q1 = `gcq1${uid()}`;
    const q2 = `gcq2${uid()}`;
    const t = now();
    const longExpired = await seed(source, q1, t - 7200);
    // Go would collect this one (expires < now + 3600); Ruby's sign keeps it.
    const expiresSoon = await seed(source, q1, t + 1800, ['status', 'expires', 'timeout', 'attempts']);
    const recentlyExpired = await seed(source, q1, t - 1800, ['status', 'expires', 'timeout']);
    const fresh = await seed(source, q1, t + 86_400, ['status', 'expires', 'timeout']);
    const orphan = await seed(source, q2, null, ['attempts', 'ack_count']);
    const statusOnly = `msgid:${q2}:${randomUUID()}:status`;
    await source.call('SET', statusOnly, 'completed', 'EX', 300);
    await source.set('unrelated:key', 'x');

    const dry = await run(['gc', ...base, '--dry-run']);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(
      /4 messages, 1 expired more than 3600s ago would be deleted, 2 orphan keys would be deleted/,
    );
    expect(await keysOf(source, longExpired)).toHaveLength(8);
    expect(await source.dbsize()).toBe(8 + 4 + 3 + 3 + 2 + 1 + 1);
    expect(await db0.get('beetle:lastgc')).toBe(previousLastGc);

    const before = now();
    const result = await run(['gc', ...base]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(
      /4 messages, 1 expired more than 3600s ago were deleted, 2 orphan keys were deleted/,
    );
    expect(await keysOf(source, longExpired)).toEqual([]);
    expect(await keysOf(source, expiresSoon)).toEqual(['status', 'timeout', 'attempts', 'expires']);
    expect(await keysOf(source, recentlyExpired)).toEqual(['status', 'timeout', 'expires']);
    expect(await keysOf(source, fresh)).toEqual(['status', 'timeout', 'expires']);
    expect(await keysOf(source, orphan)).toEqual([]);
    expect(await source.get(statusOnly)).toBe('completed');
    expect(await source.get('unrelated:key')).toBe('x');

    const stored = JSON.parse((await db0.get('beetle:lastgc')) ?? 'null') as Record<string, unknown>;
    expect(stored['timestamp']).toBeGreaterThanOrEqual(before);
    // The run's totals, next to Go's schema (what `beetle status` shows as the last gc).
    expect(stored).toMatchObject({ messages: 4, expired: 1, orphans: 2, databases: [DB] });
    expect(stored['queues']).toEqual([
      {
        queue: q1,
        total_expiries: 3,
        expiries: [
          { hour: 24, count: 1 },
          { hour: 1, count: 1 },
          { hour: 0, count: 1 },
        ],
        total_orphans: 0,
      },
      { queue: q2, total_expiries: 0, expiries: [], total_orphans: 2 },
    ]);
    // Go's printout of the statistics
    expect(lines(result.stdout)).toEqual(
      expect.arrayContaining([`${q1}: 3`, ' 24h:     1', '  1h:     1', 'orphans: 2']),
    );

    // --threshold 0 (a duration works too) also collects the message that expired half an hour ago.
    const strict = await run(['gc', ...base, '--threshold', '0s', '--json']);
    expect(strict.code).toBe(0);
    expect(await keysOf(source, recentlyExpired)).toEqual([]);
    expect(await keysOf(source, expiresSoon)).toHaveLength(4);
    const info = JSON.parse(strict.stdout) as { queues: { queue: string; total_expiries: number }[] };
    expect(info.queues).toEqual([expect.objectContaining({ queue: q1, total_expiries: 2 })]);
  });

  it('checks only the keys of --key-file when given (Go --redis-gc-key-file)', async () => {
    const queue = `gcq${uid()}`;
    const listed = await seed(source, queue, now() - 10_000);
    const unlisted = await seed(source, queue, now() - 10_000);
    const orphan = await seed(source, queue, null, ['attempts']);
    const file = tempFile('keys.txt', `${listed}:expires\n${listed}:status\nnot a key\n`);
    const result = await run(['gc', ...base, '--redis-gc-key-file', file]);
    expect(result.code).toBe(0);
    expect(await keysOf(source, listed)).toEqual([]);
    expect(await keysOf(source, unlisted)).toHaveLength(8);
    expect(await keysOf(source, orphan)).toEqual(['attempts']);
  });

  it('shows a progress bar on a terminal', async () => {
    await seed(source, `gcq${uid()}`, now() + 100);
    const result = await run(['gc', ...base, '--dry-run'], { isTTY: true });
    expect(result.code).toBe(0);
    expect(result.stderr).toContain('\r\u001b[Kgc db 11 [#');
    expect(result.stderr).toMatch(/\] 100% /);
  });

  it('follows the redis master file', async () => {
    const file = tempFile('redis-master', `other/127.0.0.1:1\nsystem/${redisServer}\n`);
    const msgId = await seed(source, `gcq${uid()}`, now() - 10_000);
    const result = await run(['gc', '--redis-server', file, '--databases', String(DB), '--dry-run']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain(`db ${DB} on ${redisServer}: 1 messages, 1 expired`);
    expect(await keysOf(source, msgId)).toHaveLength(8);
  });
});

describe('dump-expiries', () => {
  it('prints <key>:<value> for every expires key', async () => {
    const queue = `dumpq${uid()}`;
    const a = await seed(source, queue, 1000);
    const b = await seed(source, `x${queue}`, 2000, ['status', 'expires']);
    await seed(source, queue, null, ['status']);
    const result = await run(['dump-expiries', ...base]);
    expect(result.code).toBe(0);
    expect(lines(result.stdout).sort()).toEqual([`${a}:expires:1000`, `${b}:expires:2000`].sort());

    const filtered = await run(['dump-expiries', ...base, '--queue-prefix', queue]);
    expect(lines(filtered.stdout)).toEqual([`${a}:expires:1000`]);
  });
});

describe('delete-keys', () => {
  it('deletes all keys of the messages of matching queues expiring before now + delete_before', async () => {
    const prefix = `delq${uid()}`;
    const t = now();
    const soon = await seed(source, `${prefix}a`, t + 100);
    const later = await seed(source, `${prefix}b`, t + 10_000);
    const otherQueue = await seed(source, `other${prefix}`, t - 100);
    const result = await run(['delete-keys', ...base, '--queue-prefix', prefix, '--delete-before', '1h']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain(`1 of 2 messages of queues "${prefix}*" were deleted`);
    expect(await keysOf(source, soon)).toEqual([]);
    expect(await keysOf(source, later)).toHaveLength(8);
    expect(await keysOf(source, otherQueue)).toHaveLength(8);
  });
});

describe('message ids that are not lowercase hex UUIDs (caller ids the publisher sends)', () => {
  // Ruby's key pattern `msgid:[^:]*:[-0-9a-f]*` (and its Go collector) never matches these: their keys would stay
  // forever. Consumers dedup them, so the tools must find them too.
  const ids = ['ORDER-42', 'Order 7/x', randomUUID().toUpperCase()];

  it('gc collects their expired messages and orphans, keeps the fresh ones', async () => {
    const queue = `gcid${uid()}`;
    const t = now();
    const expired = await Promise.all(
      ids.map((id) => seed(source, queue, t - 7200, KEY_SUFFIXES, `${id}-old`)),
    );
    const fresh = await Promise.all(
      ids.map((id) => seed(source, queue, t + 86_400, ['status', 'expires'], `${id}-new`)),
    );
    const orphans = await Promise.all(
      ids.map((id) => seed(source, queue, null, ['attempts', 'ack_count'], `${id}-orphan`)),
    );
    const result = await run(['gc', ...base]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(
      /6 messages, 3 expired more than 3600s ago were deleted, 6 orphan keys were deleted/,
    );
    for (const msgId of [...expired, ...orphans]) expect(await keysOf(source, msgId)).toEqual([]);
    for (const msgId of fresh) expect(await keysOf(source, msgId)).toEqual(['status', 'expires']);
  });

  it('gc --key-file, dump-expiries and delete-keys find them', async () => {
    const queue = `toolid${uid()}`;
    const t = now();
    const [listed, other, soon] = await Promise.all(
      ids.map((id) => seed(source, queue, t - 10_000, ['status', 'expires'], id)),
    );
    const dump = await run(['dump-expiries', ...base, '--queue-prefix', queue]);
    expect(lines(dump.stdout).sort()).toEqual(
      [listed, other, soon].map((msgId) => `${msgId}:expires:${t - 10_000}`).sort(),
    );
    const file = tempFile('id-keys.txt', `${listed}:expires\n`);
    expect((await run(['gc', ...base, '--key-file', file])).code).toBe(0);
    expect(await keysOf(source, listed!)).toEqual([]);
    expect(await keysOf(source, other!)).toEqual(['status', 'expires']);
    const deleted = await run(['delete-keys', ...base, '--queue-prefix', queue, '--delete-before', '0']);
    expect(deleted.code).toBe(0);
    expect(deleted.stdout).toContain(`2 of 2 messages of queues "${queue}*" were deleted`);
    expect(await keysOf(source, other!)).toEqual([]);
    expect(await keysOf(source, soon!)).toEqual([]);
  });
});

describe('copy-keys', () => {
  it('copies the existing keys of messages expiring at or after now + copy_after to the target', async () => {
    const prefix = `copyq${uid()}`;
    const t = now();
    const kept = await seed(source, prefix, t + 7200, ['status', 'expires', 'attempts']);
    const expiring = await seed(source, prefix, t + 10);
    const other = await seed(source, `z${prefix}`, t + 7200);
    const result = await run([
      'copy-keys',
      ...base,
      '--queue-prefix',
      prefix,
      '--copy-after',
      '3600',
      '--target-redis',
      redisServer,
      '--target-db',
      String(TARGET_DB),
    ]);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain(`copied 1 messages (3 keys)`);
    expect(await keysOf(target, kept)).toEqual(['status', 'attempts', 'expires']);
    expect(await target.get(`${kept}:expires`)).toBe(String(t + 7200));
    expect(await keysOf(target, expiring)).toEqual([]);
    expect(await keysOf(target, other)).toEqual([]);
    // the source is untouched
    expect(await keysOf(source, expiring)).toHaveLength(8);
  });

  it('refuses to copy onto the source', async () => {
    const result = await run(['copy-keys', ...base, '--queue-prefix', 'x', '--target-redis', redisServer]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/is the source itself/);
  });
});
