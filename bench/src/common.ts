/**
 * Shared helpers of the benchmarks: settings from the environment, raw amqplib connections, statistics.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import amqp from 'amqplib';

export { sleep };

/** Brokers (`BEETLE_SERVERS`, default the two local ones). */
export const servers = (process.env.BEETLE_SERVERS ?? '127.0.0.1:5672,127.0.0.1:5673')
  .split(',')
  .map((s) => s.trim())
  .filter((s) => s !== '');

/** The dedup Redis (`BEETLE_REDIS_SERVER`); the benchmarks use db {@link BENCH_REDIS_DB}, flushed first. */
export const redisServer = process.env.BEETLE_REDIS_SERVER ?? '127.0.0.1:6379';
export const BENCH_REDIS_DB = 5;

/** Settings shared by Beetle and the raw ceiling: publish window (in-flight confirms), prefetch, concurrency. */
export const WINDOW = 1000;
export const PREFETCH = 100;
/**
 * Beetle's handlers at once: every prefetched delivery of both brokers (2 × PREFETCH), so that, like the raw
 * consumer, only the prefetch bounds the deliveries in flight. (With 50 a delivery waited for a slot; measured
 * in one process, alternating, 6 rounds each: 3162 msgs/s at 50, 3593 at 100, 3635 at 200.)
 */
export const CONCURRENCY = 2 * PREFETCH;

/** Settings every benchmark gets from the runner. */
export interface BenchOptions {
  readonly messages: number;
  readonly rounds: number;
  readonly outageSeconds: number;
  /** Progress lines go to stderr unless --json. */
  readonly log: (line: string) => void;
}

export const suffix = (): string => randomUUID().slice(0, 8);

export function hostPort(server: string): { host: string; port: number } {
  const index = server.lastIndexOf(':');
  return { host: server.slice(0, index), port: Number(server.slice(index + 1)) };
}

export interface RawBroker {
  readonly server: string;
  readonly connection: amqp.ChannelModel;
  readonly channel: amqp.ConfirmChannel;
}

/** A raw amqplib connection with one confirm channel (Nagle off, as Beetle's connections). */
export async function rawBroker(server: string): Promise<RawBroker> {
  const { host, port } = hostPort(server);
  const connection = await amqp.connect(
    { protocol: 'amqp', hostname: host, port, username: 'guest', password: 'guest', vhost: '/' },
    { noDelay: true },
  );
  const channel = await connection.createConfirmChannel();
  return { server, connection, channel };
}

/** Declares what Beetle declares for queue `name`: topic exchange `name`, queue `name`, binding key `name`. */
export async function declareBeetleQueue(broker: RawBroker, name: string): Promise<void> {
  await broker.channel.assertExchange(name, 'topic', { durable: true });
  await broker.channel.assertQueue(name, { durable: true, exclusive: false, autoDelete: false });
  await broker.channel.bindQueue(name, name, name);
}

export async function deleteBeetleQueue(broker: RawBroker, name: string): Promise<void> {
  await broker.channel.deleteQueue(name);
  await broker.channel.deleteExchange(name);
}

/** The Beetle format-1 envelope, built by hand (what the raw ceiling sends). */
export function rawProperties(redundant: boolean): amqp.Options.Publish {
  const now = Math.floor(Date.now() / 1000);
  return {
    messageId: randomUUID(),
    timestamp: now,
    headers: { format_version: '1', flags: redundant ? '1' : '0', expires_at: String(now + 86400) },
    deliveryMode: 2,
    contentType: 'application/octet-stream',
    priority: 0,
  };
}

/** Publishes one message and resolves on its confirm. */
export function confirmedPublish(
  broker: RawBroker,
  exchange: string,
  body: Buffer,
  properties: amqp.Options.Publish,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    broker.channel.publish(exchange, exchange, body, properties, (error: unknown) =>
      error ? reject(error instanceof Error ? error : new Error('nacked')) : resolve(),
    );
  });
}

/** Runs `count` operations with `window` of them in flight (like `publish.ts`). */
export async function drive(
  count: number,
  window: number,
  op: (i: number) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      await op(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(window, count) }, worker));
}

/**
 * Starts operation i at `i / rate` seconds (open loop: an operation does not wait for the previous one), at
 * most `window` in flight. Resolves when all have completed.
 */
export async function drivePaced(
  count: number,
  rate: number,
  window: number,
  op: (i: number) => Promise<unknown>,
): Promise<void> {
  const started = performance.now();
  const running = new Set<Promise<unknown>>();
  for (let i = 0; i < count; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 1) await sleep(wait);
    while (running.size >= window) await Promise.race(running);
    const task: Promise<unknown> = op(i).finally(() => running.delete(task));
    running.add(task);
  }
  await Promise.all(running);
}

/** Resolves when `check()` holds; rejects after `ms` naming `what`. */
export async function waitUntil(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(5);
  }
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1]!;
}

export const round = (value: number, digits = 0): number => Number(value.toFixed(digits));

/** Runs `fn` with a timer; rejects if it takes longer than `ms`. */
export async function bounded<T>(what: string, ms: number, fn: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s`)), ms);
  });
  try {
    return await Promise.race([fn(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Jiffies of the whole machine (all CPUs): busy and total, from /proc/stat (zeros where unavailable). */
export function machineCpu(): { busy: number; total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
    const fields = line.trim().split(/\s+/).slice(1).map(Number);
    const total = fields.reduce((a, b) => a + b, 0);
    const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
    return { busy: total - idle, total };
  } catch {
    return { busy: 0, total: 0 };
  }
}

/** Share of the machine's CPU time that was busy between two `machineCpu()` readings, percent. */
export function busyPercent(
  before: { busy: number; total: number },
  after: { busy: number; total: number },
): number {
  const total = after.total - before.total;
  return total > 0 ? round(((after.busy - before.busy) / total) * 100) : Number.NaN;
}

/** Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux). */
const USER_HZ = 100;

/** CPU seconds (user + system) used so far by each RabbitMQ node (`beam.smp`) and Redis server, by pid. */
export type ServiceCpu = ReadonlyMap<
  number,
  { readonly kind: 'brokers' | 'redis'; readonly seconds: number }
>;

/**
 * CPU seconds of the machine's RabbitMQ nodes and Redis servers (replicas count: they work for every write
 * too), from `/proc` (empty where unavailable); `serviceCpuSince` turns two readings into a difference.
 */
export function serviceCpu(): ServiceCpu {
  const total = new Map<number, { kind: 'brokers' | 'redis'; seconds: number }>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return total;
  }
  for (const pid of entries) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const kind = name === 'beam.smp' ? 'brokers' : name === 'redis-server' ? 'redis' : undefined;
      if (kind === undefined) continue;
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      total.set(Number(pid), { kind, seconds: (Number(fields[11]) + Number(fields[12])) / USER_HZ });
    } catch {
      // the process ended meanwhile
    }
  }
  return total;
}

/**
 * CPU seconds the services used between `before` and now, per kind. Per process, so that a node stopped or
 * started meanwhile (another run killing brokers) does not make the figure negative; a new one counts whole.
 */
export function serviceCpuSince(before: ServiceCpu): { brokers: number; redis: number } {
  const used = { brokers: 0, redis: 0 };
  for (const [pid, now] of serviceCpu()) {
    used[now.kind] += now.seconds - (before.get(pid)?.seconds ?? 0);
  }
  return used;
}
