/**
 * A handler that fails its first attempt and succeeds on the retry (Ruby `examples/handling_exceptions.rb`):
 * handler options `exceptions: 1, delay: 0` allow one failure and retry at once; the `error` hook sees the
 * exception, `completed` runs after each attempt, no `failure`.
 *
 *   npx tsx examples/src/handling-exceptions.ts
 */
import { Client, type HandlerMessage, type Outcome } from '@beetle/client';
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

export interface HandlingExceptionsSummary extends ExampleSummary {
  readonly runs: number;
  readonly errorHooks: number;
  readonly failureHooks: number;
  readonly completedHooks: number;
  /** Outcome of each delivery, in order (e.g. HandlerCrash, OK). */
  readonly outcomes: readonly Outcome[];
}

export async function main(options: ExampleOptions = {}): Promise<HandlingExceptionsSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const queue = `beetle-example-handling-exceptions-${runId()}`;
  const config = exampleConfig(options, {}, logger);
  const client = new Client({ config, logger }).queue(queue).message<typeof queue, string>(queue);
  const counts = { runs: 0, errorHooks: 0, failureHooks: 0, completedHooks: 0 };
  const handler: HandlerObject = {
    process(message: HandlerMessage) {
      counts.runs++;
      print(`attempt ${message.attempt}: processing "${message.text()}"`);
      if (message.attempt === 1) throw new Error('first attempt fails on purpose');
      print(`attempt ${message.attempt}: succeeded`);
    },
    error(error) {
      counts.errorHooks++;
      print(`error hook: ${error instanceof Error ? error.message : String(error)}`);
    },
    failure(outcome) {
      counts.failureHooks++;
      print(`failure hook: ${outcome}`);
    },
    completed() {
      counts.completedHooks++;
    },
  };
  client.handler(queue, handler, { exceptions: 1, delay: 0 });
  const outcomes: Outcome[] = [];
  client.subscriber.on('processed', (event) => {
    outcomes.push(event.outcome);
    print(`delivery from ${event.server} ended with ${event.outcome}`);
  });
  try {
    await client.listen();
    await client.publish(queue, 'a message that fails once');
    await waitFor(() => outcomes.includes('OK') || outcomes.some((o) => o.endsWith('Reached')), 20_000);
  } finally {
    await client.stop();
    await deleteTopology(config, { queues: [queue], exchanges: [queue] });
  }
  return {
    example: 'handling-exceptions',
    ok: counts.runs === 2 && counts.errorHooks === 1 && counts.failureHooks === 0 && outcomes.at(-1) === 'OK',
    elapsedMs: Date.now() - started,
    ...counts,
    outcomes,
  };
}

runIfScript(import.meta.url, () => main());
