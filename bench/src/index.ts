/**
 * The benchmark runner: `pnpm bench [--quick] [--json] [--messages N] [--rounds R]
 * [--only e2e,backlog,defaults,scale,publish,redis,outage] [--outage-seconds S] [--outage-mode stop-broker|dead-port]`.
 *
 * Measures on the same brokers (`BEETLE_SERVERS`, default 127.0.0.1:5672,127.0.0.1:5673; a third for the scale
 * step from `BEETLE_BENCH_THIRD_SERVER`, default 127.0.0.1:5674) and Redis (`BEETLE_REDIS_SERVER`, default
 * 127.0.0.1:6379, db 5 flushed first):
 * - e2e, backlog, defaults, scale (`steps.ts`): publisher and consumers in processes of their own, raw amqplib
 *   (the ceiling) vs Beetle, alternating, median of R rounds;
 * - publish: `publish.ts` (Beetle vs raw publish throughput with confirms), run as a child process;
 * - redis: Redis round trips and commands per redundant message;
 * - outage: peak RSS of a publisher process while one broker is down.
 * Every Beetle figure is printed next to its target. See bench/README.md.
 */
import { spawn } from 'node:child_process';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { BENCH_REDIS_DB, bounded, rawBroker, redisServer, servers, type BenchOptions } from './common.js';
import { outage, type OutageMode, type OutageResult } from './outage.js';
import { redisRoundTrips, type RoundTripResult } from './redis-round-trips.js';
import {
  DEPLOYMENT_TARGETS,
  backlogStep,
  defaultsStep,
  e2eStep,
  reportBacklog,
  reportDefaults,
  reportE2e,
  reportScale,
  scaleStep,
  verdict,
  type Comparison,
  type DefaultsResult,
  type E2eResult,
  type ScaleFigure,
  type StepContext,
} from './steps.js';

const BENCHMARKS = ['e2e', 'backlog', 'defaults', 'scale', 'publish', 'redis', 'outage'] as const;
type BenchName = (typeof BENCHMARKS)[number];

const TARGETS = {
  ...DEPLOYMENT_TARGETS,
  publishRatio: 0.8,
  roundTrips: 5,
} as const;

const { values } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    /** A shorter run (3000 messages, 3 rounds, no offered-load runs, 20 s outage) to try things out. */
    quick: { type: 'boolean', default: false },
    messages: { type: 'string' },
    rounds: { type: 'string' },
    only: { type: 'string' },
    'outage-seconds': { type: 'string' },
    'outage-mode': { type: 'string', default: 'stop-broker' },
  },
});

const thirdServer = process.env.BEETLE_BENCH_THIRD_SERVER ?? '127.0.0.1:5674';

/** The third broker of the scale step, if it answers. */
async function thirdBroker(): Promise<string | undefined> {
  if (servers.length >= 3) return servers[2];
  try {
    const broker = await rawBroker(thirdServer);
    await broker.connection.close();
    return thirdServer;
  } catch {
    options.log(`  no broker at ${thirdServer}: the scale step measures without a third broker`);
    return undefined;
  }
}

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
  messages: positive('messages', values.messages ?? (values.quick ? '3000' : '10000')),
  rounds: positive('rounds', values.rounds ?? (values.quick ? '3' : '5')),
  outageSeconds: positive('outage-seconds', values['outage-seconds'] ?? (values.quick ? '20' : '60')),
  log: (line) => process.stderr.write(`${line}\n`),
};
const out = (line: string): void => {
  if (!values.json) process.stdout.write(`${line}\n`);
};

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
    backlog?: Comparison;
    defaults?: DefaultsResult;
    scale?: ScaleFigure[];
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

  const ctx: StepContext = { servers, redisServer, options, quick: values.quick };
  results.e2e = await step('e2e', 900_000, () => e2eStep(ctx));
  if (results.e2e) reportE2e(out, results.e2e);
  results.backlog = await step('backlog', 900_000, () => backlogStep(ctx));
  if (results.backlog) reportBacklog(out, results.backlog, options.messages);
  results.defaults = await step('defaults', 600_000, () => defaultsStep(ctx));
  if (results.defaults) reportDefaults(out, results.defaults, options.messages);
  const third = selected.has('scale') ? await thirdBroker() : undefined;
  results.scale = await step('scale', 900_000, () => scaleStep(ctx, third));
  if (results.scale) reportScale(out, results.scale, third !== undefined);

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

main()
  .catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    // A failed step can leave a handle behind (seen once after a worker crash: the run hung after its last
    // line). Say which, and end anyway.
    setTimeout(() => {
      process.stderr.write(`still open after the run: ${process.getActiveResourcesInfo().join(', ')}\n`);
      process.exit();
    }, 5000).unref();
  });
