/**
 * The minimal Beetle program (Ruby `examples/simple.rb`): one queue, one message of the same name, one
 * handler. Publishes a message, listens until it was handled, stops.
 *
 *   npx tsx examples/src/simple.ts
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

export interface SimpleOptions extends ExampleOptions {
  /** The message text (default "hello world"). */
  readonly text?: string;
}

export interface SimpleSummary extends ExampleSummary {
  readonly queue: string;
  readonly published: number;
  readonly brokersConfirmed: number;
  readonly received: readonly string[];
}

export async function main(options: SimpleOptions = {}): Promise<SimpleSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const text = options.text ?? 'hello world';
  const queue = `beetle-example-simple-${runId()}`;
  const config = exampleConfig(options, {}, logger);
  // The queue is bound to the exchange of its name with its name as key; the message goes there.
  const client = new Client({ config, logger }).queue(queue).message<typeof queue, string>(queue);
  const received: string[] = [];
  client.handler(queue, (message) => {
    print(`received: ${message.text()} (from ${message.server}, message id ${message.uuid})`);
    received.push(message.text());
  });
  let brokersConfirmed = 0;
  try {
    await client.listen();
    brokersConfirmed = await client.publish(queue, text);
    print(`published "${text}" to ${queue} (confirmed by ${brokersConfirmed} broker)`);
    await waitFor(() => received.length >= 1, 10_000);
  } finally {
    await client.stop();
    await deleteTopology(config, { queues: [queue], exchanges: [queue] });
  }
  return {
    example: 'simple',
    ok: received.length === 1 && received[0] === text,
    elapsedMs: Date.now() - started,
    queue,
    published: 1,
    brokersConfirmed,
    received,
  };
}

runIfScript(import.meta.url, () => main());
