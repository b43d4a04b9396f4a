/**
 * THE DEMO — redundant messaging (Ruby `examples/redundant.rb`). Two brokers, one redundant message type, the
 * Redis deduplication store. Every message is published to both brokers (each copy confirmed); the subscriber
 * consumes both brokers, and the dedup store makes sure the handler runs once per message: 2 copies → 1 run.
 * When all copies were acknowledged, the message's keys are gone from Redis.
 *
 *   pnpm demo                              # starts the services, builds, runs this
 *   npx tsx examples/src/redundant.ts      # services already up (BEETLE_SERVERS, BEETLE_REDIS_SERVER)
 */
import { Client, RedisDedupStore } from '@beetle/client';
import {
  dedupKeysLeft,
  deleteTopology,
  exampleConfig,
  output,
  runId,
  runIfScript,
  waitFor,
  type ExampleOptions,
  type ExampleSummary,
} from './support.js';

export interface RedundantOptions extends ExampleOptions {
  /** Messages to publish (default 100). */
  readonly count?: number;
}

export interface RedundantSummary extends ExampleSummary {
  readonly queue: string;
  readonly servers: readonly string[];
  readonly redisServer: string;
  readonly published: number;
  /** Copies each broker confirmed. */
  readonly confirmedPerBroker: Readonly<Record<string, number>>;
  /** Deliveries the subscriber processed (both copies of each message). */
  readonly deliveries: number;
  readonly handlerRuns: number;
  /** Messages whose handler ran exactly once. */
  readonly handledOnce: number;
  /** Messages whose handler ran more than once (must be 0). */
  readonly handledTwice: number;
  /** Messages never handled (must be 0). */
  readonly notHandled: number;
  /** Copies that were acknowledged without running the handler again. */
  readonly duplicatesSuppressed: number;
  /**
   * `msgid:<queue>:*` keys left in Redis once everything was acknowledged, besides the completed status kept
   * for `redisCompletedStatusTtl` (must be 0).
   */
  readonly redisKeysLeft: number;
}

export async function main(options: RedundantOptions = {}): Promise<RedundantSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const count = options.count ?? 100;
  const queue = `beetle-example-redundant-${runId()}`;
  const config = exampleConfig(options, {}, logger);
  const store = RedisDedupStore.fromConfig(config, { logger });
  const client = new Client({ config, logger, store })
    .queue(queue)
    .message<typeof queue, { n: number }>(queue, { redundant: true });

  const runsPerMessage = new Map<string, number>();
  let handlerRuns = 0;
  client.handler(queue, (message) => {
    handlerRuns++;
    runsPerMessage.set(message.uuid, (runsPerMessage.get(message.uuid) ?? 0) + 1);
  });
  let deliveries = 0;
  client.subscriber.on('processed', () => {
    deliveries++;
  });
  const confirmedPerBroker: Record<string, number> = Object.fromEntries(config.servers.map((s) => [s, 0]));
  client.publisher.on('published', (event) => {
    for (const server of event.servers) confirmedPerBroker[server] = (confirmedPerBroker[server] ?? 0) + 1;
  });

  const ids: string[] = [];
  let copies = 0;
  let redisKeysLeft = -1;
  try {
    print(
      `brokers ${config.servers.join(' + ')}, dedup store redis ${config.redisServer} db ${config.redisDb}`,
    );
    await client.listen();
    print(`publishing ${count} redundant messages to ${queue} ...`);
    const results = await Promise.all(
      Array.from({ length: count }, async (_, n) => {
        const messageId = `${queue.slice(-8)}-${String(n).padStart(6, '0')}`;
        ids.push(messageId);
        return client.publish(queue, { n }, { messageId });
      }),
    );
    copies = results.reduce((a, b) => a + b, 0);
    print(`... ${copies} copies confirmed; waiting for the subscriber`);
    const allHandled = (): boolean => runsPerMessage.size >= count && deliveries >= copies;
    await waitFor(allHandled, 10_000 + count * 100);
    redisKeysLeft = await dedupKeysLeft(store, queue);
  } finally {
    await client.stop();
    await store.close();
    await deleteTopology(config, { queues: [queue], exchanges: [queue] });
  }
  const handledOnce = ids.filter((id) => runsPerMessage.get(id) === 1).length;
  const handledTwice = ids.filter((id) => (runsPerMessage.get(id) ?? 0) > 1).length;
  const notHandled = ids.filter((id) => !runsPerMessage.has(id)).length;
  return {
    example: 'redundant',
    ok: handledOnce === count && handlerRuns === count && copies === 2 * count && redisKeysLeft === 0,
    elapsedMs: Date.now() - started,
    queue,
    servers: config.servers,
    redisServer: config.redisServer,
    published: count,
    confirmedPerBroker,
    deliveries,
    handlerRuns,
    handledOnce,
    handledTwice,
    notHandled,
    duplicatesSuppressed: deliveries - handlerRuns,
    redisKeysLeft,
  };
}

/** The human summary printed by the demo. */
export function formatRedundantSummary(s: RedundantSummary): string {
  const perBroker = Object.entries(s.confirmedPerBroker)
    .map(([server, n]) => `${server}: ${n}`)
    .join(', ');
  const lines = [
    '',
    'Beetle redundant messaging demo',
    '-------------------------------',
    `messages published           ${s.published} (redundant: one copy per broker)`,
    `copies confirmed per broker  ${perBroker}`,
    `deliveries consumed          ${s.deliveries} (from both brokers)`,
    `handler runs                 ${s.handlerRuns}`,
    `duplicates suppressed        ${s.duplicatesSuppressed} (second copies acknowledged without running the handler)`,
    `handled exactly once         ${s.handledOnce} of ${s.published}` +
      (s.handledTwice > 0 ? `, ${s.handledTwice} TWICE` : '') +
      (s.notHandled > 0 ? `, ${s.notHandled} NOT AT ALL` : ''),
    `keys left in Redis           ${s.redisKeysLeft} (msgid:${s.queue}:*, besides the kept completed status)`,
    `elapsed                      ${(s.elapsedMs / 1000).toFixed(2)} s`,
    '',
    s.ok
      ? `OK: ${s.deliveries} copies -> ${s.handlerRuns} handler runs; every message was handled exactly once.`
      : 'FAILED: not every message was handled exactly once (see above).',
  ];
  return lines.join('\n');
}

runIfScript(import.meta.url, () => main(), formatRedundantSummary);
