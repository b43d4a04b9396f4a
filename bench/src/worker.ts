/**
 * One process of a deployment-shaped benchmark run (`deployment.ts` spawns it): a publisher or a consumer, raw
 * amqplib or Beetle, as a service would run it. Its spec comes as JSON in argv[2]; it talks JSON lines: it
 * writes `ready`, `progress` (every 100 ms) and `report` / `done` on stdout, and reads `go` and `report` on stdin.
 *
 * Times are epoch milliseconds with sub-millisecond resolution (`performance.timeOrigin + performance.now()`),
 * comparable between the processes of one machine: a publisher stamps the time into the first 8 bytes of
 * every body, and the consumer's handler measures publish → handler latency from it.
 */
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import type amqp from 'amqplib';
import { Client } from '@beetle/client';
import { Outcome, Topology, createConfig, type Logger } from '@beetle/core';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Publisher } from '@beetle/publisher';
import { Subscriber } from '@beetle/subscriber';
import {
  BENCH_REDIS_DB,
  WINDOW,
  confirmedPublish,
  drive,
  drivePaced,
  percentile,
  rawBroker,
  rawProperties,
  round,
} from './common.js';

/** One stderr line per Beetle warning or error (a failed worker's stderr is shown); the rest is dropped. */
const line =
  (level: string) =>
  (first: unknown, ...rest: unknown[]): void => {
    const context = typeof first === 'object' && first !== null ? (first as { err?: unknown }) : undefined;
    const message = context === undefined ? String(first) : typeof rest[0] === 'string' ? rest[0] : '';
    const cause = context?.err instanceof Error ? `: ${context.err.message}` : '';
    console.error(`[${level}] ${message}${cause}`);
  };
const stderrLogger: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: line('warn'),
  error: line('error'),
};

/** The raw consumer's prefetch per channel: Beetle's default `prefetchCount`. */
const RAW_PREFETCH = 100;

export interface PublishSpec {
  readonly role: 'publish';
  readonly kind: 'raw' | 'beetle';
  readonly servers: readonly string[];
  /** Messages go round robin over these queues (exchange = queue = routing key, as Beetle declares them). */
  readonly queues: readonly string[];
  readonly messages: number;
  readonly bodyBytes: number;
  /** Open loop at this rate (messages per second); as fast as the window allows otherwise. */
  readonly rate?: number;
}

export interface ConsumeSpec {
  readonly role: 'consume';
  /** `beetle-defaults`: a `Client` given only the brokers and the Redis database, nothing tuned. */
  readonly kind: 'raw' | 'beetle' | 'beetle-defaults';
  readonly servers: readonly string[];
  readonly queues: readonly string[];
  readonly redisServer: string;
  /** Connect and consume only when told `go` (a backlog run times the consumer from there). */
  readonly waitForGo: boolean;
  /** Beetle consumers: settings over the library's defaults. */
  readonly beetleSettings?: { readonly prefetchCount?: number; readonly subscriberConcurrency?: number };
}

export type WorkerSpec = PublishSpec | ConsumeSpec;

export interface PublishDone {
  readonly type: 'done';
  readonly startedAt: number;
  readonly cpuUs: number;
}

export interface ConsumeReport {
  readonly type: 'report';
  /**
   * When its first handler ran: a backlog run is timed from the first delivery (connecting, declaring and
   * subscribing are not consuming, and cost Beetle more than a bare channel).
   */
  readonly startedAt: number;
  /** When the last copy was acked. */
  readonly lastAckAt: number;
  readonly acked: number;
  readonly handlerRuns: number;
  /** Deliveries handed back to the broker (Beetle: a copy racing its twin, a delay). */
  readonly requeues: number;
  /** Process CPU (user + system) from the first handler run to the report, microseconds in all. */
  readonly cpuUs: number;
  readonly peakRssMb: number;
  /** Publish → handler completion of the copies that ran the handler, ms. */
  readonly latencyP50: number;
  readonly latencyP99: number;
  readonly outcomes: Record<string, number>;
}

const now = (): number => performance.timeOrigin + performance.now();

const emit = (line: object): void => {
  process.stdout.write(`${JSON.stringify(line)}\n`);
};

/** Peak resident set of this process (VmHWM), MB; 0 where /proc is missing. */
function peakRssMb(): number {
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    return match ? round(Number(match[1]) / 1024, 1) : 0;
  } catch {
    return 0;
  }
}

const cpuTotal = (since: NodeJS.CpuUsage): number => {
  const used = process.cpuUsage(since);
  return used.user + used.system;
};

/** Stdin lines: resolves `next(word)` when that line arrives. */
function commands(): { next(word: string): Promise<void> } {
  const waiting = new Map<string, () => void>();
  const arrived = new Set<string>();
  createInterface({ input: process.stdin }).on('line', (line) => {
    const word = line.trim();
    const resolve = waiting.get(word);
    if (resolve) {
      waiting.delete(word);
      resolve();
    } else arrived.add(word);
  });
  return {
    next: (word) =>
      arrived.delete(word) ? Promise.resolve() : new Promise<void>((r) => waiting.set(word, r)),
  };
}

async function publish(spec: PublishSpec): Promise<void> {
  const template = Buffer.alloc(Math.max(8, spec.bodyBytes), 'x');
  const body = (): Buffer => {
    const b = Buffer.from(template);
    b.writeDoubleLE(now(), 0);
    return b;
  };
  const queueOf = (i: number): string => spec.queues[i % spec.queues.length]!;
  let send: (i: number) => Promise<unknown>;
  let close: () => Promise<void>;
  if (spec.kind === 'raw') {
    const brokers = await Promise.all(spec.servers.slice(0, 2).map(rawBroker));
    send = (i) => {
      const properties = rawProperties(true);
      const b = body();
      return Promise.all(brokers.map((broker) => confirmedPublish(broker, queueOf(i), b, properties)));
    };
    close = async () => {
      for (const broker of brokers) await broker.connection.close();
    };
  } else {
    const topology = new Topology();
    for (const queue of spec.queues)
      topology.registerQueue(queue).registerMessage(queue, { redundant: true });
    // Beetle's defaults (publisherMaxInFlight 1000 = the raw window, operationTimeout 5 s for each confirm);
    // publishTimeout also bounds the wait for a window slot, which with 1 MB bodies can exceed the default.
    const publisher = new Publisher({
      config: createConfig({ servers: [...spec.servers], publishTimeout: 120 }),
      topology,
      logger: stderrLogger,
    });
    // Connected and declared before the clock starts, as the raw publisher is (its connect is not timed).
    await publisher.setupQueuesAndPolicies();
    send = async (i) => {
      const copies = await publisher.publish(queueOf(i), body());
      if (copies !== 2) throw new Error(`redundant publish placed ${copies} copies`);
    };
    close = () => publisher.close();
  }
  const cpu = process.cpuUsage();
  const startedAt = now();
  await (spec.rate === undefined
    ? drive(spec.messages, WINDOW, send)
    : drivePaced(spec.messages, spec.rate, WINDOW, send));
  const done: PublishDone = { type: 'done', startedAt, cpuUs: cpuTotal(cpu) };
  await close();
  emit(done);
}

interface Counters {
  acked: number;
  handlerRuns: number;
  requeues: number;
  lastAckAt: number;
  /** The first handler run: time and CPU reading (a backlog run is timed from here). */
  first?: { readonly at: number; readonly cpu: NodeJS.CpuUsage };
  readonly latencies: number[];
  readonly outcomes: Map<string, number>;
}

/** Handler side of a delivery: the publish time is in the body's first 8 bytes. */
function handled(counters: Counters, body: Buffer): void {
  if (counters.handlerRuns === 0) counters.first = { at: now(), cpu: process.cpuUsage() };
  counters.handlerRuns++;
  counters.latencies.push(now() - body.readDoubleLE(0));
}

async function consumeRaw(spec: ConsumeSpec, counters: Counters): Promise<() => Promise<void>> {
  // In-memory dedup: the first copy of an id runs the "handler", the second is only acked. (One process sees
  // both copies: it consumes every broker.)
  const seen = new Set<string>();
  const connections: amqp.ChannelModel[] = [];
  for (const server of spec.servers) {
    const { connection } = await rawBroker(server);
    connections.push(connection);
    const channel = await connection.createChannel();
    await channel.prefetch(RAW_PREFETCH, false);
    // Acks coalesced per loop turn, as Beetle's: deliveries are handled in order and at once, so one
    // basic.ack(multiple) for the last one of a turn covers the turn (fewer frames for the broker too).
    let last: amqp.ConsumeMessage | undefined;
    const flush = (): void => {
      if (last !== undefined) channel.ack(last, true);
      last = undefined;
    };
    for (const queue of spec.queues) {
      await channel.consume(
        queue,
        (message) => {
          if (message === null) return;
          const id = String(message.properties.messageId);
          if (seen.delete(id)) {
            counters.outcomes.set('duplicate', (counters.outcomes.get('duplicate') ?? 0) + 1);
          } else {
            seen.add(id);
            handled(counters, message.content);
          }
          if (last === undefined) setImmediate(flush);
          last = message;
          counters.acked++;
          counters.lastAckAt = now();
        },
        { noAck: false },
      );
    }
  }
  return async () => {
    for (const connection of connections) await connection.close();
  };
}

async function consumeBeetle(spec: ConsumeSpec, counters: Counters): Promise<() => Promise<void>> {
  const onProcessed = (event: { outcome: string; settled: string; error?: unknown }): void => {
    counters.outcomes.set(event.outcome, (counters.outcomes.get(event.outcome) ?? 0) + 1);
    if (event.settled === 'acked') {
      counters.acked++;
      counters.lastAckAt = now();
    } else counters.requeues++;
    if (event.outcome === Outcome.InternalError) {
      process.stderr.write(`bench worker: internal error: ${String(event.error)}\n`);
    }
  };
  const handler = (message: { body: Buffer }): void => handled(counters, message.body);
  if (spec.kind === 'beetle-defaults') {
    // What a user who tunes nothing gets: only where the brokers and the Redis database are.
    const client = new Client({
      config: { servers: [...spec.servers], redisServer: spec.redisServer, redisDb: BENCH_REDIS_DB },
      logger: stderrLogger,
    });
    for (const queue of spec.queues) client.queue(queue).handler(queue, handler);
    client.subscriber.on('processed', onProcessed);
    await client.listen();
    return async () => {
      await client.stop({ timeout: 5 });
    };
  }
  const topology = new Topology();
  for (const queue of spec.queues) topology.registerQueue(queue);
  const store = new RedisDedupStore({ redisServer: spec.redisServer, db: BENCH_REDIS_DB });
  // Beetle's subscriber defaults (prefetchCount 100, subscriberConcurrency following it) unless overridden.
  const subscriber = new Subscriber({
    config: createConfig({ servers: [...spec.servers], ...spec.beetleSettings }),
    topology,
    store,
    logger: stderrLogger,
  });
  for (const queue of spec.queues) subscriber.register(queue, handler);
  subscriber.on('processed', onProcessed);
  const status = await subscriber.listen();
  const down = status.filter((s) => s.state !== 'consuming');
  if (down.length > 0) throw new Error(`not consuming on ${down.map((s) => s.server).join(', ')}`);
  return async () => {
    await subscriber.stop({ timeout: 5 });
    await store.close();
  };
}

async function consume(spec: ConsumeSpec): Promise<void> {
  const stdin = commands();
  const counters: Counters = {
    acked: 0,
    handlerRuns: 0,
    requeues: 0,
    lastAckAt: 0,
    latencies: [],
    outcomes: new Map(),
  };
  if (spec.waitForGo) {
    emit({ type: 'ready' });
    await stdin.next('go');
  }
  const stop = await (spec.kind === 'raw' ? consumeRaw(spec, counters) : consumeBeetle(spec, counters));
  if (!spec.waitForGo) emit({ type: 'ready' });
  const progress = setInterval(() => emit({ type: 'progress', acked: counters.acked }), 100);
  await stdin.next('report');
  clearInterval(progress);
  const report: ConsumeReport = {
    type: 'report',
    startedAt: counters.first?.at ?? now(),
    lastAckAt: counters.lastAckAt,
    acked: counters.acked,
    handlerRuns: counters.handlerRuns,
    requeues: counters.requeues,
    cpuUs: cpuTotal(counters.first?.cpu ?? process.cpuUsage()),
    peakRssMb: peakRssMb(),
    latencyP50: round(percentile(counters.latencies, 50), 1),
    latencyP99: round(percentile(counters.latencies, 99), 1),
    outcomes: Object.fromEntries(counters.outcomes),
  };
  emit(report);
  await stop();
  process.exit(0);
}

const spec = JSON.parse(process.argv[2] ?? '{}') as WorkerSpec;
(spec.role === 'publish' ? publish(spec) : consume(spec)).catch((error: unknown) => {
  process.stderr.write(
    `bench worker (${spec.role}): ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
