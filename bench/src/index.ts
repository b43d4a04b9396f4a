// Over 400 lines: the runner and the e2e benchmark's rounds, with the report printed figure by figure next to
// its targets; e2e() is the part to move into its own file when this grows.
/**
 * The benchmark runner: `pnpm bench [--json] [--messages N] [--rounds R] [--only e2e,publish,redis,outage]
 * [--outage-seconds S] [--outage-mode stop-broker|dead-port]`; for investigations also [--requeue-delay S]
 * [--prefetch N] [--concurrency N] (Beetle subscriber settings of the e2e benchmark).
 *
 * Measures on the same brokers (`BEETLE_SERVERS`, default 127.0.0.1:5672,127.0.0.1:5673) and Redis
 * (`BEETLE_REDIS_SERVER`, default 127.0.0.1:6379, db 5 flushed first):
 * - e2e: raw amqplib doing the broker work of redundant messages (the ceiling) vs Beetle redundant end to end
 *   (publish, consume both copies, dedup in Redis, ack), alternating, median of R rounds;
 * - publish: `publish.ts` (Beetle vs raw publish throughput with confirms), run as a child process;
 * - redis: Redis round trips and commands per redundant message;
 * - outage: peak RSS of a publisher process while one broker is down.
 * Every Beetle figure is printed next to its target. See bench/README.md.
 */
import { spawn } from 'node:child_process';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { beetleE2e } from './beetle-e2e.js';
import {
  BENCH_REDIS_DB,
  bounded,
  median,
  redisServer,
  round,
  servers,
  sleep,
  type BenchOptions,
} from './common.js';
import type { E2eHarness, E2eRun } from './e2e-harness.js';
import { outage, type OutageMode, type OutageResult } from './outage.js';
import { rawE2e } from './raw-e2e.js';
import { redisRoundTrips, type RoundTripResult } from './redis-round-trips.js';

const BENCHMARKS = ['e2e', 'publish', 'redis', 'outage'] as const;
type BenchName = (typeof BENCHMARKS)[number];

const TARGETS = {
  e2eRatio: 0.7,
  publishRatio: 0.8,
  roundTrips: 5,
} as const;

const { values } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    messages: { type: 'string', default: '10000' },
    rounds: { type: 'string', default: '5' },
    only: { type: 'string' },
    'outage-seconds': { type: 'string', default: '60' },
    'outage-mode': { type: 'string', default: 'stop-broker' },
    /** Investigation only: the subscriber's rejectRequeueDelay in the e2e benchmark (default Beetle's 1 s). */
    'requeue-delay': { type: 'string' },
    /** Investigation only: the Beetle subscriber's prefetchCount / subscriberConcurrency in the e2e benchmark. */
    prefetch: { type: 'string' },
    concurrency: { type: 'string' },
  },
});

function positive(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name} must be a positive integer, got ${value}`);
  return n;
}

const selected = new Set<BenchName>(
  values.only === undefined
    ? BENCHMARKS
    : values.only.split(',').map((name) => {
        const trimmed = name.trim();
        if (!(BENCHMARKS as readonly string[]).includes(trimmed)) {
          throw new Error(`--only: unknown benchmark ${trimmed} (known: ${BENCHMARKS.join(', ')})`);
        }
        return trimmed as BenchName;
      }),
);
const outageMode = values['outage-mode'];
if (outageMode !== 'stop-broker' && outageMode !== 'dead-port') {
  throw new Error(`--outage-mode must be stop-broker or dead-port, got ${outageMode}`);
}
const options: BenchOptions = {
  messages: positive('messages', values.messages),
  rounds: positive('rounds', values.rounds),
  outageSeconds: positive('outage-seconds', values['outage-seconds']),
  log: (line) => process.stderr.write(`${line}\n`),
};
const out = (line: string): void => {
  if (!values.json) process.stdout.write(`${line}\n`);
};
const verdict = (ok: boolean): string => (ok ? 'MET' : 'MISSED');

interface E2eResult {
  readonly messages: number;
  readonly rounds: number;
  readonly raw: E2eRun & { readonly settings: string };
  readonly beetle: E2eRun & { readonly settings: string; readonly outcomes: Record<string, number> };
  readonly ratio: number;
  readonly perRound: { raw: number; beetle: number; ratio: number }[];
  readonly paced: {
    rate: number;
    messages: number;
    raw: { p50: number; p99: number };
    beetle: { p50: number; p99: number; requeues: number };
  };
  /** Both sides offered fractions of raw's flood rate, open loop: did they keep up, at what latency. */
  readonly offered: OfferedStep[];
}

interface OfferedStep {
  readonly fraction: number;
  readonly rate: number;
  readonly raw: OfferedResult;
  readonly beetle: OfferedResult;
}

interface OfferedResult {
  readonly achieved: number;
  readonly p50: number;
  readonly p99: number;
  readonly keptUp: boolean;
  /** CPU per message, microseconds: client process, RabbitMQ nodes, Redis servers. */
  readonly cpuUs: number;
  readonly brokerCpuUs: number;
  readonly redisCpuUs: number;
}

/** Fractions of raw's flood rate offered to both sides in the offered-load step. */
const OFFERED_FRACTIONS = [0.6, 0.7, 0.8] as const;
/** Seconds per offered-load run. */
const OFFERED_SECONDS = 6;
/**
 * A side kept up with an offered rate when it handled 97 % of it and its p99 latency (publish -> handler) stayed
 * below this many ms: no backlog built up.
 */
const KEPT_UP_P99_MS = 250;

const offeredResult = (run: E2eRun, rate: number): OfferedResult => ({
  achieved: run.rate,
  p50: run.p50,
  p99: run.p99,
  keptUp: run.rate >= 0.97 * rate && run.p99 < KEPT_UP_P99_MS,
  cpuUs: run.cpuUs,
  brokerCpuUs: run.brokerCpuUs,
  redisCpuUs: run.redisCpuUs,
});

const medianRun = (runs: readonly E2eRun[]): E2eRun => ({
  rate: round(median(runs.map((r) => r.rate))),
  seconds: round(median(runs.map((r) => r.seconds)), 2),
  p50: round(median(runs.map((r) => r.p50)), 1),
  p99: round(median(runs.map((r) => r.p99)), 1),
  handlerRuns: Math.max(...runs.map((r) => r.handlerRuns)),
  requeues: Math.max(...runs.map((r) => r.requeues)),
  cpuUs: round(median(runs.map((r) => r.cpuUs)), 1),
  brokerCpuUs: round(median(runs.map((r) => r.brokerCpuUs)), 1),
  redisCpuUs: round(median(runs.map((r) => r.redisCpuUs)), 1),
  machineBusy: round(median(runs.map((r) => r.machineBusy))),
  loopDelayP50: round(median(runs.map((r) => r.loopDelayP50)), 1),
  loopDelayP99: round(median(runs.map((r) => r.loopDelayP99)), 1),
  ...(runs[0]?.processingP50 === undefined
    ? {}
    : {
        processingP50: round(median(runs.map((r) => r.processingP50 ?? 0)), 1),
        processingP99: round(median(runs.map((r) => r.processingP99 ?? 0)), 1),
      }),
});

/** Pause between two measured e2e runs (ms). */
const SETTLE_MS = 2000;

async function e2e(): Promise<E2eResult> {
  const raw: E2eHarness = await rawE2e(servers);
  const requeueDelay = values['requeue-delay'];
  const beetle = await beetleE2e({
    servers,
    redisServer,
    rejectRequeueDelay: requeueDelay === undefined ? undefined : Number(requeueDelay),
    prefetch: values.prefetch === undefined ? undefined : positive('prefetch', values.prefetch),
    concurrency: values.concurrency === undefined ? undefined : positive('concurrency', values.concurrency),
  });
  try {
    const warm = Math.min(2000, options.messages);
    options.log(`  warm-up: ${warm} messages each`);
    await raw.run(warm);
    await beetle.run(warm);
    const rawRuns: E2eRun[] = [];
    const beetleRuns: E2eRun[] = [];
    const outcomes = new Map<string, number>();
    for (let r = 0; r < options.rounds; r++) {
      // The order alternates (raw first in even rounds, Beetle first in odd ones): a run leaves work behind on
      // the brokers (persisted messages to clean up, queue processes to hibernate) that slows the next one,
      // and with a fixed order one side would always pay for the other. A pause lets that work finish.
      if (r % 2 === 0) {
        rawRuns.push(await raw.run(options.messages));
        await sleep(SETTLE_MS);
        beetleRuns.push(await beetle.run(options.messages));
      } else {
        beetleRuns.push(await beetle.run(options.messages));
        await sleep(SETTLE_MS);
        rawRuns.push(await raw.run(options.messages));
      }
      await sleep(SETTLE_MS);
      for (const [outcome, n] of beetle.outcomes) outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + n);
      const b = beetleRuns.at(-1)!;
      const a = rawRuns.at(-1)!;
      options.log(
        `  round ${r + 1}: raw ${a.rate} msgs/s (p50 ${a.p50} ms, p99 ${a.p99} ms, ${a.cpuUs} us CPU/msg (brokers ${a.brokerCpuUs}, Redis ${a.redisCpuUs}), ` +
          `machine ${a.machineBusy}% busy, loop delay p50 ${a.loopDelayP50} ms), ` +
          `Beetle ${b.rate} msgs/s (p50 ${b.p50} ms, p99 ${b.p99} ms, ${b.cpuUs} us CPU/msg (brokers ${b.brokerCpuUs}, Redis ${b.redisCpuUs}), ` +
          `per delivery p50 ${b.processingP50} ms p99 ${b.processingP99} ms, machine ${b.machineBusy}% busy, ` +
          `loop delay p50 ${b.loopDelayP50} ms p99 ${b.loopDelayP99} ms, ` +
          `handler runs ${b.handlerRuns}, requeues ${b.requeues})`,
      );
      if (b.handlerRuns !== options.messages) {
        throw new Error(`Beetle ran the handler ${b.handlerRuns} times for ${options.messages} messages`);
      }
    }
    const rawMedian = medianRun(rawRuns);
    const beetleMedian = medianRun(beetleRuns);
    // Latency below saturation: both sides offered half of Beetle's throughput, open loop, for ~10 s.
    const rate = Math.max(10, Math.round(beetleMedian.rate / 2));
    const pacedCount = Math.min(options.messages, rate * 10);
    options.log(`  paced: ${pacedCount} messages at ${rate} msgs/s each`);
    const rawPaced = await raw.run(pacedCount, rate);
    const beetlePaced = await beetle.run(pacedCount, rate);
    // Offered load: the flood rounds above measure how fast a backlog is worked off; these runs ask whether
    // a side keeps up with a given rate without building one (both offered the same fractions of raw's rate).
    const offered: OfferedStep[] = [];
    for (const [i, fraction] of OFFERED_FRACTIONS.entries()) {
      const offeredRate = Math.max(10, Math.round(rawMedian.rate * fraction));
      const count = offeredRate * OFFERED_SECONDS;
      await sleep(SETTLE_MS);
      const first = i % 2 === 0 ? raw : beetle;
      const second = first === raw ? beetle : raw;
      const firstRun = await first.run(count, offeredRate);
      await sleep(SETTLE_MS);
      const secondRun = await second.run(count, offeredRate);
      const [rawRun, beetleRun] = first === raw ? [firstRun, secondRun] : [secondRun, firstRun];
      const step: OfferedStep = {
        fraction,
        rate: offeredRate,
        raw: offeredResult(rawRun, offeredRate),
        beetle: offeredResult(beetleRun, offeredRate),
      };
      offered.push(step);
      options.log(
        `  offered ${offeredRate} msgs/s (${fraction} of raw): raw ${rawRun.rate} msgs/s p99 ${rawRun.p99} ms, ` +
          `Beetle ${beetleRun.rate} msgs/s p99 ${beetleRun.p99} ms`,
      );
    }
    return {
      offered,
      messages: options.messages,
      rounds: options.rounds,
      raw: { ...rawMedian, settings: raw.settings },
      beetle: { ...beetleMedian, settings: beetle.settings, outcomes: Object.fromEntries(outcomes) },
      ratio: round(beetleMedian.rate / rawMedian.rate, 3),
      paced: {
        rate,
        messages: pacedCount,
        raw: { p50: rawPaced.p50, p99: rawPaced.p99 },
        beetle: { p50: beetlePaced.p50, p99: beetlePaced.p99, requeues: beetlePaced.requeues },
      },
      perRound: rawRuns.map((a, i) => ({
        raw: a.rate,
        beetle: beetleRuns[i]!.rate,
        ratio: round(beetleRuns[i]!.rate / a.rate, 3),
      })),
    };
  } finally {
    await beetle.close();
    await raw.close();
  }
}

interface PublishModeResult {
  beetle: number;
  raw: number;
  ratio: number;
  beetleCpuUs: number;
  rawCpuUs: number;
  rounds: number[];
}
interface PublishResult {
  messages: number;
  window: number;
  rounds: number;
  servers: string[];
  results: Record<'non-redundant' | 'redundant', PublishModeResult>;
}

/** Runs `publish.ts --json` in a child process (it is a script of its own) and returns its JSON line. */
async function publish(): Promise<PublishResult> {
  const script = fileURLToPath(new URL('./publish.ts', import.meta.url));
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const args = [
    '--import',
    'tsx',
    script,
    '--json',
    '--messages',
    String(options.messages),
    '--rounds',
    String(options.rounds),
  ];
  const child = spawn(process.execPath, args, {
    cwd: root,
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, BEETLE_TEST_SERVERS: servers.join(',') },
  });
  let stdout = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  if (code !== 0) throw new Error(`publish.ts exited with ${String(code)}`);
  const line = stdout.trim().split('\n').at(-1) ?? '';
  return JSON.parse(line) as PublishResult;
}

async function main(): Promise<void> {
  const started = Date.now();
  const header = {
    servers,
    redis: `${redisServer} db ${BENCH_REDIS_DB}`,
    node: process.version,
    cpus: cpus().length,
    messages: options.messages,
    rounds: options.rounds,
  };
  out(
    `Beetle benchmarks: brokers ${servers.join(', ')}; Redis ${header.redis}; node ${header.node}; ` +
      `${header.cpus} CPUs; ${options.messages} messages x ${options.rounds} rounds (median)`,
  );
  const results: {
    e2e?: E2eResult;
    publish?: PublishResult;
    redis?: RoundTripResult;
    outage?: OutageResult;
  } = {};
  const failures: string[] = [];
  const step = async <T>(name: BenchName, limitMs: number, fn: () => Promise<T>): Promise<T | undefined> => {
    if (!selected.has(name)) return undefined;
    options.log(`[${name}]`);
    try {
      return await bounded(name, limitMs, fn);
    } catch (error) {
      failures.push(`${name}: ${error instanceof Error ? error.message : String(error)}`);
      options.log(
        `  ${name} failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
      );
      return undefined;
    }
  };

  results.e2e = await step('e2e', 900_000, e2e);
  if (results.e2e) {
    const { raw, beetle, ratio } = results.e2e;
    out('');
    out('End to end, redundant (publish 2 copies with confirms, consume both, ack):');
    out(`  settings: ${beetle.settings}`);
    out(`  raw ceiling: ${raw.settings}`);
    out(
      `  raw amqplib   ${raw.rate} msgs/s   latency p50 ${raw.p50} ms  p99 ${raw.p99} ms   client CPU ${raw.cpuUs} us/msg`,
    );
    out(
      `  Beetle        ${beetle.rate} msgs/s   latency p50 ${beetle.p50} ms  p99 ${beetle.p99} ms   ` +
        `client CPU ${beetle.cpuUs} us/msg`,
    );
    out(
      `  Beetle time per delivery in the subscriber (slot taken -> settled): p50 ${beetle.processingP50} ms, ` +
        `p99 ${beetle.processingP99} ms`,
    );
    const total = (run: E2eRun): number => round(run.cpuUs + run.brokerCpuUs + run.redisCpuUs);
    out(
      `  CPU per message (us): raw client ${raw.cpuUs} + brokers ${raw.brokerCpuUs} + Redis ${raw.redisCpuUs} = ` +
        `${total(raw)}; Beetle client ${beetle.cpuUs} + brokers ${beetle.brokerCpuUs} + Redis ${beetle.redisCpuUs} = ` +
        `${total(beetle)}`,
    );
    out(
      `  machine CPU busy (all processes): raw ${raw.machineBusy}%, Beetle ${beetle.machineBusy}%; ` +
        `event loop delay p50/p99: raw ${raw.loopDelayP50}/${raw.loopDelayP99} ms, ` +
        `Beetle ${beetle.loopDelayP50}/${beetle.loopDelayP99} ms`,
    );
    out(
      `  (latency at saturation, backlog included: publish -> handler completion, first copy; Beetle outcomes over all rounds ` +
        `${JSON.stringify(beetle.outcomes)}, requeues/round max ${beetle.requeues})`,
    );
    const { paced } = results.e2e;
    out(
      `  below saturation (open loop, ${paced.rate} msgs/s, ${paced.messages} messages): latency p50/p99 ` +
        `raw ${paced.raw.p50}/${paced.raw.p99} ms, Beetle ${paced.beetle.p50}/${paced.beetle.p99} ms ` +
        `(Beetle requeues ${paced.beetle.requeues})`,
    );
    const keptUp = (r: OfferedResult): string =>
      `${r.achieved} msgs/s p50 ${r.p50} ms p99 ${r.p99} ms ${r.keptUp ? 'kept up' : 'fell behind'} ` +
      `(CPU/msg client ${r.cpuUs} brokers ${r.brokerCpuUs} Redis ${r.redisCpuUs} us)`;
    out(
      `  offered load (open loop, ${OFFERED_SECONDS} s each; kept up = 97 % handled and p99 < ${KEPT_UP_P99_MS} ms):`,
    );
    for (const step of results.e2e.offered) {
      out(
        `    ${step.rate} msgs/s (${step.fraction} of raw's flood rate): raw ${keptUp(step.raw)}; ` +
          `Beetle ${keptUp(step.beetle)}`,
      );
    }
    out(
      `  ratio ${ratio} of raw  (target >= ${TARGETS.e2eRatio}: ${verdict(ratio >= TARGETS.e2eRatio)}); ` +
        `per round ${results.e2e.perRound.map((r) => r.ratio).join(', ')}`,
    );
  }

  results.publish = await step('publish', 900_000, publish);
  if (results.publish) {
    out('');
    out(
      `Publish throughput with confirms (publish.ts, window ${results.publish.window}, best of ${results.publish.rounds}):`,
    );
    for (const mode of ['non-redundant', 'redundant'] as const) {
      const r = results.publish.results[mode];
      out(
        `  ${mode.padEnd(14)} Beetle ${r.beetle} msgs/s   raw ${r.raw} msgs/s   ratio ${r.ratio} ` +
          `(target >= ${TARGETS.publishRatio}: ${verdict(r.ratio >= TARGETS.publishRatio)}); ` +
          `CPU/msg Beetle ${r.beetleCpuUs} us, raw ${r.rawCpuUs} us`,
      );
    }
  }

  results.redis = await step('redis', 600_000, () => redisRoundTrips(servers, redisServer, options));
  if (results.redis) {
    const r = results.redis;
    out('');
    out(
      `Redis per redundant message (both copies; ${r.messages} messages on ${r.private ? 'a private' : 'the shared'} Redis ${r.redis}):`,
    );
    out(
      `  round trips (store calls, each waits for one reply) ${r.roundTrips}; happy path ${r.happyPathRoundTrips} ` +
        `(target <= ${TARGETS.roundTrips}, Ruby 8: ${verdict(r.happyPathRoundTrips <= TARGETS.roundTrips)}; ` +
        `+1 claim per copy requeued while its twin ran: ${r.requeuedPerMessage} per message)  ` +
        `${JSON.stringify(r.storeCalls)}`,
    );
    out(
      r.commandsSent === undefined
        ? '  commands sent n/a (MONITOR needs a private Redis)'
        : `  commands sent      ${r.commandsSent} (the calls of one tick share one command per step)  ${JSON.stringify(r.clientCommands)}`,
    );
    out(
      `  commands executed  ${r.commandsExecuted} (incl. inside Lua scripts)  ${JSON.stringify(r.executedCommands)}`,
    );
    out(
      `  Redis server CPU ${r.serverCpuUs} us per message${r.private ? '' : ' (shared server: includes other clients)'}; ` +
        `outcomes of the last run ${JSON.stringify(r.outcomes)}`,
    );
  }

  results.outage = await step('outage', (options.outageSeconds + 400) * 1000, () =>
    outage(servers, options, outageMode as OutageMode),
  );
  if (results.outage) {
    const o = results.outage;
    out('');
    out(
      `Publisher process RSS while ${o.servers[1]} is down (${o.mode}, ${o.outageSeconds} s outage, redundant publishes, ` +
        `${o.outageRate} publishes/s during the outage):`,
    );
    out(
      `  start ${o.startMb} MB, steady ${o.steadyMb} MB, peak ${o.peakMb} MB, end ${o.endMb} MB; ` +
        `${o.verdict} (target flat: ${verdict(o.bounded)})`,
    );
  }

  out('');
  out(`done in ${Math.round((Date.now() - started) / 1000)} s`);
  if (failures.length > 0) {
    out(`FAILED: ${failures.join('; ')}`);
    process.exitCode = 1;
  }
  if (values.json) {
    process.stdout.write(
      `${JSON.stringify({ ...header, targets: TARGETS, results, failures, seconds: (Date.now() - started) / 1000 })}\n`,
    );
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
