/**
 * One message fanned out to two queues with a handler each (Ruby `examples/multiple_queues.rb`): both queues
 * are bound to the message's exchange with its key. The message is redundant: each queue gets a copy from each
 * broker, and each queue's handler still runs once (queues deduplicate independently).
 *
 *   npx tsx examples/src/multiple-queues.ts
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

export interface MultipleQueuesSummary extends ExampleSummary {
  readonly brokersConfirmed: number;
  /** Handler runs per queue. */
  readonly runs: Readonly<Record<string, number>>;
  /** Deliveries per queue (copies from both brokers). */
  readonly deliveries: Readonly<Record<string, number>>;
}

export async function main(options: ExampleOptions = {}): Promise<MultipleQueuesSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const id = runId();
  const exchange = `beetle-example-fanout-${id}`;
  const message = `beetle-example-fanout-${id}`;
  const queues = [`beetle-example-fanout-a-${id}`, `beetle-example-fanout-b-${id}`];
  const config = exampleConfig(options, {}, logger);
  let client = new Client({ config, logger }).message<typeof message, string>(message, {
    exchange,
    redundant: true,
  });
  const runs: Record<string, number> = {};
  const deliveries: Record<string, number> = {};
  for (const queue of queues) {
    runs[queue] = 0;
    deliveries[queue] = 0;
    client = client.queue(queue, { exchange, key: message });
    client.handler(queue, (m) => {
      runs[queue] = (runs[queue] ?? 0) + 1;
      print(`handler of ${queue} got "${m.text()}" (copy from ${m.server})`);
    });
  }
  client.subscriber.on('processed', (event) => {
    const amqp = client.topology.queue(event.queue).amqpName;
    deliveries[amqp] = (deliveries[amqp] ?? 0) + 1;
  });
  let brokersConfirmed = 0;
  const copies = Math.min(2, config.servers.length);
  try {
    await client.listen();
    brokersConfirmed = await client.publish(message, 'one message, two queues');
    print(`published once, confirmed by ${brokersConfirmed} brokers`);
    await waitFor(() => queues.every((q) => (deliveries[q] ?? 0) >= copies), 10_000);
  } finally {
    await client.stop();
    await deleteTopology(config, { queues, exchanges: [exchange] });
  }
  return {
    example: 'multiple-queues',
    ok: queues.every((q) => runs[q] === 1),
    elapsedMs: Date.now() - started,
    brokersConfirmed,
    runs,
    deliveries,
  };
}

runIfScript(import.meta.url, () => main());
