/**
 * A handler object with hooks (Ruby `examples/handler_class.rb`, a `Beetle::Handler` subclass): `process`
 * sums the numbers of 10 messages, `completed` counts finished deliveries, `postProcess` runs last.
 *
 *   npx tsx examples/src/handler-class.ts
 */
import { Client, type HandlerMessage } from '@beetle/client';
import type { HandlerObject } from '@beetle/subscriber';
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

export interface HandlerClassOptions extends ExampleOptions {
  /** Messages 1..count are published (default 10). */
  readonly count?: number;
}

export interface HandlerClassSummary extends ExampleSummary {
  readonly published: number;
  readonly sum: number;
  readonly expectedSum: number;
  readonly completedHooks: number;
  readonly postProcessHooks: number;
}

/** Like a `Beetle::Handler` subclass; one instance serves every message of the queue. */
class Summer implements HandlerObject {
  sum = 0;
  processed = 0;
  completedHooks = 0;
  postProcessHooks = 0;

  constructor(private readonly print: (line: string) => void) {}

  process(message: HandlerMessage): void {
    const value = Number(message.text());
    this.sum += value;
    this.processed++;
    this.print(`process: +${value} = ${this.sum}`);
  }

  completed(): void {
    this.completedHooks++;
  }

  postProcess(): void {
    this.postProcessHooks++;
  }
}

export async function main(options: HandlerClassOptions = {}): Promise<HandlerClassSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const count = options.count ?? 10;
  const queue = `beetle-example-handler-class-${runId()}`;
  const config = exampleConfig(options, {}, logger);
  const client = new Client({ config, logger }).queue(queue).message<typeof queue, string>(queue);
  const handler = new Summer(print);
  client.handler(queue, handler);
  try {
    await client.listen();
    for (let i = 1; i <= count; i++) await client.publish(queue, String(i));
    print(`published ${count} messages`);
    await waitFor(() => handler.postProcessHooks >= count, 15_000);
  } finally {
    await client.stop();
    await deleteTopology(config, { queues: [queue], exchanges: [queue] });
  }
  const expectedSum = (count * (count + 1)) / 2;
  print(`sum of the ${handler.processed} messages: ${handler.sum}`);
  return {
    example: 'handler-class',
    ok: handler.sum === expectedSum && handler.processed === count && handler.completedHooks === count,
    elapsedMs: Date.now() - started,
    published: count,
    sum: handler.sum,
    expectedSum,
    completedHooks: handler.completedHooks,
    postProcessHooks: handler.postProcessHooks,
  };
}

runIfScript(import.meta.url, () => main());
