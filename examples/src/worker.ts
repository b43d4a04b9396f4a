/**
 * A long-running consumer for messages sent from elsewhere, e.g. by the `beetle` command:
 *
 *   npx tsx examples/src/worker.ts                    # terminal 1: waits for messages
 *   pnpm beetle publish beetle-demo 'hello' --redundant --servers 127.0.0.1:5672,127.0.0.1:5673  # terminal 2
 *
 * It consumes queue `beetle-demo` (bound to exchange `beetle-demo` with key `beetle-demo`, Ruby's defaults
 * for a message of that name), prints each message once, and stops on SIGINT/SIGTERM or after `--count N`.
 */
import { Client, RedisDedupStore } from '@beetle/client';
import { exampleConfig, output, runIfScript, type ExampleOptions, type ExampleSummary } from './support.js';

export const WORKER_QUEUE = 'beetle-demo';

export interface WorkerOptions extends ExampleOptions {
  readonly queue?: string;
  /** Stop after this many handled messages (default: run until a signal, or `signal` aborts). */
  readonly count?: number;
  readonly signal?: AbortSignal;
  /** Called once the worker consumes on every broker (tests publish then). */
  readonly onReady?: () => void;
}

export interface WorkerSummary extends ExampleSummary {
  readonly handled: readonly { uuid: string; body: string; redundant: boolean; server: string }[];
}

export async function main(options: WorkerOptions = {}): Promise<WorkerSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const queue = options.queue ?? WORKER_QUEUE;
  const config = exampleConfig(options, {}, logger);
  const store = RedisDedupStore.fromConfig(config, { logger });
  const client = new Client({ config, logger, store }).queue(queue);
  const handled: { uuid: string; body: string; redundant: boolean; server: string }[] = [];
  const done = new AbortController();
  const stop = (): void => done.abort();
  options.signal?.addEventListener('abort', stop, { once: true });
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  client.handler(queue, (message) => {
    const entry = {
      uuid: message.uuid,
      body: message.text(),
      redundant: message.redundant,
      server: message.server,
    };
    handled.push(entry);
    print(
      `handled ${entry.uuid} from ${entry.server}${entry.redundant ? ' (redundant)' : ''}: ${entry.body}`,
    );
    if (options.count !== undefined && handled.length >= options.count) stop();
  });
  try {
    await client.listen();
    print(
      `worker consuming ${queue} on ${config.servers.join(', ')}; publish with: pnpm beetle publish ${queue} 'hello' --servers ${config.servers.join(',')}`,
    );
    options.onReady?.();
    if (!done.signal.aborted) await new Promise((resolve) => done.signal.addEventListener('abort', resolve));
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    await client.stop();
    await store.close();
  }
  return {
    example: 'worker',
    ok: options.count === undefined || handled.length >= options.count,
    elapsedMs: Date.now() - started,
    handled,
  };
}

runIfScript(import.meta.url, () => {
  const countIndex = process.argv.indexOf('--count');
  const count = countIndex > 0 ? Number(process.argv[countIndex + 1]) : undefined;
  return main(count === undefined ? {} : { count });
});
