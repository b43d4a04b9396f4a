/**
 * The chaos harness: runs the real system (brokers, Redis master + replica, publisher and consumer processes)
 * on loopback, lets the nemesis inject faults while messages flow, drains, and judges the records.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import amqp from 'amqplib';
import { Aborted, abortableOf, abortableSleep } from './abort.js';
import { Tally, judge } from './checker.js';
import { Cluster, DEFAULT_PORTS } from './cluster.js';
import { describeStep, planStep, runNemesis, type ExecutedFault } from './nemesis.js';
import { Prng } from './prng.js';
import type { ConsumerSettings, FromWorker, PublisherSettings, SystemSettings } from './protocol.js';
import { redisMode, validate, type ChaosOptions, type ChaosResult } from './settings.js';
import { RecordTail, Worker } from './workers.js';

export type { ChaosOptions, ChaosResult } from './settings.js';

const isType =
  <K extends FromWorker['type']>(type: K) =>
  (m: FromWorker): m is Extract<FromWorker, { type: K }> =>
    m.type === type;

const READY_TIMEOUT_MS = 120_000;
const round1 = (x: number): number => Math.round(x * 10) / 10;

export async function runChaos(options: ChaosOptions): Promise<ChaosResult> {
  const log = options.log ?? ((line: string) => process.stderr.write(`[chaos] ${line}\n`));
  const signal = options.signal;
  const sleep = abortableSleep(signal);
  const abortable = abortableOf(signal);

  validate(options);
  const started = Date.now();
  const prng = new Prng(options.seed);
  const nemesisSeed = prng.fork().seed;
  const nemesisPrng = new Prng(nemesisSeed);
  const dir = mkdtempSync(join(tmpdir(), 'beetle-chaos-'));
  const queue = `chaos_${options.seed}_${randomBytes(3).toString('hex')}`;
  const faultsLabel =
    options.faults === 'mixed' ? 'mixed' : options.faults.length === 0 ? 'none' : options.faults.join(',');
  log(
    `seed ${options.seed}: ${options.messages} messages in ${options.duration}s, ${options.publishers} publisher(s), ` +
      `${options.consumers} consumer(s), faults ${faultsLabel}; run directory ${dir}`,
  );

  let cluster = options.cluster;
  const owned = cluster === undefined;
  const consumers: Worker[] = [];
  const publishers: Worker[] = [];
  const all: Worker[] = [];
  const tails: RecordTail[] = [];
  const tally = new Tally();
  const crashes: string[] = [];
  let shuttingDown = false;
  let generation = 0;
  const poll = (): void => {
    for (const tail of tails) for (const line of tail.read()) tally.add(line);
  };
  let poller: NodeJS.Timeout | undefined;
  let nemesis: Promise<ExecutedFault[]> | undefined;
  let starting: Promise<Cluster> | undefined;
  let ok = false;

  try {
    if (cluster === undefined) {
      starting = Cluster.start(options.ports ?? DEFAULT_PORTS, join(dir, 'redis-master'), log, {
        sentinel: redisMode(options) === 'sentinel',
      });
      cluster = await abortable(starting);
    }
    if (!owned) {
      await cluster.heal();
      await cluster.flushRedis();
      cluster.writeMasterFile(cluster.master.address);
    }
    const services = cluster;
    // The plan is a pure function of the seed: print its beginning (the run executes as much as fits).
    const planPrng = new Prng(nemesisSeed);
    const planOptions = {
      faults: options.faults,
      brokers: services.brokers.length,
      consumers: options.consumers,
      redis: services.sentinelUrl === undefined ? ('file' as const) : ('sentinel' as const),
    };
    const planned = options.faults !== 'mixed' && options.faults.length === 0 ? 0 : (options.maxFaults ?? 8);
    for (let n = 0; n < planned; n++) {
      const step = planStep(planPrng, n, planOptions);
      log(`planned fault #${n + 1}: after ${step.gap}s, ${describeStep(step, services)}`);
    }
    const system: SystemSettings = {
      servers: services.servers,
      masterFile: services.masterFile,
      sentinelUrl: services.sentinelUrl,
      queue,
      attempts: options.attempts ?? 3,
      handlerTimeout: options.handlerTimeout ?? 3,
      handlerDelay: options.handlerDelay ?? 1,
      concurrency: options.concurrency ?? 1,
      prefetch: options.prefetch ?? 5,
      statusKeyExpiry: options.statusKeyExpiry ?? 0,
      completedStatusTtl: options.completedStatusTtl ?? 600,
    };

    const spawnConsumer = async (index: number): Promise<Worker> => {
      if (shuttingDown) throw new Error('shutting down: no new consumer');
      const name = `consumer-${index}-${generation++}`;
      const settings: ConsumerSettings = {
        ...system,
        role: 'consumer',
        index,
        recordFile: join(dir, `${name}.rec`),
        workMinMs: options.workMs?.[0] ?? 1,
        workMaxMs: options.workMs?.[1] ?? 10,
      };
      tails.push(new RecordTail(settings.recordFile));
      const worker = new Worker(settings, join(dir, `${name}.log`));
      all.push(worker);
      consumers[index] = worker;
      let ready = false;
      void worker.exited.then((exit) => {
        // Before it was ready, the failure surfaces through `waitFor` below.
        if (worker.expectedExit || shuttingDown || !ready || signal?.aborted) return;
        const what = `${worker.name} died unexpectedly (${exit.code ?? exit.signal}); see ${worker.logFile}`;
        crashes.push(what);
        log(what);
        if (consumers[index] === worker) {
          spawnConsumer(index).catch((error: unknown) =>
            log(`could not replace ${worker.name}: ${String(error)}`),
          );
        }
      });
      await abortable(worker.waitFor(isType('ready'), READY_TIMEOUT_MS, 'ready'));
      ready = true;
      return worker;
    };

    const setupStarted = Date.now();
    await Promise.all(Array.from({ length: options.consumers }, (_, i) => spawnConsumer(i)));
    log(`${options.consumers} consumer(s) consuming from ${services.servers.join(', ')}`);

    const perPublisher = Array.from(
      { length: options.publishers },
      (_, i) =>
        Math.floor(options.messages / options.publishers) +
        (i < options.messages % options.publishers ? 1 : 0),
    );
    // Nominal publishing ends at 80% of the duration, leaving room for outages to catch up.
    const publishSeconds = options.duration * 0.8;
    await Promise.all(
      perPublisher.map(async (count, index) => {
        const settings: PublisherSettings = {
          ...system,
          role: 'publisher',
          index,
          recordFile: join(dir, `publisher-${index}.rec`),
          count,
          rate: Math.max(count / publishSeconds, 0.1),
          window: options.window ?? 20,
        };
        tails.push(new RecordTail(settings.recordFile));
        const worker = new Worker(settings, join(dir, `publisher-${index}.log`));
        all.push(worker);
        publishers.push(worker);
        await abortable(worker.waitFor(isType('ready'), READY_TIMEOUT_MS, 'ready'));
      }),
    );
    const setupSeconds = (Date.now() - started) / 1000;
    log(`workers ready after ${((Date.now() - setupStarted) / 1000).toFixed(1)} s; publishing`);

    // ----------------------------------------------------------------------------- publishing phase
    poller = setInterval(poll, 250);
    const t0 = Date.now();
    const elapsed = (): number => (Date.now() - t0) / 1000;
    for (const publisher of publishers) publisher.send({ type: 'go' });
    let publishing = true;
    const killConsumerMidHandler = async (index: number): Promise<string> => {
      const victim = consumers[index];
      if (victim === undefined || !victim.alive) return `consumer #${index} not running; nothing killed`;
      victim.send({ type: 'arm-kill' });
      let held: string | undefined;
      try {
        held = (await abortable(victim.waitFor(isType('holding'), 15_000, 'handler to hold'))).id;
      } catch (error) {
        if (error instanceof Aborted) throw error;
        log(`  ${victim.name}: ${error instanceof Error ? error.message : String(error)}; killing it anyway`);
      }
      victim.kill('SIGKILL');
      await victim.exited;
      log(`  ${victim.name} killed${held ? ` inside the handler of ${held}` : ' (no handler running)'}`);
      const replacement = await spawnConsumer(index);
      log(`  replacement ${replacement.name} consuming`);
      return held
        ? `SIGKILL ${victim.name} inside the handler of ${held}; replaced by ${replacement.name}`
        : `SIGKILL ${victim.name} (idle: no delivery within 15 s); replaced by ${replacement.name}`;
    };
    nemesis = runNemesis(
      nemesisPrng,
      // The printed plan's options: with Sentinels, `mixed` draws sentinel-failover, not redis-promote.
      { ...planOptions, ...(options.maxFaults === undefined ? {} : { maxFaults: options.maxFaults }) },
      { cluster: services, killConsumerMidHandler, log, elapsed, sleep },
      () => publishing && !signal?.aborted,
    );
    // A failing fault step ends the publishing phase at once.
    let nemesisFailed = false;
    nemesis.catch(() => {
      nemesisFailed = true;
    });
    let lastReport = 0;
    while (publishers.some((p) => p.alive) && elapsed() < options.duration && !nemesisFailed) {
      await sleep(200);
      if (elapsed() - lastReport >= 5) {
        lastReport = elapsed();
        log(
          `${elapsed().toFixed(0)}s: attempted ${tally.attempted.size}, confirmed ${tally.confirmed.size}, ` +
            `completed ${tally.completions.size}`,
        );
      }
    }
    publishing = false;
    for (const publisher of publishers) {
      if (publisher.alive) {
        log(`${publisher.name} still publishing at the end of the phase; stopped`);
        publisher.kill('SIGKILL');
      } else if (publisher.exit?.code !== 0) {
        throw new Error(
          `${publisher.name} failed (${publisher.exit?.code ?? publisher.exit?.signal}); see ${publisher.logFile}`,
        );
      }
    }
    await Promise.all(publishers.map((p) => p.exited));
    const publishingSeconds = elapsed();
    poll();
    log(`publishing over at ${publishingSeconds.toFixed(1)}s; waiting for the nemesis to heal`);
    const faultsInjected = await nemesis;
    await cluster.heal();

    // ----------------------------------------------------------------------------- drain phase
    const drainStart = Date.now();
    const drainDeadline = drainStart + (options.drainTimeout ?? 90) * 1000;
    const settleMs = (options.settle ?? 3) * 1000;
    let lastCount = -1;
    let quietSince = Date.now();
    let drained = false;
    let lastDrainReport = Date.now();
    while (Date.now() < drainDeadline) {
      poll();
      if (tally.totalCompletions !== lastCount) {
        lastCount = tally.totalCompletions;
        quietSince = Date.now();
      }
      if (tally.pending() === 0 && Date.now() - quietSince >= settleMs) {
        drained = true;
        break;
      }
      if (Date.now() - lastDrainReport >= 5000) {
        lastDrainReport = Date.now();
        log(`draining: ${tally.pending()} confirmed message(s) not completed yet`);
      }
      await sleep(250);
    }
    const drainSeconds = (Date.now() - drainStart) / 1000;
    log(
      drained
        ? `drained in ${drainSeconds.toFixed(1)}s`
        : `drain deadline reached with ${tally.pending()} pending`,
    );
    shuttingDown = true;
    await Promise.all(consumers.map((c) => c.stop(8000)));
    poll();

    const verdict = judge(tally);
    let firstAttempt = Infinity;
    for (const at of tally.attempted.values()) firstAttempt = Math.min(firstAttempt, at);
    let lastConfirm = -Infinity;
    for (const at of tally.confirmedAt.values()) lastConfirm = Math.max(lastConfirm, at);
    let lastFirstCompletion = -Infinity;
    for (const list of tally.completions.values()) {
      lastFirstCompletion = Math.max(lastFirstCompletion, Math.min(...list.map((d) => d.at)));
    }
    const rate = (count: number, until: number): number =>
      count === 0 || !Number.isFinite(until - firstAttempt)
        ? 0
        : round1(count / Math.max(0.001, (until - firstAttempt) / 1000));
    ok = verdict.lost === 0 && verdict.duplicated === 0 && verdict.unexpected === 0 && crashes.length === 0;
    return {
      ...verdict,
      seed: options.seed,
      settings: {
        messages: options.messages,
        duration: options.duration,
        publishers: options.publishers,
        consumers: options.consumers,
        faults: faultsLabel,
        prefetch: system.prefetch,
        concurrency: system.concurrency,
        servers: services.servers,
        queue,
      },
      faultsInjected,
      crashes,
      publishRate: rate(verdict.confirmed, lastConfirm),
      consumeRate: rate(verdict.delivered, lastFirstCompletion),
      drained,
      seconds: {
        setup: round1(setupSeconds),
        publishing: round1(publishingSeconds),
        drain: round1(drainSeconds),
        total: round1((Date.now() - started) / 1000),
      },
      runDir: options.keepDir || !ok ? dir : undefined,
      ok,
    };
  } finally {
    shuttingDown = true;
    if (poller) clearInterval(poller);
    // A fault in progress is taken to its end first (e.g. a broker restart), so nothing comes up after the stop.
    if (nemesis) await nemesis.catch((error: unknown) => log(`nemesis: ${String(error)}`));
    for (const worker of all) worker.kill('SIGKILL');
    await Promise.all(all.map((w) => w.exited));
    // Aborted while the services were starting: wait for them, to stop them.
    if (cluster === undefined && starting !== undefined) cluster = await starting.catch(() => undefined);
    if (cluster !== undefined) {
      const servers = cluster.servers;
      try {
        if (!owned || options.keepServices) await cluster.heal();
        await deleteQueue(servers, queue);
      } catch (error) {
        log(`cleanup: ${error instanceof Error ? error.message : String(error)}`);
      }
      if (owned && !options.keepServices) {
        await cluster
          .stop({ kill: options.killServicesAtEnd ?? false })
          .catch((error: unknown) => log(String(error)));
      }
    }
    if (ok && !options.keepDir) rmSync(dir, { recursive: true, force: true });
    else log(`run directory kept: ${dir}`);
  }
}

/** Removes the run's queue and exchange from every broker (best effort, bounded). */
async function deleteQueue(servers: readonly string[], queue: string): Promise<void> {
  await Promise.all(
    servers.map(async (server) => {
      const connection = await amqp.connect(`amqp://guest:guest@${server}`, { timeout: 3000 });
      try {
        const channel = await connection.createChannel();
        await channel.deleteQueue(queue);
        await channel.deleteExchange(queue);
        await channel.close();
      } finally {
        await connection.close();
      }
    }),
  );
}
