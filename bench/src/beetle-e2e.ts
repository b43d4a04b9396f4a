/**
 * Beetle redundant end-to-end: a `Publisher` publishes N redundant messages (two confirmed copies each), a
 * `Subscriber` consumes both copies from both brokers, deduplicates them in a `RedisDedupStore`, runs the
 * (empty) handler once per message and acks both copies. Measured: time from the first publish until both
 * copies of every message are acked, and publish → handler completion latency.
 */
import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { Outcome, Topology, createConfig, type DedupStore } from '@beetle/core';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Publisher } from '@beetle/publisher';
import { Subscriber } from '@beetle/subscriber';
import {
  BENCH_REDIS_DB,
  CONCURRENCY,
  PREFETCH,
  WINDOW,
  drive,
  drivePaced,
  hostPort,
  percentile,
  round,
  rawBroker,
  suffix,
  waitUntil,
} from './common.js';
import { startMeters, summarize, type E2eHarness, type E2eRun } from './e2e-harness.js';

export interface BeetleE2eOptions {
  readonly servers: readonly string[];
  /** `host:port`; db {@link BENCH_REDIS_DB} is flushed first. */
  readonly redisServer: string;
  /** Seconds; default Beetle's (1). For investigating the cost of requeued racing copies. */
  readonly rejectRequeueDelay?: number;
  /** Default {@link PREFETCH} / {@link CONCURRENCY}. */
  readonly prefetch?: number;
  readonly concurrency?: number;
  /** Count the subscriber's store calls per method (`storeCalls`); off in the throughput runs. */
  readonly countStoreCalls?: boolean;
}

export interface BeetleE2eHarness extends E2eHarness {
  /** Outcomes of the last run (processed events). */
  readonly outcomes: Map<string, number>;
  /** Store calls of the last run by method (with `countStoreCalls`): each waits for one Redis reply. */
  readonly storeCalls: Map<string, number>;
}

/** `store` with every method call counted in `calls`. */
function countingStore(store: DedupStore, calls: Map<string, number>): DedupStore {
  return new Proxy(store, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]): unknown => {
        calls.set(String(property), (calls.get(String(property)) ?? 0) + 1);
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

/** FLUSHDB of the benchmark database. */
export async function flushBenchDb(redisServer: string): Promise<void> {
  const { host, port } = hostPort(redisServer);
  const redis = new Redis({ host, port, db: BENCH_REDIS_DB, lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
    await redis.flushdb();
  } finally {
    redis.disconnect();
  }
}

export async function beetleE2e(options: BeetleE2eOptions): Promise<BeetleE2eHarness> {
  const servers = options.servers.slice(0, 2);
  if (servers.length < 2) throw new Error('redundant messages need two brokers');
  await flushBenchDb(options.redisServer);
  const queue = `bench-e2e-${suffix()}`;
  const topology = new Topology().registerQueue(queue).registerMessage(queue, { redundant: true });
  const config = createConfig({
    servers,
    publisherMaxInFlight: WINDOW,
    publishTimeout: 60,
    prefetchCount: options.prefetch ?? PREFETCH,
    subscriberConcurrency: options.concurrency ?? CONCURRENCY,
    rejectRequeueDelay: options.rejectRequeueDelay,
  });
  const store = new RedisDedupStore({ redisServer: options.redisServer, db: BENCH_REDIS_DB });
  const storeCalls = new Map<string, number>();
  const subscriber = new Subscriber({
    config,
    topology,
    store: options.countStoreCalls === true ? countingStore(store, storeCalls) : store,
  });
  const publisher = new Publisher({ config, topology });

  let seq = 0;
  let acked = 0;
  let handlerRuns = 0;
  let requeues = 0;
  const started = new Map<number, number>();
  const latencies: number[] = [];
  const processing: number[] = [];
  const outcomes = new Map<string, number>();
  subscriber.register(queue, (message) => {
    handlerRuns++;
    const t0 = started.get(Number(message.body.toString('latin1')));
    if (t0 !== undefined) latencies.push(performance.now() - t0);
  });
  subscriber.on('processed', (event) => {
    outcomes.set(event.outcome, (outcomes.get(event.outcome) ?? 0) + 1);
    processing.push(event.durationMs);
    if (event.settled === 'acked') acked++;
    else requeues++;
    if (event.outcome === Outcome.InternalError) {
      process.stderr.write(`beetle e2e: internal error: ${String(event.error)}\n`);
    }
  });
  const status = await subscriber.listen();
  const notConsuming = status.filter((s) => s.state !== 'consuming');
  if (notConsuming.length > 0) {
    await subscriber.stop({ timeout: 1 });
    await store.close();
    throw new Error(`subscriber not consuming on ${notConsuming.map((s) => s.server).join(', ')}`);
  }

  const run = async (messages: number, rate?: number): Promise<E2eRun> => {
    acked = 0;
    handlerRuns = 0;
    requeues = 0;
    latencies.length = 0;
    processing.length = 0;
    outcomes.clear();
    storeCalls.clear();
    started.clear();
    const meters = startMeters();
    const t0 = performance.now();
    const pace = (op: () => Promise<void>): Promise<void> =>
      rate === undefined ? drive(messages, WINDOW, op) : drivePaced(messages, rate, WINDOW, op);
    await pace(async () => {
      const i = seq++;
      started.set(i, performance.now());
      const copies = await publisher.publish(queue, Buffer.from(String(i), 'latin1'));
      if (copies !== 2) throw new Error(`redundant publish placed ${copies} copies`);
    });
    await waitUntil(() => acked >= 2 * messages, 180_000, `${2 * messages} Beetle copies acked`);
    const seconds = (performance.now() - t0) / 1000;
    return {
      ...summarize(messages, seconds, latencies, meters, { handlerRuns, requeues }),
      processingP50: round(percentile(processing, 50), 1),
      processingP99: round(percentile(processing, 99), 1),
    };
  };

  return {
    name: 'Beetle redundant end-to-end',
    settings:
      `Publisher publisherMaxInFlight ${WINDOW}, confirms on; Subscriber prefetchCount ${config.prefetchCount}, ` +
      `subscriberConcurrency ${config.subscriberConcurrency}, rejectRequeueDelay ${config.rejectRequeueDelay} s; ` +
      `RedisDedupStore ${options.redisServer} db ${BENCH_REDIS_DB}; empty handler`,
    outcomes,
    storeCalls,
    run,
    async close() {
      await publisher.close();
      await subscriber.stop({ timeout: 5 });
      await store.close();
      for (const server of servers) {
        const broker = await rawBroker(server);
        await broker.channel.deleteQueue(queue);
        await broker.channel.deleteExchange(queue);
        await broker.connection.close();
      }
    },
  };
}
