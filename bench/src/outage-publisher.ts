/**
 * Child process of the outage benchmark: publishes redundant messages with a Beetle `Publisher` as fast as its
 * in-flight window allows, for `--seconds`, and prints one JSON line of counters per second on stdout.
 *
 *   node --import tsx bench/src/outage-publisher.ts --servers a:1,b:2 --queue q --seconds 65
 */
import { parseArgs } from 'node:util';
import { Topology, createConfig } from '@beetle/core';
import { Publisher } from '@beetle/publisher';
import { WINDOW } from './common.js';

const { values } = parseArgs({
  options: {
    servers: { type: 'string' },
    queue: { type: 'string' },
    seconds: { type: 'string', default: '60' },
  },
});
if (values.servers === undefined || values.queue === undefined)
  throw new Error('--servers and --queue needed');
const queue = values.queue;
const seconds = Number(values.seconds);
const config = createConfig({
  servers: values.servers,
  publisherMaxInFlight: WINDOW,
  publishTimeout: 30,
  publisherConnectTimeout: 2,
});
const topology = new Topology().registerQueue(queue).registerMessage(queue, { redundant: true });
const publisher = new Publisher({ config, topology });

const counts = { published: 0, copies1: 0, copies2: 0, errors: 0 };
const errorKinds = new Map<string, number>();
const started = Date.now();
const body = Buffer.from('{"seq":42}');
const emit = (event: string): void => {
  const memory = process.memoryUsage();
  process.stdout.write(
    `${JSON.stringify({
      event,
      t: (Date.now() - started) / 1000,
      ...counts,
      errorKinds: Object.fromEntries(errorKinds),
      heapUsedMb: Math.round(memory.heapUsed / 2 ** 20),
      rssMb: Math.round(memory.rss / 2 ** 20),
      inFlight: publisher.inFlight,
      waiting: publisher.waiting,
      dead: publisher.deadServers(),
    })}\n`,
  );
};

async function worker(): Promise<void> {
  while (Date.now() - started < seconds * 1000) {
    try {
      const copies = await publisher.publish(queue, body);
      counts.published++;
      if (copies === 2) counts.copies2++;
      else counts.copies1++;
    } catch (error) {
      counts.errors++;
      const name = error instanceof Error ? error.name : 'unknown';
      errorKinds.set(name, (errorKinds.get(name) ?? 0) + 1);
      // A failing publish fails fast: do not spin.
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
}

async function main(): Promise<void> {
  // Both brokers answer before the clock starts (in `--dead-port` mode only one does).
  await publisher.publish(queue, body);
  emit('ready');
  const ticker = setInterval(() => emit('tick'), 1000);
  await Promise.all(Array.from({ length: WINDOW }, worker));
  clearInterval(ticker);
  emit('done');
  await publisher.close({ timeout: 5 });
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
