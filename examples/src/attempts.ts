/**
 * An always failing handler with `exceptions: 10, delay: 0` (Ruby `examples/attempts.rb`): Beetle runs it
 * exactly 11 times, then gives up; the `failure` hook ends the example. Each rejected delivery goes back to
 * the queue after `rejectRequeueDelay` (1 s by default).
 *
 *   npx tsx examples/src/attempts.ts
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

export interface AttemptsOptions extends ExampleOptions {
  /** Failures tolerated (default 10): the handler runs `exceptions + 1` times. */
  readonly exceptions?: number;
}

export interface AttemptsSummary extends ExampleSummary {
  readonly exceptions: number;
  readonly runs: number;
  readonly expectedRuns: number;
  readonly errorHooks: number;
  readonly failureHooks: number;
  readonly finalOutcome: Outcome | undefined;
  /** Deliveries that carried an `x-death` header (only with dead lettering). */
  readonly xDeathDeliveries: number;
}

export async function main(options: AttemptsOptions = {}): Promise<AttemptsSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const exceptions = options.exceptions ?? 10;
  const queue = `beetle-example-attempts-${runId()}`;
  const config = exampleConfig(options, {}, logger);
  const client = new Client({ config, logger }).queue(queue).message<typeof queue, string>(queue);
  let runs = 0;
  let errorHooks = 0;
  let xDeathDeliveries = 0;
  let finalOutcome: Outcome | undefined;
  const handler: HandlerObject = {
    process(message: HandlerMessage) {
      runs++;
      const xDeath = message.headers['x-death'];
      if (Array.isArray(xDeath)) xDeathDeliveries++;
      print(
        `attempt ${message.attempt}: failing (redelivered: ${message.redelivered}, x-death: ${
          Array.isArray(xDeath) ? JSON.stringify(xDeath.map((d: { count?: unknown }) => d.count)) : 'none'
        })`,
      );
      throw new Error(`attempt ${message.attempt} failed`);
    },
    error() {
      errorHooks++;
    },
    failure(outcome) {
      finalOutcome = outcome;
      print(`failure hook: giving up after ${runs} runs (${outcome})`);
    },
  };
  client.handler(queue, handler, { exceptions, delay: 0 });
  try {
    await client.listen();
    await client.publish(queue, 'a message that always fails');
    await waitFor(() => finalOutcome !== undefined, (exceptions + 1) * 3000 + 10_000);
    // Nothing may run after the failure: give a stray redelivery the chance to show up.
    await waitFor(() => runs > exceptions + 1, 300);
  } finally {
    await client.stop();
    await deleteTopology(config, { queues: [queue], exchanges: [queue] });
  }
  return {
    example: 'attempts',
    ok: runs === exceptions + 1 && finalOutcome !== undefined && errorHooks === runs,
    elapsedMs: Date.now() - started,
    exceptions,
    runs,
    expectedRuns: exceptions + 1,
    errorHooks,
    failureHooks: finalOutcome === undefined ? 0 : 1,
    finalOutcome,
    xDeathDeliveries,
  };
}

runIfScript(import.meta.url, () => main());
