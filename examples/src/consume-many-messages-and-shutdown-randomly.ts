/**
 * Consumers stopped and killed at random while they work (Ruby
 * `examples/consume_many_messages_and_shutdown_randomly.rb`), checking for duplicate handling.
 *
 * The example publishes many redundant messages, then runs several consumer processes (prefetch 100) and, at
 * random intervals, stops one (SIGTERM: a graceful stop that lets running handlers finish) or kills it
 * (SIGKILL: a crash) and starts a replacement. Every worker writes to a record file outside Beetle:
 *
 *   run <uuid> <pid>        the handler started (written before it does its work)
 *   completed <uuid> <pid>  the handler succeeded and Beetle recorded the completion (store + ack)
 *   seen <uuid> <pid>       a copy acknowledged without running the handler (already completed)
 *   failed <uuid> <pid>     the message finally failed (must not happen)
 *
 * Beetle's guarantee is at-least-once handling with at most one completion per message id: a handler that was
 * interrupted by a crash may run again, but no message may complete twice and none may get lost. The check:
 * - duplicates: message ids with two `completed` lines — must be 0;
 * - lost: message ids never completed, unless their completion may have been recorded in Beetle but not in
 *   the file because the worker was killed in between (then the queues are empty and Redis knows it) — must
 *   be 0;
 * - interrupted runs (`run` without `completed` in a killed worker) are reported: these are the re-runs
 *   at-least-once allows. A killed run blocks its message for the handler timeout + 10 s grace.
 *
 *   npx tsx examples/src/consume-many-messages-and-shutdown-randomly.ts
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Client, RedisDedupStore, type HandlerMessage } from '@beetle/client';
import type { BeetleConfigInput } from '@beetle/core';
import {
  dedupKeysLeft,
  deleteDedupKeys,
  deleteTopology,
  exampleConfig,
  isScript,
  output,
  queueLength,
  runId,
  runIfScript,
  sleep,
  waitFor,
  type ExampleOptions,
  type ExampleSummary,
} from './support.js';

export interface RandomShutdownOptions extends ExampleOptions {
  /** Messages to publish (default 1000). */
  readonly count?: number;
  /** Consumer processes running at a time (default 3). */
  readonly workers?: number;
  /** Shutdowns to make (default 8): the first is a SIGTERM, the second a SIGKILL, the others at random. */
  readonly shutdowns?: number;
  /** Upper bound in milliseconds of the random stopping and killing (default 20000). */
  readonly chaosMs?: number;
  /** Range of milliseconds between two shutdowns (default [500, 1500]). */
  readonly shutdownEveryMs?: readonly [number, number];
  /** Share of shutdowns that are SIGKILL instead of SIGTERM (default 0.3). */
  readonly killRatio?: number;
  /** Upper bound of the random milliseconds a handler works (default 20). */
  readonly handlerMs?: number;
  /** Handler timeout in seconds (default 2): a killed run blocks its message for this + 10 s. */
  readonly handlerTimeout?: number;
  /** Milliseconds after the chaos to wait for every message to complete (default 60000). */
  readonly settleMs?: number;
}

export interface RandomShutdownSummary extends ExampleSummary {
  readonly published: number;
  readonly workersStarted: number;
  readonly stoppedGracefully: number;
  readonly killed: number;
  readonly handlerRuns: number;
  readonly completed: number;
  /** Message ids completed more than once (must be empty). */
  readonly duplicates: readonly string[];
  /** Message ids never completed (must be empty). */
  readonly lost: readonly string[];
  /** Ids whose completion is not in the file because their worker was killed right after it (Beetle has it). */
  readonly completedButUnrecorded: readonly string[];
  /** Handler runs interrupted by a kill (re-run later: at-least-once). */
  readonly interruptedRuns: number;
  readonly failed: number;
  /** No message left in the queue on any broker at the end. */
  readonly queuesEmpty: boolean;
  /** Dedup keys left (a worker killed between ack and key cleanup leaves keys for garbage collection; deleted). */
  readonly redisKeysLeft: number;
}

interface WorkerSettings {
  readonly queue: string;
  readonly recordFile: string;
  readonly handlerMs: number;
  readonly handlerTimeout: number;
  readonly config: BeetleConfigInput | undefined;
}

const WORKER_ENV = 'BEETLE_EXAMPLE_WORKER';
const READY = 'listening';
const WORKER_CONFIG: BeetleConfigInput = { prefetchCount: 100, subscriberConcurrency: 4, stopTimeout: 5 };

function topology(client: Client, queue: string): Client<Record<string, { n: number }>> {
  return client.queue(queue).message<string, { n: number }>(queue, { redundant: true });
}

/** A consumer process: consumes the queue until SIGTERM, recording what it does. */
export async function worker(settings: WorkerSettings): Promise<void> {
  const { logger } = output({ print: (line) => console.error(`[worker ${process.pid}] ${line}`) });
  const config = exampleConfig({ config: settings.config }, WORKER_CONFIG, logger);
  const client = topology(new Client({ config, logger }), settings.queue);
  const record = (what: string, uuid: string): void =>
    appendFileSync(settings.recordFile, `${what} ${uuid} ${process.pid}\n`);
  const ran = new WeakSet<HandlerMessage>();
  client.handler(
    settings.queue,
    async (message) => {
      record('run', message.uuid);
      await sleep(Math.random() * settings.handlerMs);
      ran.add(message);
    },
    { attempts: 10, timeout: settings.handlerTimeout, delay: 0 },
  );
  client.subscriber.on('processed', (event) => {
    if (event.message === undefined) return;
    if (event.outcome === 'OK') record(ran.has(event.message) ? 'completed' : 'seen', event.message.uuid);
    else if (event.outcome.endsWith('Reached') || event.outcome === 'ExceptionNotAccepted') {
      record('failed', event.message.uuid);
    }
  });
  let stopping = false;
  process.on('SIGTERM', () => {
    if (stopping) return;
    stopping = true;
    client.stop().then(
      (result) => {
        console.error(`[worker ${process.pid}] stopped gracefully (abandoned ${result.abandoned})`);
        process.exit(0);
      },
      (error: unknown) => {
        console.error(`[worker ${process.pid}] stop failed: ${String(error)}`);
        process.exit(1);
      },
    );
  });
  await client.listen();
  console.error(`[worker ${process.pid}] ${READY}`);
}

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const thisFile = fileURLToPath(import.meta.url);

/** Starts a worker process with tsx (from the repository root, so `@beetle/*` resolve like in the parent). */
function spawnWorker(settings: WorkerSettings, env: NodeJS.ProcessEnv): ChildProcess {
  const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx/esm')).href;
  return spawn(process.execPath, ['--import', tsx, thisFile, '--worker'], {
    cwd: repoRoot,
    env: { ...env, [WORKER_ENV]: JSON.stringify(settings) },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
}

const between = ([min, max]: readonly [number, number]): number => min + Math.random() * (max - min);

export async function main(options: RandomShutdownOptions = {}): Promise<RandomShutdownSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const env = options.env ?? process.env;
  const count = options.count ?? 1000;
  const workerCount = options.workers ?? 3;
  const chaosMs = options.chaosMs ?? 20_000;
  const shutdowns = options.shutdowns ?? 8;
  const killRatio = options.killRatio ?? 0.3;
  const queue = `beetle-example-random-shutdown-${runId()}`;
  const dir = mkdtempSync(join(tmpdir(), 'beetle-random-shutdown-'));
  const settings: WorkerSettings = {
    queue,
    recordFile: join(dir, 'record.txt'),
    handlerMs: options.handlerMs ?? 20,
    handlerTimeout: options.handlerTimeout ?? 2,
    config: options.config,
  };
  appendFileSync(settings.recordFile, '');
  const config = exampleConfig(options, WORKER_CONFIG, logger);
  const client = topology(new Client({ config, logger }), queue);
  const store = RedisDedupStore.fromConfig(config, { logger });

  const workers = new Set<ChildProcess>();
  /** Workers that consume and were not told to stop yet. */
  const ready = new Set<ChildProcess>();
  const killedPids = new Set<number>();
  let workersStarted = 0;
  let stoppedGracefully = 0;
  const start = (): void => {
    const child = spawnWorker(settings, env);
    workersStarted++;
    workers.add(child);
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      for (const line of chunk.split('\n')) {
        if (line.endsWith(READY) && child.exitCode === null && child.signalCode === null) ready.add(child);
        if (line.trim() !== '') logger.debug(line);
      }
    });
    child.on('exit', () => {
      workers.delete(child);
      ready.delete(child);
    });
  };
  const exited = (child: ChildProcess): Promise<void> =>
    child.exitCode !== null || child.signalCode !== null
      ? Promise.resolve()
      : new Promise((resolve) => child.once('exit', () => resolve()));

  const ids = Array.from({ length: count }, (_, n) => `${queue.slice(-8)}-${String(n).padStart(6, '0')}`);
  const read = (): string[][] =>
    readFileSync(settings.recordFile, 'utf8')
      .split('\n')
      .filter((line) => line !== '')
      .map((line) => line.split(' '));
  const completedIds = (): Set<string> =>
    new Set(
      read().flatMap(([what, uuid]) => ((what === 'completed' || what === 'seen') && uuid ? [uuid] : [])),
    );

  const settledCopies = (): number => {
    const perId = new Map<string, number>();
    for (const [what, uuid = ''] of read()) {
      if (what === 'completed' || what === 'seen') perId.set(uuid, (perId.get(uuid) ?? 0) + 1);
    }
    let settled = 0;
    for (const n of perId.values()) settled += Math.min(n, 2);
    return settled;
  };

  let queuesEmpty = false;
  let redisKeysLeft = -1;
  try {
    await client.setupQueuesAndPolicies();
    await Promise.all(ids.map((messageId, n) => client.publish(queue, { n }, { messageId })));
    print(`published ${count} redundant messages to ${queue}; starting ${workerCount} consumer processes`);
    for (let i = 0; i < workerCount; i++) start();

    // Workers take a moment to start (tsx compiles them): the chaos starts once one of them consumes.
    await waitFor(() => ready.size > 0, 30_000, 50);
    const chaosEnd = Date.now() + chaosMs;
    let made = 0;
    while (made < shutdowns && Date.now() < chaosEnd) {
      await sleep(between(options.shutdownEveryMs ?? [500, 1500]));
      // Only workers that consume (and may be in the middle of handlers) are shut down.
      const victims = [...ready].filter((w) => w.pid !== undefined && !killedPids.has(w.pid));
      const victim = victims[Math.floor(Math.random() * victims.length)];
      if (victim?.pid === undefined) continue;
      const kill = killRatio > 0 && killRatio < 1 && made < 2 ? made === 1 : Math.random() < killRatio;
      made++;
      if (kill) killedPids.add(victim.pid);
      else stoppedGracefully++;
      print(
        `${kill ? 'killing' : 'stopping'} worker ${victim.pid} (${completedIds().size}/${count} completed), starting a new one`,
      );
      ready.delete(victim);
      victim.kill(kill ? 'SIGKILL' : 'SIGTERM');
      start();
    }
    print(`chaos over (${completedIds().size}/${count} completed); waiting for the remaining messages`);
    const progress = setInterval(() => print(`${completedIds().size}/${count} completed`), 2000);
    try {
      // Done when both copies of every message were settled (one completed, the other seen), or — since a
      // worker killed right after settling a copy may not have recorded it — when every message was settled
      // once and no copy is left in the queue (ready or unacked; the management API lags by up to 5 s).
      await waitFor(
        async () =>
          settledCopies() >= 2 * count ||
          (completedIds().size >= count && (await queueLength(config, queue)) === 0),
        options.settleMs ?? 60_000,
        250,
      );
    } finally {
      clearInterval(progress);
    }
  } finally {
    const running = [...workers];
    for (const child of running) child.kill('SIGTERM');
    const all = Promise.all(running.map(exited));
    let timer: NodeJS.Timeout | undefined;
    const gone = await Promise.race([
      all.then(() => true),
      new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), 10_000))),
    ]);
    clearTimeout(timer);
    if (!gone) {
      for (const child of workers) child.kill('SIGKILL');
      await all;
    }
    // Ready messages on all brokers, measured now over AMQP: the publisher's throttling measurement with limit
    // 0 (the management API's counts lag by up to 5 s).
    client.throttle({ [queue]: 0 });
    await client.publisher.refreshThrottling();
    queuesEmpty = !client.throttled();
    client.throttle({});
    redisKeysLeft = await dedupKeysLeft(store, queue).catch(() => -1);
    // A worker killed between its ack and the key cleanup leaves keys for Beetle's garbage collection.
    await deleteDedupKeys(store, queue).catch(() => 0);
    await client.stop();
    await store.close();
    await deleteTopology(config, { queues: [queue], exchanges: [queue] });
  }

  const lines = read();
  rmSync(dir, { recursive: true, force: true });
  const completions = new Map<string, number>();
  const seen = new Set<string>();
  const runsByKilled = new Set<string>();
  let handlerRuns = 0;
  let interruptedRuns = 0;
  let failed = 0;
  const completedBy = new Set<string>();
  for (const [what, uuid = '', pid = ''] of lines) {
    if (what === 'completed') {
      completions.set(uuid, (completions.get(uuid) ?? 0) + 1);
      completedBy.add(`${uuid} ${pid}`);
    }
    if (what === 'seen') seen.add(uuid);
    if (what === 'failed') failed++;
  }
  for (const [what, uuid = '', pid = ''] of lines) {
    if (what !== 'run') continue;
    handlerRuns++;
    if (killedPids.has(Number(pid)) && !completedBy.has(`${uuid} ${pid}`)) {
      interruptedRuns++;
      runsByKilled.add(uuid);
    }
  }
  const duplicates = ids.filter((id) => (completions.get(id) ?? 0) > 1);
  const unrecorded = ids.filter((id) => !completions.has(id));
  // Beetle completed these (a copy was acknowledged as already completed, and nothing is left in the queues),
  // but the worker that completed them was killed before writing its line.
  const completedButUnrecorded = unrecorded.filter(
    (id) => runsByKilled.has(id) && seen.has(id) && queuesEmpty,
  );
  const lost = unrecorded.filter((id) => !completedButUnrecorded.includes(id));
  const summary: RandomShutdownSummary = {
    example: 'consume-many-messages-and-shutdown-randomly',
    ok: duplicates.length === 0 && lost.length === 0 && failed === 0 && queuesEmpty,
    elapsedMs: Date.now() - started,
    published: count,
    workersStarted,
    stoppedGracefully,
    killed: killedPids.size,
    handlerRuns,
    completed: completions.size,
    duplicates,
    lost,
    completedButUnrecorded,
    interruptedRuns,
    failed,
    queuesEmpty,
    redisKeysLeft,
  };
  print(
    duplicates.length === 0
      ? `no duplicate completion among ${count} messages (${handlerRuns} handler runs, ${interruptedRuns} interrupted by kills)`
      : `DUPLICATES: ${duplicates.join(', ')}`,
  );
  return summary;
}

if (isScript(import.meta.url) && process.argv.includes('--worker')) {
  const raw = process.env[WORKER_ENV];
  if (raw === undefined) throw new Error(`${WORKER_ENV} is not set`);
  worker(JSON.parse(raw) as WorkerSettings).catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
} else {
  runIfScript(import.meta.url, () => main());
}
