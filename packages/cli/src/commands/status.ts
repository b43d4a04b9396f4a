import { BrokerConnection, brokerOptions } from '@beetle/broker-amqp';
import { BeetleError, createConfig, type BeetleConfig } from '@beetle/core';
import { brokerAddress } from '@beetle/core/kit';
import { RedisMaintenanceClient, resolveRedisMaster } from '@beetle/dedup-redis';
import type { CommandContext, CommandSpec } from '../command.js';
import { numberFlag } from '../options.js';
import { errorMessage, oneLine } from '../output.js';
import { createClient, jsonFlag, topologyFlag } from './shared.js';

interface QueueDepth {
  name: string;
  messages: number | null;
  consumers?: number | null;
  error?: string;
}

interface BrokerReport {
  server: string;
  reachable: boolean;
  error?: string;
  /** Where the depths come from. */
  source?: 'management-api' | 'passive-declare';
  queues: QueueDepth[];
}

interface StoreReport {
  redisServer: string;
  master: string | null;
  db: number;
  reachable: boolean;
  error?: string;
  keys?: number;
  messages?: number;
  lastGc?: number | null;
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
  const list = await response.json();
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

async function brokerReport(
  config: BeetleConfig,
  server: string,
  queues: readonly string[],
  all: boolean,
  timeoutMs: number,
): Promise<BrokerReport> {
  const connection = new BrokerConnection(brokerOptions(config, server));
  try {
    try {
      await connection.publishChannel();
    } catch (error) {
      return { server, reachable: false, error: oneLine(errorMessage(error)), queues: [] };
    }
    try {
      const listed = await managementQueues(config, server, timeoutMs);
      const found = new Map(listed.map((q) => [q.name, q]));
      const depths = all
        ? listed.sort((a, b) => a.name.localeCompare(b.name))
        : queues.map((name) => found.get(name) ?? { name, messages: null, error: 'not declared' });
      return { server, reachable: true, source: 'management-api', queues: depths };
    } catch {
      const declarer = await connection.declarer();
      const depths: QueueDepth[] = [];
      for (const name of queues) {
        try {
          depths.push({ name, messages: await declarer.queueLength(name) });
        } catch (error) {
          depths.push({ name, messages: null, error: oneLine(errorMessage(error)) });
        }
      }
      return { server, reachable: true, source: 'passive-declare', queues: depths };
    }
  } finally {
    await connection.close();
  }
}

async function storeReport(config: BeetleConfig, scan: boolean, timeoutMs: number): Promise<StoreReport> {
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
      if (scan) {
        let messages = 0;
        for await (const keys of redis.scanKeys('msgid:*:expires', 10_000)) messages += keys.length;
        report.messages = messages;
      }
      await redis.call('SELECT', 0);
      const lastGc = await redis.get('beetle:lastgc');
      const timestamp = lastGc === null ? null : (JSON.parse(lastGc) as { timestamp?: unknown }).timestamp;
      report.lastGc = typeof timestamp === 'number' ? timestamp : null;
    } finally {
      redis.close();
    }
  } catch (error) {
    report.error = oneLine(errorMessage(error));
  }
  return report;
}

function printText(ctx: CommandContext, brokers: BrokerReport[], store: StoreReport): void {
  for (const broker of brokers) {
    if (!broker.reachable) {
      ctx.print.out(`broker ${broker.server}: UNREACHABLE (${broker.error ?? 'unknown error'})`);
      continue;
    }
    ctx.print.out(`broker ${broker.server}: up (queue depths from ${broker.source ?? '?'})`);
    const width = Math.max(5, ...broker.queues.map((q) => q.name.length));
    for (const q of broker.queues) {
      const depth = q.messages === null ? (q.error ?? 'unknown') : String(q.messages);
      const consumers = q.consumers === undefined || q.consumers === null ? '' : `  consumers ${q.consumers}`;
      ctx.print.out(
        `  ${q.name.padEnd(width)}  ${depth}${q.messages === null ? '' : ' messages'}${consumers}`,
      );
    }
  }
  const where = store.master === null ? store.redisServer : store.master;
  if (!store.reachable) {
    ctx.print.out(`dedup store ${where} db ${store.db}: UNREACHABLE (${store.error ?? 'unknown error'})`);
    return;
  }
  const from = store.master !== store.redisServer ? ` (master of ${store.redisServer})` : '';
  const messages = store.messages === undefined ? '' : `, ${store.messages} messages`;
  const gc = store.lastGc ? `, last gc ${new Date(store.lastGc * 1000).toISOString()}` : '';
  ctx.print.out(`dedup store ${where}${from} db ${store.db}: up, ${store.keys ?? 0} keys${messages}${gc}`);
}

export const statusCommand: CommandSpec = {
  name: 'status',
  summary: 'show broker reachability, queue depths and the dedup store',
  args: '',
  positionals: { min: 0, max: 0 },
  description: `Connects to every broker with a short timeout and prints the depth of each declared queue (from
--topology, plus Beetle's policy queue; --all-queues: every queue of the vhost) using the management API
(port "1" + AMQP port), or passive declares when the API does not answer. Then the dedup store: the master
it resolves to (the redis master file is read when redis_server is a path), the number of keys in its
database (--scan also counts messages, i.e. msgid:*:expires keys) and the time of the last garbage
collection (db 0 key beetle:lastgc). Exit status 1 when a broker or the store is unreachable.`,
  flags: {
    ...topologyFlag,
    'all-queues': { type: 'boolean', description: 'list every queue of the vhost (management API)' },
    scan: { type: 'boolean', description: 'count messages in the dedup store (SCAN)' },
    timeout: { type: 'string', value: '<seconds>', description: 'connect timeout (default 3)' },
    ...jsonFlag,
  },
  examples: ['beetle status --config-file beetle.yml', 'beetle status --topology topology.yml --json'],
  async run(ctx) {
    const timeout = numberFlag(ctx.flags, 'timeout', { min: 0.1 }) ?? 3;
    const config = createConfig(ctx.config, {
      publisherConnectTimeout: Math.min(timeout, ctx.config.publisherConnectTimeout),
      publisherReadResponseTimeout: Math.min(timeout, ctx.config.publisherReadResponseTimeout),
      redisConnectTimeout: Math.min(timeout, ctx.config.redisConnectTimeout),
    });
    const client = await createClient(ctx);
    const queues = client.topology.queues().map((q) => q.amqpName);
    await client.stop();
    const servers = [...config.servers, ...config.additionalSubscriptionServers];
    const [brokers, store] = await Promise.all([
      Promise.all(
        servers.map((server) =>
          brokerReport(config, server, queues, ctx.flags['all-queues'] === true, timeout * 1000),
        ),
      ),
      storeReport(config, ctx.flags['scan'] === true, timeout * 1000),
    ]);
    if (ctx.flags['json'] === true) ctx.print.json({ brokers, store });
    else printText(ctx, brokers, store);
    return brokers.every((b) => b.reachable) && store.reachable ? 0 : 1;
  },
};
