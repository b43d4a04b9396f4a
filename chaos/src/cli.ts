/**
 * `pnpm chaos [--messages M] [--duration S] [--seed N] [--publishers P] [--consumers C]
 *             [--faults kill-broker,n-1-down,redis-stop,redis-promote,consumer-kill,broker-pause,
 *                       sentinel-failover,mixed|none]
 *             [--max-faults K] [--drain S] [--base-port PORT] [--concurrency N|default] [--prefetch N|default]
 *             [--status-key-expiry S]
 *             [--completed-status-ttl S]
 *             [--redis file|sentinel]
 *             [--keep] [--keep-services] [--json]`
 *
 * Exit status: 0 when nothing was lost, duplicated or unexpected; 1 otherwise; 2 when the run itself failed.
 */
import { parseArgs } from 'node:util';
import { portsFrom } from './cluster.js';
import { runChaos, type ChaosResult } from './harness.js';
import { ALL_FAULTS, isFault, type FaultKind, type RedisMode } from './nemesis.js';
import { randomSeed } from './prng.js';

const USAGE = `usage: pnpm chaos [--messages 1000] [--duration 60] [--seed N] [--publishers 1] [--consumers 2]
                  [--faults ${ALL_FAULTS.join(',')},mixed|none] [--max-faults K] [--drain 90]
                  [--base-port 5690] [--concurrency 1|default] [--prefetch 5|default] [--status-key-expiry 0]
                  [--completed-status-ttl 600]
                  [--redis file|sentinel] [--keep] [--keep-services] [--json]`;

function fail(message: string): never {
  process.stderr.write(`${message}\n${USAGE}\n`);
  process.exit(2);
}

function number(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) fail(`--${name}: not a non-negative number: ${value}`);
  return n;
}

/** A positive integer, or `default` (the library's default). */
function countOrDefault(name: string, value: string | undefined, fallback: number): number | 'default' {
  if (value === 'default') return 'default';
  const n = Math.floor(number(name, value, fallback));
  if (n < 1) fail(`--${name}: must be at least 1 or "default": ${value}`);
  return n;
}

function parseFaults(value: string): FaultKind[] | 'mixed' {
  if (value === 'mixed') return 'mixed';
  if (value === 'none' || value === '') return [];
  const faults = value.split(',').map((f) => f.trim());
  for (const fault of faults) if (!isFault(fault)) fail(`--faults: unknown fault ${fault}`);
  return faults as FaultKind[];
}

function redisOption(value: string): RedisMode {
  if (value !== 'file' && value !== 'sentinel') fail(`--redis: file or sentinel, got ${value}`);
  return value;
}

export function formatResult(result: ChaosResult): string {
  const s = result.settings;
  const lines = [
    `chaos seed=${result.seed} messages=${s.messages} duration=${s.duration}s publishers=${s.publishers} ` +
      `consumers=${s.consumers} faults=${s.faults} prefetch=${s.prefetch} concurrency=${s.concurrency}`,
    `brokers ${s.servers.join(', ')}; queue ${s.queue}`,
    `fault schedule (${result.faultsInjected.length}):`,
    ...result.faultsInjected.map(
      (f) => `  #${f.n + 1} ${f.startedAt}s-${f.endedAt}s ${f.kind}: ${f.description}`,
    ),
    `published:   attempted ${result.attempted}, confirmed ${result.confirmed} (partial: ${result.partial} confirmed by one broker only), ` +
      `unconfirmed ${result.unconfirmed} (rejected/timed out), unsettled ${result.unsettled}`,
    `consumed:    ${result.delivered} distinct ids, ${result.completions} handler completions`,
    `lost:        ${result.lost}${result.lostIds.length > 0 ? `  e.g. ${result.lostIds.slice(0, 5).join(', ')}` : ''}`,
    `duplicated:  ${result.duplicated}${
      result.duplicatedIds.length > 0
        ? `  e.g. ${result.duplicatedIds
            .slice(0, 5)
            .map((d) => `${d.id} x${d.times} (pids ${d.pids.join('/')})`)
            .join(', ')}`
        : ''
    }`,
    `rerun after a kill: ${result.rerunAfterKill} (handler returned, consumer SIGKILLed before the store recorded it; at-least-once)`,
    `unexpected:  ${result.unexpected}${result.unexpectedIds.length > 0 ? `  e.g. ${result.unexpectedIds.slice(0, 5).join(', ')}` : ''}`,
    `indeterminate: ${result.indeterminate} (not confirmed, delivered anyway)`,
    `throughput:  publish ${result.publishRate} msgs/s, consume ${result.consumeRate} msgs/s`,
    `latency (publish -> handler completion): p50 ${result.latencyMs.p50} ms, p95 ${result.latencyMs.p95} ms, ` +
      `p99 ${result.latencyMs.p99} ms, max ${result.latencyMs.max} ms`,
    `phases:      setup ${result.seconds.setup}s, publishing ${result.seconds.publishing}s, drain ${result.seconds.drain}s` +
      `${result.drained ? '' : ' (deadline reached)'}, total ${result.seconds.total}s`,
    ...result.duplicatedIds
      .slice(0, 5)
      .flatMap((d) => [`history of duplicated ${d.id}:`, ...d.history.map((h) => `  ${h}`)]),
    ...Object.entries(result.lostHistory).flatMap(([id, history]) => [
      `history of lost ${id}:`,
      ...history.map((h) => `  ${h}`),
    ]),
    ...(result.crashes.length > 0 ? [`crashes:     ${result.crashes.join('; ')}`] : []),
    ...(result.runDir ? [`run directory: ${result.runDir}`] : []),
    `verdict:     ${result.ok ? 'OK' : 'FAILED'}`,
  ];
  return `${lines.join('\n')}\n`;
}

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        messages: { type: 'string' },
        duration: { type: 'string' },
        seed: { type: 'string' },
        publishers: { type: 'string' },
        consumers: { type: 'string' },
        faults: { type: 'string' },
        'max-faults': { type: 'string' },
        drain: { type: 'string' },
        'base-port': { type: 'string' },
        concurrency: { type: 'string' },
        prefetch: { type: 'string' },
        'status-key-expiry': { type: 'string' },
        'completed-status-ttl': { type: 'string' },
        redis: { type: 'string' },
        keep: { type: 'boolean', default: false },
        'keep-services': { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
      strict: true,
    });
  } catch (error) {
    fail(error instanceof Error ? error.message : String(error));
  }
  const v = parsed.values;
  if (v.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const controller = new AbortController();
  process.on('SIGINT', () => {
    if (controller.signal.aborted) {
      process.stderr.write(
        '[chaos] second SIGINT: exiting now; services may be left running (scripts/services.sh down)\n',
      );
      process.exit(130);
    }
    process.stderr.write('[chaos] SIGINT: stopping workers and services (again to force)\n');
    controller.abort();
  });
  process.on('SIGTERM', () => controller.abort());
  const seed = v.seed === undefined ? randomSeed() : Math.floor(number('seed', v.seed, 0));
  const maxFaults = v['max-faults'] === undefined ? undefined : number('max-faults', v['max-faults'], 0);
  try {
    const result = await runChaos({
      messages: Math.floor(number('messages', v.messages, 1000)),
      duration: number('duration', v.duration, 60),
      seed,
      publishers: Math.floor(number('publishers', v.publishers, 1)),
      consumers: Math.floor(number('consumers', v.consumers, 2)),
      faults: parseFaults(v.faults ?? 'mixed'),
      ...(maxFaults === undefined ? {} : { maxFaults }),
      drainTimeout: number('drain', v.drain, 90),
      ports: portsFrom(Math.floor(number('base-port', v['base-port'], 5690))),
      concurrency: countOrDefault('concurrency', v.concurrency, 1),
      prefetch: countOrDefault('prefetch', v.prefetch, 5),
      statusKeyExpiry: Math.floor(number('status-key-expiry', v['status-key-expiry'], 0)),
      completedStatusTtl: Math.floor(number('completed-status-ttl', v['completed-status-ttl'], 600)),
      ...(v.redis === undefined ? {} : { redis: redisOption(v.redis) }),
      keepDir: v.keep,
      keepServices: v['keep-services'],
      signal: controller.signal,
    });
    process.stdout.write(v.json ? `${JSON.stringify(result, null, 2)}\n` : formatResult(result));
    process.exitCode = result.ok ? 0 : 1;
  } catch (error) {
    if (controller.signal.aborted) {
      process.stderr.write(`[chaos] aborted (seed ${seed}); workers and services stopped\n`);
      process.exitCode = 130;
      return;
    }
    process.stderr.write(
      `[chaos] run failed (seed ${seed}): ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exitCode = 2;
  }
}

await main();
