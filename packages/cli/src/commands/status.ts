import { createConfig, type BeetleConfig } from '@beetle/core';
import type { RedisMaintenanceClient } from '@beetle/dedup-redis';
import type { CommandContext, CommandSpec } from '../command.js';
import { numberFlag, stringFlag, UsageError } from '../options.js';
import {
  countMessages,
  gatherStatus,
  type BrokerReport,
  type GatherOptions,
  type StoreReport,
} from '../status/gather.js';
import { startStatusServer } from '../status/server.js';
import { aborted, createClient, jsonFlag, topologyFlag } from './shared.js';

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
  const gc = store.lastGc ? `, last gc ${new Date(store.lastGc.timestamp * 1000).toISOString()}` : '';
  ctx.print.out(`dedup store ${where}${from} db ${store.db}: up, ${store.keys ?? 0} keys${messages}${gc}`);
}

/** Scans for message counts every time (one-shot), or at most every `everyMs` (the server). */
function scanner(
  enabled: boolean,
  everyMs: number,
): (
  redis: RedisMaintenanceClient,
) => Promise<Pick<StoreReport, 'messagesByQueue' | 'scannedAt'> | undefined> {
  let last: { messagesByQueue: Record<string, number>; scannedAt: number } | undefined;
  return async (redis) => {
    if (!enabled) return undefined;
    if (last !== undefined && Date.now() - last.scannedAt * 1000 < everyMs) return last;
    last = { messagesByQueue: await countMessages(redis), scannedAt: Math.floor(Date.now() / 1000) };
    return last;
  };
}

async function serve(ctx: CommandContext, config: BeetleConfig, options: GatherOptions): Promise<number> {
  const refresh = numberFlag(ctx.flags, 'refresh', { min: 1 }) ?? 5;
  const port = numberFlag(ctx.flags, 'port', { min: 0, integer: true }) ?? 9080;
  if (port > 65535) throw new UsageError(`--port must be at most 65535, got ${port}`);
  const host = stringFlag(ctx.flags, 'host') ?? '127.0.0.1';
  const scan = scanner(ctx.flags['scan'] === true, 60_000);
  ctx.startLogging();
  const server = await startStatusServer({
    host,
    port,
    gather: () => gatherStatus(config, { ...options, scan }),
    // Slightly under the page's interval, so each refresh of one page sees a fresh report.
    maxAgeMs: Math.max(500, refresh * 1000 - 500),
    refreshSeconds: refresh,
    logger: ctx.logger,
  });
  ctx.print.err(`status page listening on ${server.url}/ (JSON: ${server.url}/status.json)`);
  await aborted(ctx.signal);
  await server.close();
  return 0;
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
collection (db 0 key beetle:lastgc). Queues with dead lettering are followed by their <queue>_dead_letter
queue. Exit status 1 when a broker or the store is unreachable.

--serve keeps running (until SIGINT/SIGTERM) and serves on --host:--port (default 127.0.0.1:9080, loopback:
bind another address only behind your own access control) GET /status.json (the --json report, plus
messages per queue in the store with --scan, rescanned at most once a minute) and GET / (a self-contained
page that reloads it every --refresh seconds). Requests share one gathering at a time; every broker and
Redis call is bounded by --timeout, so a broker that is down or hangs shows as down instead of holding the
page.`,
  flags: {
    ...topologyFlag,
    'all-queues': { type: 'boolean', description: 'list every queue of the vhost (management API)' },
    scan: { type: 'boolean', description: 'count messages in the dedup store (SCAN)' },
    timeout: { type: 'string', value: '<seconds>', description: 'connect timeout (default 3)' },
    serve: { type: 'boolean', description: 'serve a status page (/) and /status.json until interrupted' },
    port: { type: 'string', value: '<n>', description: 'with --serve: HTTP port (default 9080; 0: any)' },
    host: {
      type: 'string',
      value: '<address>',
      description: 'with --serve: address to bind (default 127.0.0.1)',
    },
    refresh: {
      type: 'string',
      value: '<seconds>',
      description: 'with --serve: page refresh interval (default 5)',
    },
    ...jsonFlag,
  },
  examples: [
    'beetle status --config-file beetle.yml',
    'beetle status --topology topology.yml --json',
    'beetle status --topology topology.yml --serve --port 9080',
  ],
  async run(ctx) {
    const timeout = numberFlag(ctx.flags, 'timeout', { min: 0.1 }) ?? 3;
    const config = createConfig(ctx.config, {
      publisherConnectTimeout: Math.min(timeout, ctx.config.publisherConnectTimeout),
      publisherReadResponseTimeout: Math.min(timeout, ctx.config.publisherReadResponseTimeout),
      redisConnectTimeout: Math.min(timeout, ctx.config.redisConnectTimeout),
    });
    const client = await createClient(ctx);
    const queues = client.topology
      .queues()
      .map((q) => ({ name: q.amqpName, deadLettering: q.deadLettering }));
    await client.stop();
    const options: GatherOptions = {
      queues,
      all: ctx.flags['all-queues'] === true,
      timeoutMs: timeout * 1000,
    };
    if (ctx.flags['serve'] === true) return serve(ctx, config, options);
    const { brokers, store } = await gatherStatus(config, {
      ...options,
      scan: scanner(ctx.flags['scan'] === true, 0),
    });
    if (ctx.flags['json'] === true) ctx.print.json({ brokers, store });
    else printText(ctx, brokers, store);
    return brokers.every((b) => b.reachable) && store.reachable ? 0 : 1;
  },
};
