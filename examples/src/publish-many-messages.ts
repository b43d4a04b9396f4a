/**
 * Bulk publishing (Ruby `examples/publish_many_messages.rb`): publishes many messages as fast as the brokers
 * confirm them (publishes are pipelined up to `publisherMaxInFlight`, each one confirmed), prints the rate,
 * then consumes them all and prints that rate too.
 *
 *   npx tsx examples/src/publish-many-messages.ts            # 10000 messages
 *   BEETLE_EXAMPLE_COUNT=50000 npx tsx examples/src/publish-many-messages.ts
 */
import { Client } from '@beetle/client';
import {
  deleteTopology,
  exampleConfig,
  output,
  runId,
  runIfScript,
  waitFor,
  type ExampleOptions,
  type ExampleSummary,
} from './support.js';

export interface PublishManyOptions extends ExampleOptions {
  /** Messages to publish (default `BEETLE_EXAMPLE_COUNT`, else 10000). */
  readonly count?: number;
  /** Publish redundantly (two copies each; default false). */
  readonly redundant?: boolean;
}

export interface PublishManySummary extends ExampleSummary {
  readonly published: number;
  readonly copiesConfirmed: number;
  readonly publishMs: number;
  readonly publishedPerSecond: number;
  readonly handled: number;
  readonly consumeMs: number;
  readonly handledPerSecond: number;
}

const rate = (n: number, ms: number): number => Math.round((n * 1000) / Math.max(ms, 1));

export async function main(options: PublishManyOptions = {}): Promise<PublishManySummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const env = options.env ?? process.env;
  const count = options.count ?? (Number(env.BEETLE_EXAMPLE_COUNT) || 10_000);
  const queue = `beetle-example-publish-many-${runId()}`;
  const config = exampleConfig(options, { prefetchCount: 200, subscriberConcurrency: 10 }, logger);
  const client = new Client({ config, logger })
    .queue(queue)
    .message<typeof queue, { n: number }>(queue, { redundant: options.redundant ?? false });
  let handled = 0;
  client.handler(queue, () => {
    handled++;
  });
  let copiesConfirmed = 0;
  let publishMs = 0;
  let consumeMs = 0;
  try {
    // Declare the queue on every broker before publishing (the subscriber is not listening yet).
    await client.setupQueuesAndPolicies();
    print(`publishing ${count} messages to ${queue} ...`);
    const publishStart = Date.now();
    const results = await Promise.all(Array.from({ length: count }, (_, n) => client.publish(queue, { n })));
    publishMs = Date.now() - publishStart;
    copiesConfirmed = results.reduce((a, b) => a + b, 0);
    print(`published ${count} messages in ${publishMs} ms: ${rate(count, publishMs)} msgs/s`);
    const consumeStart = Date.now();
    await client.listen();
    await waitFor(() => handled >= count, 30_000 + count * 5, 10);
    consumeMs = Date.now() - consumeStart;
    print(`handled ${handled} messages in ${consumeMs} ms: ${rate(handled, consumeMs)} msgs/s`);
  } finally {
    await client.stop();
    await deleteTopology(config, { queues: [queue], exchanges: [queue] });
  }
  return {
    example: 'publish-many-messages',
    ok: handled === count && copiesConfirmed === count * (options.redundant ? 2 : 1),
    elapsedMs: Date.now() - started,
    published: count,
    copiesConfirmed,
    publishMs,
    publishedPerSecond: rate(count, publishMs),
    handled,
    consumeMs,
    handledPerSecond: rate(handled, consumeMs),
  };
}

runIfScript(import.meta.url, () => main());
