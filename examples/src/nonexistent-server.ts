/**
 * A broker that does not exist among the configured servers (Ruby `examples/nonexistent_server.rb`): the
 * configuration names a live broker and one whose host name does not resolve. Publishing fails over to the
 * live broker (the dead one is taken out of the rotation), the subscriber consumes from the live broker and
 * keeps trying to reach the other one with exponential backoff, logging each attempt.
 *
 *   npx tsx examples/src/nonexistent-server.ts
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

export interface NonexistentServerOptions extends ExampleOptions {
  /** The broker that does not answer (default `nonexistent-broker.invalid:5672`, which never resolves). */
  readonly deadServer?: string;
  /** Messages to publish (default 10). */
  readonly count?: number;
  /** Milliseconds to keep listening after everything was handled, to see reconnect attempts (default 3000). */
  readonly linger?: number;
}

export interface NonexistentServerSummary extends ExampleSummary {
  readonly liveServer: string;
  readonly deadServer: string;
  readonly published: number;
  readonly handled: number;
  /** Failed connection attempts of the subscriber to the dead broker. */
  readonly reconnectAttempts: number;
  /** Failed publish attempts on the dead broker before it was taken out of the rotation. */
  readonly publishFailovers: number;
  readonly deadServersOfPublisher: readonly string[];
}

export async function main(options: NonexistentServerOptions = {}): Promise<NonexistentServerSummary> {
  const started = Date.now();
  const { print, logger } = output(options);
  const count = options.count ?? 10;
  const deadServer = options.deadServer ?? 'nonexistent-broker.invalid:5672';
  const queue = `beetle-example-nonexistent-server-${runId()}`;
  const base = exampleConfig(options, {}, logger);
  const liveServer = base.servers[0] ?? '127.0.0.1:5672';
  const config = exampleConfig(
    options,
    { servers: [liveServer, deadServer], subscriberReconnectDelay: 0.5, subscriberReconnectMaxDelay: 2 },
    logger,
  );
  print(`servers: ${config.servers.join(', ')} (${deadServer} does not exist)`);
  const client = new Client({ config, logger }).queue(queue).message<typeof queue, number>(queue);
  let handled = 0;
  client.handler(queue, (message) => {
    handled++;
    print(`handled message ${message.text()} from ${message.server}`);
  });
  let reconnectAttempts = 0;
  client.subscriber.on('error', (event) => {
    if (event.phase !== 'connect' || event.server !== deadServer) return;
    reconnectAttempts++;
    const reason = event.error instanceof Error ? event.error.message : String(event.error);
    print(
      `subscriber: connection attempt ${reconnectAttempts} to ${deadServer} failed (${reason}); will retry`,
    );
  });
  let publishFailovers = 0;
  client.publisher.on('failover', (event) => {
    publishFailovers++;
    print(`publisher: ${event.server} failed, failing over`);
  });
  client.publisher.on('brokerDead', (event) => print(`publisher: ${event.server} taken out of the rotation`));
  let deadServersOfPublisher: string[] = [];
  try {
    const status = await client.listen();
    for (const broker of status) print(`subscriber: ${broker.server} is ${broker.state}`);
    for (let n = 1; n <= count; n++) await client.publish(queue, n);
    print(`published ${count} messages`);
    await waitFor(() => handled >= count, 15_000);
    deadServersOfPublisher = client.publisher.deadServers();
    await sleep(options.linger ?? 3000);
  } finally {
    await client.stop();
    await deleteTopology(config, { queues: [queue], exchanges: [queue] });
  }
  return {
    example: 'nonexistent-server',
    ok: handled === count && reconnectAttempts >= 1,
    elapsedMs: Date.now() - started,
    liveServer,
    deadServer,
    published: count,
    handled,
    reconnectAttempts,
    publishFailovers,
    deadServersOfPublisher,
  };
}

runIfScript(import.meta.url, () => main());
