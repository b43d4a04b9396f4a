import { BrokerConnection, brokerOptions } from '@beetle/broker-amqp';
import { BeetleError, type BeetleConfig } from '@beetle/core';
import { brokerAddress, parseKey, withTimeout } from '@beetle/core/kit';
import { RedisMaintenanceClient, resolveRedisMaster } from '@beetle/dedup-redis';
import { LAST_GC_KEY } from '../commands/gc.js';
import { errorMessage, oneLine } from '../output.js';

export interface QueueDepth {
  name: string;
  messages: number | null;
  consumers?: number | null;
  /** Set on a dead letter queue: the queue whose rejected messages it holds. */
  deadLetterOf?: string;
  error?: string;
}

export interface BrokerReport {
  server: string;
  reachable: boolean;
  error?: string;
  /** Where the depths come from. */
  source?: 'management-api' | 'passive-declare';
  queues: QueueDepth[];
}

/** Redis Sentinel's view of the master. Not filled in yet: Sentinel support comes separately. */
export interface SentinelView {
  readonly name: string;
  readonly sentinels: readonly { readonly address: string; readonly reachable: boolean }[];
  readonly master: string | null;
  readonly replicas: readonly string[];
}

/** What `beetle gc` stored in db 0 `beetle:lastgc` (Go's schema, plus the run's totals when ours wrote it). */
export interface LastGc {
  timestamp: number;
  queues: { queue: string; total_expiries: number; total_orphans: number }[];
  messages?: number;
  expired?: number;
  orphans?: number;
  databases?: number[];
}

export interface StoreReport {
  redisServer: string;
  master: string | null;
  /** Set when the master comes from Redis Sentinel (not yet supported: always absent). */
  sentinel?: SentinelView;
  db: number;
  reachable: boolean;
  error?: string;
  /** DBSIZE of the dedup database. */
  keys?: number;
  /** Messages in the store (msgid:*:expires keys), with --scan. */
  messages?: number;
  /** Messages per queue, with --scan. */
  messagesByQueue?: Record<string, number>;
  /** When the scan ran (unix seconds): the page may show an older scan than the rest. */
  scannedAt?: number;
  lastGc?: LastGc | null;
}

export interface StatusReport {
  generatedAt: string;
  brokers: BrokerReport[];
  store: StoreReport;
}

/** A queue to report, with whether it dead-letters into `<name>_dead_letter`. */
export interface WatchedQueue {
  readonly name: string;
  readonly deadLettering: boolean;
}

export interface GatherOptions {
  readonly queues: readonly WatchedQueue[];
  /** Every queue of the vhost (management API) instead of `queues`. */
  readonly all: boolean;
  /** Bound of each step (connect, management API call, Redis command). */
  readonly timeoutMs: number;
}

async function managementQueues(
  config: BeetleConfig,
  server: string,
  timeoutMs: number,
): Promise<QueueDepth[]> {
  const address = brokerAddress(config, server);
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  const url = `${address.tls ? 'https' : 'http'}://${host}:${address.managementPort}/api/queues/${encodeURIComponent(address.vhost)}?columns=name,messages,consumers`;
  const response = await fetch(url, {
    headers: {
      authorization: `Basic ${Buffer.from(`${address.user}:${address.password}`).toString('base64')}`,
      accept: 'application/json',
    },
    signal: AbortSignal.timeout(timeoutMs),
  });
  if (!response.ok) throw new BeetleError('management-api', `GET ${url} answered ${response.status}`);
  const list: unknown = await response.json();
  if (!Array.isArray(list)) throw new BeetleError('management-api', `GET ${url} did not return a list`);
  return list.map((entry) => {
    const q = entry as Record<string, unknown>;
    return {
      name: String(q['name']),
      messages: typeof q['messages'] === 'number' ? q['messages'] : null,
      consumers: typeof q['consumers'] === 'number' ? q['consumers'] : null,
    };
  });
}

const DEAD_LETTER = '_dead_letter';

/** The rows to show: each queue, then its dead letter queue when it dead-letters or the broker has one. */
function selectQueues(listed: QueueDepth[], options: GatherOptions): QueueDepth[] {
  const found = new Map(listed.map((q) => [q.name, q]));
  const mark = (q: QueueDepth): QueueDepth =>
    q.name.endsWith(DEAD_LETTER) && found.has(q.name.slice(0, -DEAD_LETTER.length))
      ? { ...q, deadLetterOf: q.name.slice(0, -DEAD_LETTER.length) }
      : q;
  if (options.all) return listed.sort((a, b) => a.name.localeCompare(b.name)).map(mark);
  return options.queues.flatMap(({ name, deadLettering }) => {
    const row = found.get(name) ?? { name, messages: null, error: 'not declared' };
    const dead = found.get(name + DEAD_LETTER);
    if (dead === undefined && !deadLettering) return [row];
    const deadRow = dead ?? { name: name + DEAD_LETTER, messages: null, error: 'not declared' };
    return [row, { ...deadRow, deadLetterOf: name }];
  });
}

async function reachBroker(
  config: BeetleConfig,
  server: string,
  options: GatherOptions,
): Promise<BrokerReport> {
  const connection = new BrokerConnection(brokerOptions(config, server));
  try {
    try {
      await connection.publishChannel();
    } catch (error) {
      return { server, reachable: false, error: oneLine(errorMessage(error)), queues: [] };
    }
    try {
      const listed = await managementQueues(config, server, options.timeoutMs);
      return { server, reachable: true, source: 'management-api', queues: selectQueues(listed, options) };
    } catch {
      // No management API: depths by passive declares (no consumer counts).
      const declarer = await connection.declarer();
      const depths: QueueDepth[] = [];
      const names = options.queues.flatMap((q) =>
        q.deadLettering ? [q.name, q.name + DEAD_LETTER] : [q.name],
      );
      for (const name of names) {
        const deadLetterOf = name.endsWith(DEAD_LETTER)
          ? { deadLetterOf: name.slice(0, -DEAD_LETTER.length) }
          : {};
        try {
          depths.push({ name, messages: await declarer.queueLength(name), ...deadLetterOf });
        } catch (error) {
          depths.push({ name, messages: null, error: oneLine(errorMessage(error)), ...deadLetterOf });
        }
      }
      return { server, reachable: true, source: 'passive-declare', queues: depths };
    }
  } finally {
    await connection.close();
  }
}

/**
 * One broker: reachable (an AMQP connection opens), and its queue depths and consumers. Never takes much longer
 * than a few `timeoutMs`: a broker that stopped answering is reported down, not waited for.
 */
export async function brokerReport(
  config: BeetleConfig,
  server: string,
  options: GatherOptions,
): Promise<BrokerReport> {
  const boundMs = options.timeoutMs * 3 + 1000;
  try {
    return await withTimeout(
      reachBroker(config, server, options),
      boundMs,
      () => new BeetleError('timeout', `no answer within ${boundMs} ms`),
    );
  } catch (error) {
    return { server, reachable: false, error: oneLine(errorMessage(error)), queues: [] };
  }
}

function parseLastGc(raw: string | null): LastGc | null {
  if (raw === null) return null;
  const value = JSON.parse(raw) as Partial<LastGc>;
  if (typeof value.timestamp !== 'number') return null;
  const counts = (['messages', 'expired', 'orphans'] as const).filter((k) => typeof value[k] === 'number');
  return {
    timestamp: value.timestamp,
    queues: (Array.isArray(value.queues) ? value.queues : []).map((q) => ({
      queue: String(q.queue),
      total_expiries: Number(q.total_expiries),
      total_orphans: Number(q.total_orphans),
    })),
    ...Object.fromEntries(counts.map((k) => [k, value[k]])),
    ...(Array.isArray(value.databases) ? { databases: value.databases.map(Number) } : {}),
  };
}

/** Counts `msgid:*:expires` keys per queue (one per message in the store). */
export async function countMessages(redis: RedisMaintenanceClient): Promise<Record<string, number>> {
  const byQueue: Record<string, number> = {};
  for await (const keys of redis.scanKeys('msgid:*:expires', 10_000)) {
    for (const key of keys) {
      const queue = parseKey(key)?.queue;
      if (queue !== undefined) byQueue[queue] = (byQueue[queue] ?? 0) + 1;
    }
  }
  return byQueue;
}

/**
 * The dedup store: the master it resolves to, DBSIZE, the last `beetle gc`, and (`scan`) messages per queue.
 * `scan` may be a function deciding per call, so a server can rescan less often than it refreshes.
 */
export async function storeReport(
  config: BeetleConfig,
  timeoutMs: number,
  scan: (
    redis: RedisMaintenanceClient,
  ) => Promise<Pick<StoreReport, 'messagesByQueue' | 'scannedAt'> | undefined>,
): Promise<StoreReport> {
  const report: StoreReport = {
    redisServer: config.redisServer,
    master: null,
    db: config.redisDb,
    reachable: false,
  };
  try {
    const master = await resolveRedisMaster(config);
    report.master = master;
    const redis = await RedisMaintenanceClient.open(config, master, config.redisDb, {
      connectTimeoutMs: timeoutMs,
      commandTimeoutMs: Math.max(timeoutMs, 10_000),
    });
    try {
      report.keys = await redis.dbsize();
      report.reachable = true;
      const scanned = await scan(redis);
      if (scanned?.messagesByQueue !== undefined) {
        report.messagesByQueue = scanned.messagesByQueue;
        report.messages = Object.values(scanned.messagesByQueue).reduce((a, b) => a + b, 0);
        if (scanned.scannedAt !== undefined) report.scannedAt = scanned.scannedAt;
      }
      await redis.call('SELECT', 0);
      report.lastGc = parseLastGc(await redis.get(LAST_GC_KEY));
    } finally {
      redis.close();
    }
  } catch (error) {
    report.error = oneLine(errorMessage(error));
  }
  return report;
}

/** Everything `beetle status` shows, gathered in parallel, each part bounded. */
export async function gatherStatus(
  config: BeetleConfig,
  options: GatherOptions & { scan: Parameters<typeof storeReport>[2] },
): Promise<StatusReport> {
  const servers = [...config.servers, ...config.additionalSubscriptionServers];
  const [brokers, store] = await Promise.all([
    Promise.all(servers.map((server) => brokerReport(config, server, options))),
    storeReport(config, options.timeoutMs, options.scan),
  ]);
  return { generatedAt: new Date().toISOString(), brokers, store };
}
