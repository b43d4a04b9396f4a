/**
 * Discovery of the real services Beetle's tests run against (RabbitMQ brokers, Redis master and
 * replica), plus disposable instances for fault tests.
 *
 * Resolution order:
 *  1. BEETLE_TEST_SERVERS ("host:port,host:port"), BEETLE_TEST_REDIS, BEETLE_TEST_REDIS_REPLICA;
 *  2. a reachable Docker engine: testcontainers (skip with BEETLE_TEST_DOCKER=0);
 *  3. `scripts/services.sh up`: 127.0.0.1:5672,5673[,5674] and Redis 127.0.0.1:6379 / 6380.
 * Every service is then probed; a missing one is an error (tests never silently skip).
 */
import { dockerAvailable, startDockerServices } from './docker.js';
import { runServicesScript } from './exec.js';
import { parseAddress, probeAmqp, probeRedis } from './probe.js';

export { startBroker, startRedis, type ServiceHandle, type TlsListener } from './handles.js';
export { createTlsFiles, type TlsFileOptions, type TlsFiles } from './tls.js';
export {
  awaitSentinelsKnowEachOther,
  sentinelMaster,
  startSentinel,
  startSentinelGroup,
  type SentinelGroup,
} from './sentinel.js';
export {
  AMQP_PROTOCOL_HEADER,
  exchange,
  freePort,
  parseAddress,
  probeAmqp,
  probeRedis,
  redisCommand,
  tcpConnect,
} from './probe.js';

export interface TestServices {
  /** "host:port" of the AMQP brokers (at least 2). */
  servers: string[];
  /** "host:port" of the Redis master. */
  redis: string;
  /** "host:port" of a Redis replica of `redis`, when there is one. */
  redisReplica?: string;
  /** Management API port of a broker, Beetle-style: "1" + AMQP port. */
  managementPort(server: string): number;
}

export interface ResolveOptions {
  /** Number of brokers needed (default 2). */
  brokers?: number;
}

/** Beetle derives a broker's management API port as "1" + its AMQP port (5672 -> 15672). */
export function managementPort(server: string): number {
  return Number(`1${parseAddress(server).port}`);
}

interface Provisioned {
  source: string;
  servers: string[];
  redis: string;
  redisReplica?: string;
}

const LOCAL_SERVERS = ['127.0.0.1:5672', '127.0.0.1:5673', '127.0.0.1:5674'];
const UP_TIMEOUT_MS = 600_000;
const PROBE_TIMEOUT_MS = 3000;

/** One provisioning per broker count and process, even with concurrent callers. */
const provisioning = new Map<number, Promise<Provisioned>>();
const cleanups: (() => Promise<void>)[] = [];

const isCI = (): boolean => /^(1|true|yes)$/i.test(process.env.CI ?? '');

function list(value: string | undefined): string[] | undefined {
  const items = (value ?? '')
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item !== '');
  return items.length > 0 ? items : undefined;
}

async function provisionLocal(brokers: number): Promise<Provisioned> {
  if (brokers > LOCAL_SERVERS.length) {
    throw new Error(
      `scripts/services.sh provides at most ${LOCAL_SERVERS.length} brokers, ${brokers} requested`,
    );
  }
  const args = ['up', ...(brokers > 2 ? ['--third-broker'] : [])];
  process.stderr.write(`[test-services] running scripts/services.sh ${args.join(' ')}\n`);
  const started = Date.now();
  await runServicesScript(args, UP_TIMEOUT_MS);
  process.stderr.write(`[test-services] services up after ${Math.round((Date.now() - started) / 1000)} s\n`);
  return {
    source: 'scripts/services.sh',
    servers: LOCAL_SERVERS.slice(0, brokers),
    redis: '127.0.0.1:6379',
    redisReplica: '127.0.0.1:6380',
  };
}

async function provision(brokers: number): Promise<Provisioned> {
  if (process.env.BEETLE_TEST_DOCKER !== '0' && (await dockerAvailable())) {
    process.stderr.write('[test-services] Docker engine found, starting containers with testcontainers\n');
    const { stop, ...docker } = await startDockerServices(brokers);
    cleanups.push(stop);
    return { source: 'docker', ...docker };
  }
  return provisionLocal(brokers);
}

function provisionOnce(brokers: number): Promise<Provisioned> {
  let pending = provisioning.get(brokers);
  if (!pending) {
    pending = provision(brokers);
    provisioning.set(brokers, pending);
    // A failed attempt may be retried by a later caller.
    pending.catch(() => provisioning.delete(brokers));
  }
  return pending;
}

/**
 * Returns the services tests should use, provisioning them if the environment does not name
 * them, and verifies that each one answers. Throws (naming the service) if one does not.
 */
export async function resolveServices(opts: ResolveOptions = {}): Promise<TestServices> {
  const brokers = opts.brokers ?? 2;
  if (!Number.isInteger(brokers) || brokers < 1)
    throw new Error(`resolveServices: invalid brokers: ${brokers}`);

  let servers = list(process.env.BEETLE_TEST_SERVERS);
  let redis = process.env.BEETLE_TEST_REDIS?.trim() || undefined;
  let redisReplica = process.env.BEETLE_TEST_REDIS_REPLICA?.trim() || undefined;
  const sources = {
    servers: 'BEETLE_TEST_SERVERS',
    redis: 'BEETLE_TEST_REDIS',
    replica: 'BEETLE_TEST_REDIS_REPLICA',
  };

  if (!servers || !redis) {
    const provisioned = await provisionOnce(brokers);
    if (!servers) {
      servers = provisioned.servers;
      sources.servers = provisioned.source;
    }
    if (!redis) {
      redis = provisioned.redis;
      sources.redis = provisioned.source;
      // The provisioned replica follows the provisioned master only.
      if (!redisReplica && provisioned.redisReplica) {
        redisReplica = provisioned.redisReplica;
        sources.replica = provisioned.source;
      }
    }
  }

  if (servers.length < brokers) {
    throw new Error(
      `${sources.servers} names ${servers.length} broker(s) but ${brokers} are needed` +
        (brokers > 2 ? ' (set BEETLE_THIRD_BROKER=1 for the test run)' : ''),
    );
  }
  servers = servers.slice(0, brokers);

  const checks: { what: string; run: () => Promise<void> }[] = [
    ...servers.map((server) => ({
      what: `rabbitmq ${server} (from ${sources.servers})`,
      run: () => probeAmqp(server, PROBE_TIMEOUT_MS),
    })),
    { what: `redis ${redis} (from ${sources.redis})`, run: () => probeRedis(redis, PROBE_TIMEOUT_MS) },
  ];
  if (redisReplica) {
    const replica = redisReplica;
    checks.push({
      what: `redis replica ${replica} (from ${sources.replica})`,
      run: () => probeRedis(replica, PROBE_TIMEOUT_MS),
    });
  }
  const results = await Promise.allSettled(checks.map((check) => check.run()));
  const failures = results.flatMap((result, i) =>
    result.status === 'rejected'
      ? [
          `  - ${checks[i]?.what}: ${result.reason instanceof Error ? result.reason.message : String(result.reason)}`,
        ]
      : [],
  );
  if (failures.length > 0) {
    const hint = isCI()
      ? ''
      : '\nStart them with `bash scripts/services.sh up` (or point BEETLE_TEST_SERVERS / BEETLE_TEST_REDIS at running services).';
    throw new Error(`Beetle test services are not available:\n${failures.join('\n')}${hint}`);
  }

  return { servers, redis, ...(redisReplica ? { redisReplica } : {}), managementPort };
}

/** Stops whatever resolveServices() started in this process (Docker containers); local services stay up. */
export async function releaseServices(): Promise<void> {
  const pending = cleanups.splice(0);
  provisioning.clear();
  await Promise.all(pending.map((cleanup) => cleanup()));
}
