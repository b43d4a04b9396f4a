/**
 * Custom headers (Ruby `examples/headers.rb`): a message published with a string, an integer, a float and a
 * null header. Handlers see the headers as they travel on the wire: the null one is dropped, Beetle's own
 * (`format_version`, `flags`, `expires_at`) are added.
 *
 *   npx tsx examples/src/headers.ts
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

export const SENT_HEADERS = { sender: 'headers-example', count: 42, ratio: 3.25, nothing: null } as const;

export interface HeadersSummary extends ExampleSummary {
  readonly sent: Readonly<Record<string, unknown>>;
  /** The headers the handler saw (null if it saw no message). */
  readonly received: Readonly<Record<string, unknown>> | null;
  readonly nullDropped: boolean;
}

export async function main(options: ExampleOptions = {}): Promise<HeadersSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const queue = `beetle-example-headers-${runId()}`;
  const config = exampleConfig(options, {}, logger);
  const client = new Client({ config, logger }).queue(queue).message<typeof queue, string>(queue);
  const seen: { headers?: Record<string, unknown> } = {};
  client.handler(queue, (message) => {
    seen.headers = { ...message.headers };
    for (const [key, value] of Object.entries(message.headers)) {
      print(`header ${key} = ${JSON.stringify(value)} (${typeof value})`);
    }
  });
  try {
    await client.listen();
    await client.publish(queue, 'a message with headers', { headers: SENT_HEADERS });
    await waitFor(() => seen.headers !== undefined, 10_000);
  } finally {
    await client.stop();
    await deleteTopology(config, { queues: [queue], exchanges: [queue] });
  }
  const got = seen.headers ?? null;
  const nullDropped = got !== null && !('nothing' in got);
  return {
    example: 'headers',
    ok:
      got !== null &&
      got.sender === SENT_HEADERS.sender &&
      got.count === SENT_HEADERS.count &&
      got.ratio === SENT_HEADERS.ratio &&
      nullDropped,
    elapsedMs: Date.now() - started,
    sent: SENT_HEADERS,
    received: got,
    nullDropped,
  };
}

runIfScript(import.meta.url, () => main());
