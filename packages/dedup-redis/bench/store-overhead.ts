/**
 * Client-side cost of `RedisDedupStore` over plain ioredis running the same Lua scripts.
 *
 *   npx tsx packages/dedup-redis/bench/store-overhead.ts [--messages 20000] [--concurrency 100] [--rounds 3]
 *     [--old path/to/old/src/index.ts] [--only store,ioredis] [--db 5] [--flush]
 *
 * Each message is Beetle's redundant happy path (first copy: claim, complete, acknowledged; second copy:
 * claim, acknowledged), `--concurrency` messages at a time, against the real Redis (`BEETLE_REDIS_SERVER`,
 * default 127.0.0.1:6379) on db 5 (`--db`). The database is flushed first only with `--flush`: other
 * benchmarks use db 5 too, possibly at the same time, so by default each run only checks that it left none of
 * its own keys behind. Variants, alternating per round:
 *
 * - `ioredis`: one plain ioredis client (auto-pipelining on) with the original scripts (every key passed in
 *   KEYS, built on the client: the floor any wrapper of those scripts starts from);
 * - `ioredis/id`: the same with the store's current scripts (the message id passed once, keys built in Lua,
 *   one call per step and message);
 * - `store`: `RedisDedupStore` of this package (the calls of one tick batched into one command per step);
 * - `store-old`: another `RedisDedupStore` (`--old`, e.g. a copy of an earlier `src/index.ts`), if given.
 *
 * Printed per variant and round: µs of client CPU (`process.cpuUsage`, user + system) per message and
 * messages per second; then the median of each.
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import type { ClaimResult, MessageRef } from '@beetle/core';
import { RedisDedupStore } from '../src/index.js';
import { SCRIPTS } from '../src/scripts.js';

const { values: args } = parseArgs({
  options: {
    messages: { type: 'string', default: '20000' },
    concurrency: { type: 'string', default: '100' },
    rounds: { type: 'string', default: '3' },
    warmup: { type: 'string', default: '2000' },
    old: { type: 'string' },
    only: { type: 'string' },
    db: { type: 'string', default: '5' },
    flush: { type: 'boolean', default: false },
  },
});
const MESSAGES = Number(args.messages);
const CONCURRENCY = Number(args.concurrency);
const ROUNDS = Number(args.rounds);
const WARMUP = Number(args.warmup);
const SERVER = process.env['BEETLE_REDIS_SERVER'] ?? '127.0.0.1:6379';
const DB = Number(args.db);
/** This run's queue name: the keys of other users of the database (e.g. `pnpm bench`, also db 5) are left alone. */
const QUEUE = `bench-overhead-${randomUUID().slice(0, 8)}`;
const [HOST = '127.0.0.1', PORT = '6379'] = [
  SERVER.slice(0, SERVER.lastIndexOf(':')),
  SERVER.slice(SERVER.lastIndexOf(':') + 1),
];

/** The store's interface as the benchmark uses it (also met by an older copy of the store). */
interface Store {
  claim(ref: MessageRef, params: { expiresAt: number; timeoutAt: number }): Promise<ClaimResult>;
  complete(ref: MessageRef): Promise<void>;
  acknowledged(ref: MessageRef, params: { redundant: boolean }): Promise<void>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

type HappyPath = (ref: MessageRef, expiresAt: number, timeoutAt: number) => Promise<void>;

interface Variant {
  readonly name: string;
  readonly happyPath: HappyPath;
  close(): Promise<void>;
}

const check = (ok: boolean, what: string): void => {
  if (!ok) throw new Error(`unexpected result: ${what}`);
};

/** The original scripts: all keys in KEYS (Lua identical to the store's before the keys moved into Lua). */
const FULL_KEY_SCRIPTS = {
  claimFull: {
    numberOfKeys: 6,
    lua: `
if redis.call('msetnx', KEYS[1], 'incomplete', KEYS[2], ARGV[1], KEYS[3], ARGV[2]) == 1 then
  return {1, redis.call('incr', KEYS[4])}
end
local state = redis.call('mget', KEYS[1], KEYS[5], KEYS[3], KEYS[4], KEYS[6])
return {0, state[1], state[2], state[3], state[4], state[5]}
`,
  },
  acknowledgedFull: {
    numberOfKeys: 8,
    lua: `
if ARGV[1] == '1' and redis.call('incr', KEYS[2]) < 2 then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('del', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
  redis.call('expire', KEYS[1], ARGV[2])
else
  redis.call('del', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
end
return 1
`,
  },
} as const;

type Call = (...args: (string | number)[]) => Promise<unknown>;
type PlainClient = Redis & Record<keyof typeof FULL_KEY_SCRIPTS | keyof typeof SCRIPTS, Call>;

function plainClient(): PlainClient {
  const client = new Redis({
    host: HOST,
    port: Number(PORT),
    db: DB,
    enableAutoPipelining: true,
  }) as PlainClient;
  for (const [name, script] of Object.entries({ ...FULL_KEY_SCRIPTS, ...SCRIPTS })) {
    client.defineCommand(
      name,
      script.numberOfKeys < 0 ? { lua: script.lua } : { numberOfKeys: script.numberOfKeys, lua: script.lua },
    );
  }
  return client;
}

const SUFFIXES = ['status', 'ack_count', 'timeout', 'delay', 'attempts', 'exceptions', 'mutex', 'expires'];

function plainFullKeys(): Variant {
  const client = plainClient();
  const key = (ref: MessageRef, suffix: string): string => `msgid:${ref.queue}:${ref.uuid}:${suffix}`;
  const claim = (ref: MessageRef, expiresAt: number, timeoutAt: number): Promise<unknown> =>
    client.claimFull(
      key(ref, 'status'),
      key(ref, 'expires'),
      key(ref, 'timeout'),
      key(ref, 'attempts'),
      key(ref, 'delay'),
      key(ref, 'exceptions'),
      String(expiresAt),
      String(timeoutAt),
    );
  const acknowledged = (ref: MessageRef): Promise<unknown> =>
    client.acknowledgedFull(...SUFFIXES.map((suffix) => key(ref, suffix)), '1', '0');
  return {
    name: 'ioredis',
    async happyPath(ref, expiresAt, timeoutAt) {
      check(((await claim(ref, expiresAt, timeoutAt)) as unknown[])[0] === 1, 'first claim');
      await client.mset(key(ref, 'status'), 'completed', key(ref, 'timeout'), '0');
      await acknowledged(ref);
      check(((await claim(ref, expiresAt, timeoutAt)) as unknown[])[1] === 'completed', 'second claim');
      await acknowledged(ref);
    },
    close: async () => {
      await client.quit();
    },
  };
}

function plainMessageId(): Variant {
  const client = plainClient();
  return {
    name: 'ioredis/id',
    async happyPath(ref, expiresAt, timeoutAt) {
      const id = `msgid:${ref.queue}:${ref.uuid}`;
      // Each script's arguments start with its reply key and TTL: '' (no stored reply: no resends here). The
      // claim script takes several messages: one here (their number first).
      const header = ['', '0'];
      const claim = (): Promise<unknown> =>
        client.beetleClaim(1, id, ...header, String(expiresAt), String(timeoutAt));
      const [first] = (await claim()) as unknown[][];
      check(first?.[0] === 1, 'first claim');
      await client.mset(`${id}:status`, 'completed', `${id}:timeout`, '0');
      await client.beetleAcknowledged(id, ...header, '1', '0', '1');
      const [second] = (await claim()) as unknown[][];
      check(second?.[1] === 'completed', 'second claim');
      await client.beetleAcknowledged(id, ...header, '1', '0', '1');
    },
    close: async () => {
      await client.quit();
    },
  };
}

function storeVariant(name: string, store: Store): Variant {
  return {
    name,
    async happyPath(ref, expiresAt, timeoutAt) {
      check((await store.claim(ref, { expiresAt, timeoutAt })).first, 'first claim');
      await store.complete(ref);
      await store.acknowledged(ref, { redundant: true });
      const second = await store.claim(ref, { expiresAt, timeoutAt });
      check(!second.first && second.state.status === 'completed', 'second claim');
      await store.acknowledged(ref, { redundant: true });
    },
    close: () => store.close(),
  };
}

interface Figures {
  readonly cpuMicros: number;
  readonly rate: number;
}

/** Keys of this run left in the database. */
async function leftBehind(admin: Redis): Promise<number> {
  let count = 0;
  let cursor = '0';
  do {
    const [next, keys] = await admin.scan(cursor, 'MATCH', `msgid:${QUEUE}:*`, 'COUNT', 1000);
    count += keys.length;
    cursor = next;
  } while (cursor !== '0');
  return count;
}

async function runOnce(variant: Variant, admin: Redis, messages: number): Promise<Figures> {
  const refs: MessageRef[] = Array.from({ length: messages }, () => ({ queue: QUEUE, uuid: randomUUID() }));
  const now = Math.floor(Date.now() / 1000);
  const expiresAt = now + 86_400;
  const timeoutAt = now + 600;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < refs.length) {
      const ref = refs[next++]!;
      await variant.happyPath(ref, expiresAt, timeoutAt);
    }
  };
  const cpu = process.cpuUsage();
  const started = performance.now();
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, messages) }, worker));
  const elapsedMs = performance.now() - started;
  const used = process.cpuUsage(cpu);
  const left = await leftBehind(admin);
  if (left !== 0) throw new Error(`${variant.name}: ${left} keys left behind`);
  return { cpuMicros: (used.user + used.system) / messages, rate: (messages / elapsedMs) * 1000 };
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
};

async function main(): Promise<void> {
  const admin = new Redis({ host: HOST, port: Number(PORT), db: DB });
  if (args.flush) await admin.flushdb();
  const all: Variant[] = [
    plainFullKeys(),
    plainMessageId(),
    storeVariant('store', new RedisDedupStore({ redisServer: SERVER, db: DB })),
  ];
  if (args.old !== undefined) {
    const old = (await import(args.old)) as {
      RedisDedupStore: new (options: { redisServer: string; db: number }) => Store;
    };
    all.push(storeVariant('store-old', new old.RedisDedupStore({ redisServer: SERVER, db: DB })));
  }
  const only = args.only?.split(',');
  const variants = only === undefined ? all : all.filter((variant) => only.includes(variant.name));
  for (const variant of all) if (!variants.includes(variant)) await variant.close();
  console.log(
    `store overhead: ${MESSAGES} redundant happy paths (5 calls each), concurrency ${CONCURRENCY}, ` +
      `${ROUNDS} rounds, Redis ${SERVER} db ${DB}${args.flush ? ' (flushed)' : ''}, node ${process.version}`,
  );
  const results = new Map<string, Figures[]>(variants.map((variant) => [variant.name, []]));
  try {
    for (const variant of variants) await runOnce(variant, admin, WARMUP);
    for (let round = 1; round <= ROUNDS; round++) {
      for (const variant of variants) {
        const figures = await runOnce(variant, admin, MESSAGES);
        results.get(variant.name)!.push(figures);
        console.log(
          `round ${round} ${variant.name.padEnd(10)} ${figures.cpuMicros.toFixed(1).padStart(7)} µs CPU/msg ` +
            `${figures.rate.toFixed(0).padStart(7)} msgs/s`,
        );
      }
    }
    console.log('median:');
    for (const [name, figures] of results) {
      console.log(
        `  ${name.padEnd(10)} ${median(figures.map((f) => f.cpuMicros))
          .toFixed(1)
          .padStart(7)} µs CPU/msg ${median(figures.map((f) => f.rate))
          .toFixed(0)
          .padStart(7)} msgs/s`,
      );
    }
  } finally {
    for (const variant of variants) await variant.close();
    await admin.quit();
  }
}

await main();
