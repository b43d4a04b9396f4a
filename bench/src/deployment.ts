/**
 * Runs shaped like a deployment: the publisher and every consumer are processes of their own (`worker.ts`), on
 * the same brokers and Redis, raw amqplib or Beetle. This process only declares the queues, starts the workers,
 * waits for their progress lines and reads the machine's meters; it does no messaging work itself.
 *
 * - end to end: consumers listen first, then the publisher publishes N redundant messages; the run lasts from
 *   the first publish to the last copy acked;
 * - backlog: N redundant messages are queued first (raw publisher, Beetle's envelope), then the consumers are
 *   told to start (they connect then); the run lasts from the first handler run to the last copy acked.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { flushBenchDb } from './beetle-e2e.js';
import {
  busyPercent,
  declareBeetleQueue,
  deleteBeetleQueue,
  machineCpu,
  rawBroker,
  round,
  serviceCpu,
  serviceCpuSince,
  sleep,
  suffix,
} from './common.js';
import type { ConsumeReport, ConsumeSpec, PublishDone, WorkerSpec } from './worker.js';

export interface DeploymentSpec {
  /** Raw amqplib (in-memory dedup) or Beetle (Redis); `beetle-defaults`: a `Client` with nothing tuned. */
  readonly kind: 'raw' | 'beetle' | 'beetle-defaults';
  readonly mode: 'e2e' | 'backlog';
  /** Brokers the consumers consume from; redundant copies go to the first two (raw) or two of them (Beetle). */
  readonly servers: readonly string[];
  readonly redisServer: string;
  readonly messages: number;
  readonly queues?: number;
  readonly consumers?: number;
  readonly bodyBytes?: number;
  /** Beetle consumers: settings over the defaults (investigations). */
  readonly beetleSettings?: ConsumeSpec['beetleSettings'];
  /** e2e only: open loop at this rate (messages per second). */
  readonly rate?: number;
}

export interface DeploymentRun {
  /** Messages (both copies acked) per second. */
  readonly rate: number;
  readonly seconds: number;
  /** Publish → handler completion, ms (the worst consumer's percentile when there are several). */
  readonly p50: number;
  readonly p99: number;
  readonly handlerRuns: number;
  readonly requeues: number;
  /** CPU per message, microseconds: all consumer processes, the publisher (e2e), RabbitMQ nodes, Redis servers. */
  readonly consumerCpuUs: number;
  readonly publisherCpuUs: number;
  readonly brokerCpuUs: number;
  readonly redisCpuUs: number;
  /** Whole machine busy during the run, percent. */
  readonly machineBusy: number;
  /** Largest peak RSS of a consumer process, MB. */
  readonly consumerPeakRssMb: number;
  readonly outcomes: Record<string, number>;
}

const WORKER = fileURLToPath(new URL('./worker.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** A run that has not finished after this long failed (a stuck consumer, a broker alarm). */
const RUN_TIMEOUT_MS = 300_000;

interface Worker {
  readonly child: ChildProcess;
  /** The worker's latest progress (acked copies). */
  acked: number;
  next<T>(type: string): Promise<T>;
  send(word: string): void;
  exited: Promise<number | null>;
}

/** Investigations: extra node options for the consumer processes, e.g. `--cpu-prof --cpu-prof-dir=/tmp/p`. */
const consumerNodeArgs = (process.env.BEETLE_BENCH_CONSUMER_NODE_ARGS ?? '')
  .split(' ')
  .filter((a) => a !== '');

function startWorker(spec: WorkerSpec): Worker {
  const nodeArgs = spec.role === 'consume' ? consumerNodeArgs : [];
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', WORKER, JSON.stringify(spec)], {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const waiting = new Map<string, (value: unknown) => void>();
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  const worker: Worker = {
    child,
    acked: 0,
    next: <T>(type: string) =>
      new Promise<T>((resolve, reject) => {
        waiting.set(type, resolve as (value: unknown) => void);
        void exited.then((code) =>
          reject(new Error(`${spec.role} worker exited (${String(code)}) before "${type}"`)),
        );
      }),
    send: (word) => child.stdin?.write(`${word}\n`),
    exited,
  };
  createInterface({ input: child.stdout }).on('line', (line) => {
    let message: { type?: string; acked?: number };
    try {
      message = JSON.parse(line) as typeof message;
    } catch {
      process.stderr.write(`bench worker said: ${line}\n`);
      return;
    }
    if (message.type === 'progress') worker.acked = message.acked ?? 0;
    const resolve = waiting.get(message.type ?? '');
    if (resolve) {
      waiting.delete(message.type!);
      resolve(message);
    }
  });
  return worker;
}

/** Rejects when a worker exits with a failure (its stderr says why); never resolves. */
const crashOf = (workers: readonly Worker[]): Promise<never> =>
  Promise.race(
    workers.map((w) =>
      w.exited.then((code) => {
        if (code !== 0) throw new Error(`a worker exited with ${String(code)}`);
        return new Promise<never>(() => undefined);
      }),
    ),
  );

async function withDeadline<T>(
  what: string,
  promise: Promise<T>,
  workers: readonly Worker[] = [],
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      crashOf(workers),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${what}: no end after ${RUN_TIMEOUT_MS / 1000} s`)),
          RUN_TIMEOUT_MS,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

async function declare(
  servers: readonly string[],
  queues: readonly string[],
  remove: boolean,
): Promise<void> {
  for (const server of servers) {
    const broker = await rawBroker(server);
    try {
      for (const queue of queues)
        await (remove ? deleteBeetleQueue(broker, queue) : declareBeetleQueue(broker, queue));
    } finally {
      await broker.connection.close();
    }
  }
}

/** One run; throws when the handler did not run exactly once per message. */
export async function runDeployment(spec: DeploymentSpec): Promise<DeploymentRun> {
  const tag = suffix();
  const queues = Array.from({ length: spec.queues ?? 1 }, (_, i) => `bench-${spec.kind}-${tag}-${i}`);
  const copies = 2 * spec.messages;
  const publishKind = spec.kind === 'raw' || spec.mode === 'backlog' ? 'raw' : 'beetle';
  const publisherSpec = {
    role: 'publish',
    kind: publishKind,
    servers: spec.servers,
    queues,
    messages: spec.messages,
    bodyBytes: spec.bodyBytes ?? 16,
    ...(spec.rate === undefined ? {} : { rate: spec.rate }),
  } as const;
  await declare(spec.servers, queues, false);
  if (spec.kind !== 'raw') await flushBenchDb(spec.redisServer);
  const workers: Worker[] = [];
  try {
    if (spec.mode === 'backlog') {
      const fill = startWorker(publisherSpec);
      workers.push(fill);
      await withDeadline('backlog fill', fill.next<PublishDone>('done'), workers);
    }
    const consumers = Array.from({ length: spec.consumers ?? 1 }, () =>
      startWorker({
        role: 'consume',
        kind: spec.kind,
        servers: spec.servers,
        queues,
        redisServer: spec.redisServer,
        ...(spec.beetleSettings === undefined ? {} : { beetleSettings: spec.beetleSettings }),
        waitForGo: spec.mode === 'backlog',
      }),
    );
    workers.push(...consumers);
    await withDeadline('consumers ready', Promise.all(consumers.map((c) => c.next('ready'))), workers);
    const machine = machineCpu();
    const services = serviceCpu();
    let published: Promise<PublishDone> | undefined;
    if (spec.mode === 'backlog') {
      for (const c of consumers) c.send('go');
    } else {
      const publisher = startWorker(publisherSpec);
      workers.push(publisher);
      published = publisher.next<PublishDone>('done');
      // Awaited below; a rejection before that is reported there, not as an unhandled one.
      published.catch(() => undefined);
    }
    await withDeadline(
      `${copies} copies acked`,
      (async () => {
        while (consumers.reduce((sum, c) => sum + c.acked, 0) < copies) await sleep(20);
      })(),
      workers,
    );
    const publishDone = published === undefined ? undefined : await withDeadline('publisher', published);
    const reports = consumers.map((c) => c.next<ConsumeReport>('report'));
    for (const c of consumers) c.send('report');
    const done = await withDeadline('reports', Promise.all(reports), workers);
    const servicesUsed = serviceCpuSince(services);
    const busy = busyPercent(machine, machineCpu());
    await Promise.all(workers.map((w) => w.exited));
    const startedAt = publishDone?.startedAt ?? Math.min(...done.map((r) => r.startedAt));
    const seconds = (Math.max(...done.map((r) => r.lastAckAt)) - startedAt) / 1000;
    const handlerRuns = done.reduce((sum, r) => sum + r.handlerRuns, 0);
    if (handlerRuns !== spec.messages) {
      throw new Error(`${spec.kind}: the handler ran ${handlerRuns} times for ${spec.messages} messages`);
    }
    const outcomes: Record<string, number> = {};
    for (const r of done)
      for (const [outcome, n] of Object.entries(r.outcomes)) outcomes[outcome] = (outcomes[outcome] ?? 0) + n;
    const perMessage = (us: number): number => round(us / spec.messages, 1);
    return {
      rate: round(spec.messages / seconds),
      seconds: round(seconds, 2),
      p50: Math.max(...done.map((r) => r.latencyP50)),
      p99: Math.max(...done.map((r) => r.latencyP99)),
      handlerRuns,
      requeues: done.reduce((sum, r) => sum + r.requeues, 0),
      consumerCpuUs: perMessage(done.reduce((sum, r) => sum + r.cpuUs, 0)),
      publisherCpuUs: publishDone === undefined ? 0 : perMessage(publishDone.cpuUs),
      brokerCpuUs: perMessage(servicesUsed.brokers * 1e6),
      redisCpuUs: perMessage(servicesUsed.redis * 1e6),
      machineBusy: busy,
      consumerPeakRssMb: Math.max(...done.map((r) => r.peakRssMb)),
      outcomes,
    };
  } finally {
    for (const w of workers) if (w.child.exitCode === null) w.child.kill('SIGKILL');
    await declare(spec.servers, queues, true);
  }
}
