/**
 * Publisher throttling (Ruby `examples/throttling.rb`): the publisher watches the length of a queue with a
 * slow consumer (`throttle({ queue: 50 })`, measured every `throttlingRefreshInterval` seconds over all
 * brokers). While the queue holds more than 50 messages every publish waits 1 s, so the consumer catches up;
 * below the limit the publisher runs at full speed again.
 *
 *   npx tsx examples/src/throttling.ts
 */
import { Client } from '@beetle/client';
import {
  deleteTopology,
  exampleConfig,
  output,
  runId,
  runIfScript,
  sleep,
  waitFor,
  type ExampleOptions,
  type ExampleSummary,
} from './support.js';

export interface ThrottlingOptions extends ExampleOptions {
  /** Messages to publish (default 300). */
  readonly count?: number;
  /** Queue length above which publishing is throttled (default 50). */
  readonly limit?: number;
  /** Milliseconds the consumer spends per message (default 40: 25 msgs/s). */
  readonly handlerMs?: number;
  /** Milliseconds between two publishes when not throttled (default 5). */
  readonly publishIntervalMs?: number;
  /** Seconds between queue length measurements (default 1). */
  readonly refreshInterval?: number;
}

export interface ThrottlingSummary extends ExampleSummary {
  readonly published: number;
  readonly handled: number;
  readonly limit: number;
  /** Publishes made while the publisher was throttled. */
  readonly throttledPublishes: number;
  /** Changes of the throttling state as observed: `throttled` / `unthrottled` with the time. */
  readonly transitions: readonly { state: 'throttled' | 'unthrottled'; atMs: number }[];
  readonly becameThrottled: boolean;
  readonly unthrottledAtEnd: boolean;
}

export async function main(options: ThrottlingOptions = {}): Promise<ThrottlingSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const count = options.count ?? 300;
  const limit = options.limit ?? 50;
  const handlerMs = options.handlerMs ?? 40;
  const publishIntervalMs = options.publishIntervalMs ?? 5;
  const queue = `beetle-example-throttling-${runId()}`;
  const config = exampleConfig(
    options,
    { throttlingRefreshInterval: options.refreshInterval ?? 1, prefetchCount: 1, subscriberConcurrency: 1 },
    logger,
  );
  const client = new Client({ config, logger }).queue(queue).message<typeof queue, number>(queue);
  let handled = 0;
  client.handler(queue, async () => {
    await sleep(handlerMs);
    handled++;
  });
  const transitions: { state: 'throttled' | 'unthrottled'; atMs: number }[] = [];
  let state: 'throttled' | 'unthrottled' = 'unthrottled';
  const watch = setInterval(() => {
    const now = client.publisher.throttlingStatus();
    if (now === state) return;
    state = now;
    transitions.push({ state, atMs: Date.now() - started });
    print(`publisher ${state} (published ${published}, handled ${handled})`);
  }, 50);
  let published = 0;
  let throttledPublishes = 0;
  try {
    await client.listen();
    client.throttle({ [queue]: limit });
    print(
      `publishing ${count} messages; consumer needs ${handlerMs} ms per message; throttling above ${limit}`,
    );
    const progress = setInterval(() => print(`published ${published}, handled ${handled}, ${state}`), 1000);
    try {
      for (let n = 1; n <= count; n++) {
        if (client.throttled()) throttledPublishes++;
        await client.publish(queue, n);
        published++;
        await sleep(publishIntervalMs);
      }
    } finally {
      clearInterval(progress);
    }
    print(`published ${count} messages (${throttledPublishes} of them throttled, 1 s each)`);
    await waitFor(() => handled >= count, count * (handlerMs + 50) + 10_000);
    // The next measurement finds the queue empty.
    await waitFor(() => !client.throttled(), (options.refreshInterval ?? 1) * 1000 + 5000);
  } finally {
    clearInterval(watch);
    await client.stop();
    await deleteTopology(config, { queues: [queue], exchanges: [queue] });
  }
  const becameThrottled = transitions.some((t) => t.state === 'throttled') || throttledPublishes > 0;
  const unthrottledAtEnd = !client.throttled();
  return {
    example: 'throttling',
    ok: handled === count && becameThrottled && unthrottledAtEnd,
    elapsedMs: Date.now() - started,
    published,
    handled,
    limit,
    throttledPublishes,
    transitions,
    becameThrottled,
    unthrottledAtEnd,
  };
}

runIfScript(import.meta.url, () => main());
