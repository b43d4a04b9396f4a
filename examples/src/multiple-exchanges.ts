/**
 * One queue bound to two exchanges with different routing keys (Ruby `examples/multiple_exchanges.rb`): a
 * message published to either exchange reaches the queue's handler.
 *
 *   npx tsx examples/src/multiple-exchanges.ts
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

export interface MultipleExchangesSummary extends ExampleSummary {
  readonly queue: string;
  /** Exchange and routing key of each binding of the queue. */
  readonly bindings: readonly { exchange: string; key: string }[];
  /** What the handler got: exchange, routing key and body of each message. */
  readonly received: readonly { exchange: string; key: string; text: string }[];
}

export async function main(options: ExampleOptions = {}): Promise<MultipleExchangesSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const id = runId();
  const queue = `beetle-example-multi-exchange-${id}`;
  const exchange1 = `beetle-example-exchange1-${id}`;
  const exchange2 = `beetle-example-exchange2-${id}`;
  const config = exampleConfig(options, {}, logger);
  const client = new Client({ config, logger })
    .queue(queue, { exchange: exchange1, key: 'first.key' })
    .binding(queue, { exchange: exchange2, key: 'second.key' })
    .message<'first', string>('first', { exchange: exchange1, key: 'first.key' })
    .message<'second', string>('second', { exchange: exchange2, key: 'second.key' });
  const received: { exchange: string; key: string; text: string }[] = [];
  client.handler(queue, (message) => {
    received.push({ exchange: message.exchange, key: message.routingKey, text: message.text() });
    print(`received "${message.text()}" via exchange ${message.exchange} with key ${message.routingKey}`);
  });
  const bindings = client.topology.bindings(queue).map(({ exchange, key }) => ({ exchange, key }));
  try {
    await client.listen();
    await client.publish('first', 'published to the first exchange');
    await client.publish('second', 'published to the second exchange');
    await waitFor(() => received.length >= 2, 10_000);
  } finally {
    await client.stop();
    await deleteTopology(config, { queues: [queue], exchanges: [exchange1, exchange2] });
  }
  return {
    example: 'multiple-exchanges',
    ok:
      received.length === 2 &&
      received.some((r) => r.exchange === exchange1 && r.key === 'first.key') &&
      received.some((r) => r.exchange === exchange2 && r.key === 'second.key'),
    elapsedMs: Date.now() - started,
    queue,
    bindings,
    received,
  };
}

runIfScript(import.meta.url, () => main());
