/**
 * Retries with exponential backoff (Ruby `examples/attempts_with_exponential_backoff.rb`): an always failing
 * handler with `exceptions: 4, delay: 1, maxDelay: 10` runs 5 times; the waits between runs grow
 * 2 s, 4 s, 8 s, 10 s (`delay * 2^attempts`, capped at `maxDelay`). Logs when each attempt ran.
 *
 *   npx tsx examples/src/attempts-with-exponential-backoff.ts
 */
import { Client, type HandlerMessage, type Outcome } from '@beetle/client';
import { nextDelay, retryPolicy } from '@beetle/core/kit';
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

export interface BackoffOptions extends ExampleOptions {
  /** Failures tolerated (default 4). */
  readonly exceptions?: number;
  /** Seconds (default 1). */
  readonly delay?: number;
  /** Seconds (default 10). */
  readonly maxDelay?: number;
}

export interface BackoffSummary extends ExampleSummary {
  readonly deadLettering: boolean;
  readonly runs: number;
  readonly expectedRuns: number;
  /** Milliseconds between consecutive runs. */
  readonly gapsMs: readonly number[];
  /** The waits Beetle schedules, in seconds (the store works in whole seconds). */
  readonly scheduledDelays: readonly number[];
  readonly finalOutcome: Outcome | undefined;
  /** Deliveries that came back through the dead letter queue (`x-death` header). */
  readonly xDeathDeliveries: number;
}

/** The backoff example, with or without dead lettering (shared by both backoff examples). */
export async function runBackoff(
  example: string,
  options: BackoffOptions,
  deadLettering: boolean,
): Promise<BackoffSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const retry = {
    exceptions: options.exceptions ?? 4,
    delay: options.delay ?? 1,
    maxDelay: options.maxDelay ?? 10,
  };
  const queue = `beetle-example-${deadLettering ? 'dlx-' : ''}backoff-${runId()}`;
  const config = exampleConfig(
    options,
    deadLettering ? { deadLetteringEnabled: true, deadLetteringMsgTtl: 1000 } : {},
    logger,
  );
  const client = new Client({ config, logger }).queue(queue).message<typeof queue, string>(queue);
  const runTimes: number[] = [];
  let xDeathDeliveries = 0;
  let finalOutcome: Outcome | undefined;
  const handler: HandlerObject = {
    process(message: HandlerMessage) {
      const now = Date.now();
      const gap = runTimes.length === 0 ? 0 : now - (runTimes.at(-1) ?? now);
      runTimes.push(now);
      const xDeath = message.headers['x-death'];
      if (Array.isArray(xDeath)) xDeathDeliveries++;
      print(
        `attempt ${message.attempt} at +${((now - started) / 1000).toFixed(1)} s` +
          (runTimes.length > 1 ? ` (${(gap / 1000).toFixed(1)} s after the previous one)` : '') +
          (Array.isArray(xDeath) ? `, back from ${queue}_dead_letter` : ''),
      );
      throw new Error(`attempt ${message.attempt} failed`);
    },
    failure(outcome) {
      finalOutcome = outcome;
      print(`failure hook: giving up after ${runTimes.length} runs (${outcome})`);
    },
  };
  client.handler(queue, handler, retry);
  const policy = retryPolicy(retry);
  const scheduledDelays = Array.from({ length: retry.exceptions }, (_, i) => nextDelay(policy, i + 1));
  print(`expecting ${retry.exceptions + 1} runs, waits of ${scheduledDelays.join(', ')} s in between`);
  try {
    await client.listen();
    await client.publish(queue, 'a message that always fails');
    const budget = scheduledDelays.reduce((a, b) => a + b, 0) * 1000 + (retry.exceptions + 1) * 2000 + 10_000;
    await waitFor(() => finalOutcome !== undefined, budget);
    await waitFor(() => runTimes.length > retry.exceptions + 1, 300);
  } finally {
    await client.stop();
    await deleteTopology(config, { queues: [queue], exchanges: [queue] });
  }
  const gapsMs = runTimes.slice(1).map((t, i) => t - (runTimes[i] ?? t));
  return {
    example,
    ok:
      runTimes.length === retry.exceptions + 1 &&
      finalOutcome !== undefined &&
      (!deadLettering || xDeathDeliveries === retry.exceptions),
    elapsedMs: Date.now() - started,
    deadLettering,
    runs: runTimes.length,
    expectedRuns: retry.exceptions + 1,
    gapsMs,
    scheduledDelays,
    finalOutcome,
    xDeathDeliveries,
  };
}

export function main(options: BackoffOptions = {}): Promise<BackoffSummary> {
  return runBackoff('attempts-with-exponential-backoff', options, false);
}

runIfScript(import.meta.url, () => main());
