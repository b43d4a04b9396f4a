/**
 * Redis traffic per redundant message, end to end (both copies, both brokers, the real Subscriber): runs the
 * Beetle end-to-end workload against a private Redis (so nobody else's commands are counted) and reads
 * - the subscriber's store calls: each waits for one Redis reply, so their number per message is the round
 *   trips a message costs;
 * - `INFO commandstats` deltas: every command executed, the ones run inside Lua scripts included;
 * - MONITOR: which commands clients sent (source != "lua"); the store sends the calls of one tick as one
 *   command per step, so there are far fewer commands than round trips.
 * Falls back to the configured Redis (commandstats only, possibly polluted by other clients) when no private
 * Redis can be started.
 */
import { Redis } from 'ioredis';
import { freePort, type ServiceHandle, startRedis } from '@beetle/test-services';
import { beetleE2e } from './beetle-e2e.js';
import { hostPort, round, sleep, type BenchOptions } from './common.js';

const ADMIN = /^(info|config|monitor|client|ping|hello|auth|select|flushdb|quit|script)/;

export interface RoundTripResult {
  readonly messages: number;
  readonly redis: string;
  readonly private: boolean;
  /** Store calls per redundant message (both copies together): the Redis round trips a message waits for. */
  readonly roundTrips: number;
  /**
   * `roundTrips` without the extra claim of each copy that was handed back (`HandlerNotYetTimedOut`: it
   * arrived while its twin's handler ran, and was requeued and claimed again): the happy path.
   */
  readonly happyPathRoundTrips: number;
  /** Copies handed back per message. */
  readonly requeuedPerMessage: number;
  /** Store calls per message, by method. */
  readonly storeCalls: Record<string, number>;
  /** Commands sent by clients per redundant message (MONITOR); undefined without a private Redis. */
  readonly commandsSent: number | undefined;
  /** Commands executed per redundant message, script-internal ones included (commandstats). */
  readonly commandsExecuted: number;
  readonly clientCommands: Record<string, number>;
  readonly executedCommands: Record<string, number>;
  readonly outcomes: Record<string, number>;
  /** Redis server CPU (used_cpu_user + used_cpu_sys) per redundant message, microseconds. */
  readonly serverCpuUs: number;
}

async function serverCpuSeconds(admin: Redis): Promise<number> {
  const info = await admin.info('cpu');
  const field = (name: string): number => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? 0);
  return field('used_cpu_user') + field('used_cpu_sys');
}

async function commandCalls(admin: Redis): Promise<Map<string, number>> {
  const info = await admin.info('commandstats');
  const calls = new Map<string, number>();
  for (const match of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls.set(match[1]!, Number(match[2]));
  return calls;
}

const perMessage = (counts: Map<string, number>, messages: number): Record<string, number> =>
  Object.fromEntries(
    [...counts]
      .filter(([name, n]) => !ADMIN.test(name) && n > 0)
      .sort((a, b) => b[1] - a[1])
      .map(([name, n]) => [name, round(n / messages, 2)]),
  );

const total = (counts: Record<string, number>): number =>
  round(
    Object.values(counts).reduce((a, b) => a + b, 0),
    2,
  );

export async function redisRoundTrips(
  servers: readonly string[],
  fallbackRedis: string,
  options: BenchOptions,
): Promise<RoundTripResult> {
  let handle: ServiceHandle | undefined;
  try {
    handle = await startRedis(await freePort());
  } catch (error) {
    options.log(`  could not start a private Redis (${String(error)}); counting on ${fallbackRedis}`);
  }
  const redis = handle?.address ?? fallbackRedis;
  const { host, port } = hostPort(redis);
  const admin = new Redis({ host, port, lazyConnect: true });
  await admin.connect();
  const messages = Math.min(options.messages, 2000);
  const harness = await beetleE2e({ servers, redisServer: redis, countStoreCalls: true });
  try {
    await harness.run(Math.min(500, messages)); // warm-up: connections, script loading
    await sleep(200);
    // 1. commandstats and server CPU, nothing else attached.
    const before = await commandCalls(admin);
    const cpuBefore = await serverCpuSeconds(admin);
    await harness.run(messages);
    await sleep(300);
    const cpuAfter = await serverCpuSeconds(admin);
    const after = await commandCalls(admin);
    const storeCalls = perMessage(harness.storeCalls, messages);
    const rejected = [...harness.outcomes]
      .filter(([outcome]) => outcome !== 'OK')
      .reduce((sum, [, n]) => sum + n, 0);
    // 2. The same workload again under MONITOR: what the clients sent (private Redis only).
    const client = new Map<string, number>();
    if (handle !== undefined) {
      const monitor = await admin.monitor();
      monitor.on('monitor', (_time: string, args: string[], source: string) => {
        const name = (args[0] ?? '').toLowerCase();
        if (source !== 'lua') client.set(name, (client.get(name) ?? 0) + 1);
      });
      await harness.run(messages);
      await sleep(300);
      monitor.disconnect();
    }
    const executed = new Map<string, number>();
    for (const [name, n] of after) executed.set(name, n - (before.get(name) ?? 0));
    const clientCommands = perMessage(client, messages);
    const executedCommands = perMessage(executed, messages);
    const roundTrips = total(storeCalls);
    return {
      messages,
      redis,
      private: handle !== undefined,
      roundTrips,
      happyPathRoundTrips: round(roundTrips - rejected / messages, 2),
      requeuedPerMessage: round(rejected / messages, 3),
      storeCalls,
      commandsSent: handle === undefined ? undefined : total(clientCommands),
      commandsExecuted: total(executedCommands),
      clientCommands,
      executedCommands,
      outcomes: Object.fromEntries(harness.outcomes),
      serverCpuUs: round(((cpuAfter - cpuBefore) * 1e6) / messages, 1),
    };
  } finally {
    await harness.close();
    admin.disconnect();
    await handle?.stop();
  }
}
