/**
 * Publish throughput with confirms: Beetle's Publisher vs raw amqplib doing the same broker work, in one run.
 *
 *   npx tsx bench/src/publish.ts [--messages N] [--window W] [--rounds R] [--json]
 *
 * Both sides send persistent, confirmed messages with the same envelope (message id, timestamp, Beetle headers)
 * to a durable queue, W publishes in flight at a time (W workers, each awaiting its confirm; W is also Beetle's
 * `publisherMaxInFlight`):
 * - non-redundant: one copy per message, alternating between the two brokers;
 * - redundant: one copy on each of the two brokers per message, both confirms awaited.
 * Servers: BEETLE_TEST_SERVERS (default 127.0.0.1:5672,127.0.0.1:5673).
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import amqp from 'amqplib';
import { createConfig, Topology } from '@beetle/core';
import { Publisher } from '@beetle/publisher';

const { values } = parseArgs({
  options: {
    messages: { type: 'string', default: '20000' },
    window: { type: 'string', default: '1000' },
    rounds: { type: 'string', default: '3' },
    json: { type: 'boolean', default: false },
  },
});
const messages = Number(values.messages);
const window = Number(values.window);
const rounds = Number(values.rounds);
const servers = (process.env.BEETLE_TEST_SERVERS ?? '127.0.0.1:5672,127.0.0.1:5673').split(',').slice(0, 2);
if (servers.length < 2) throw new Error('two brokers needed');
const log = (line: string): void => {
  if (!values.json) process.stdout.write(`${line}\n`);
};

const suffix = randomUUID().slice(0, 8);
const plain = `bench-publish-${suffix}`;
const redundantName = `bench-publish-redundant-${suffix}`;
const body = Buffer.from('{"seq":42}');

interface Run {
  rate: number;
  /** Process CPU (user + system) per message, microseconds: more stable than rates on a busy machine. */
  cpu: number;
}

/** Runs `count` operations with `window` of them in flight; returns msgs/s. */
async function drive(count: number, op: (i: number) => Promise<unknown>): Promise<Run> {
  let next = 0;
  const cpuBefore = process.cpuUsage();
  const started = process.hrtime.bigint();
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      await op(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(window, count) }, worker));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = process.cpuUsage(cpuBefore);
  return { rate: count / seconds, cpu: (cpu.user + cpu.system) / count };
}

interface RawBroker {
  connection: amqp.ChannelModel;
  channel: amqp.ConfirmChannel;
}

async function rawBroker(server: string): Promise<RawBroker> {
  const [host, port] = server.split(':');
  const connection = await amqp.connect(
    {
      protocol: 'amqp',
      hostname: host,
      port: Number(port),
      username: 'guest',
      password: 'guest',
      vhost: '/',
    },
    { noDelay: true },
  );
  const channel = await connection.createConfirmChannel();
  return { connection, channel };
}

/** Raw amqplib: build the same envelope, publish, await the confirm (waiting for drain when told to). */
function rawPublish(broker: RawBroker, exchange: string, redundantFlag: string): Promise<void> {
  const now = Math.floor(Date.now() / 1000);
  const properties = {
    messageId: randomUUID(),
    timestamp: now,
    headers: { format_version: '1', flags: redundantFlag, expires_at: String(now + 86400) },
    deliveryMode: 2,
    contentType: 'application/octet-stream',
    priority: 0,
  };
  return new Promise<void>((resolve, reject) => {
    broker.channel.publish(exchange, exchange, body, properties, (error: unknown) =>
      error ? reject(error instanceof Error ? error : new Error('nacked')) : resolve(),
    );
  });
}

async function purge(brokers: RawBroker[]): Promise<void> {
  for (const b of brokers) {
    await b.channel.purgeQueue(plain);
    await b.channel.purgeQueue(redundantName);
  }
}

async function main(): Promise<void> {
  const brokers = await Promise.all(servers.map(rawBroker));
  for (const b of brokers) {
    for (const name of [plain, redundantName]) {
      await b.channel.assertExchange(name, 'topic', { durable: true });
      await b.channel.assertQueue(name, { durable: true, exclusive: false, autoDelete: false });
      await b.channel.bindQueue(name, name, name);
    }
  }
  const topology = new Topology()
    .registerQueue(plain)
    .registerMessage(plain)
    .registerQueue(redundantName)
    .registerMessage(redundantName, { redundant: true });
  const publisher = new Publisher({
    config: createConfig({ servers, publisherMaxInFlight: window, publishTimeout: 60 }),
    topology,
  });
  // Warm up both sides (connections, lazy declarations, JIT).
  const warm = Math.min(2000, messages);
  await drive(warm, () => publisher.publish(plain, body));
  await drive(warm, () => publisher.publish(redundantName, body));
  await drive(warm, (i) => rawPublish(brokers[i % 2]!, plain, '0'));
  await purge(brokers);

  log(
    `publishing ${messages} persistent confirmed messages, window ${window}, brokers ${servers.join(', ')}`,
  );
  const results: Record<
    string,
    { beetle: number; raw: number; ratio: number; beetleCpuUs: number; rawCpuUs: number; rounds: number[] }
  > = {};
  for (const mode of ['non-redundant', 'redundant'] as const) {
    const beetleRuns: Run[] = [];
    const rawRuns: Run[] = [];
    // Alternate the two sides several times so that drift of the (shared) brokers affects both alike.
    for (let round = 0; round < rounds; round++) {
      rawRuns.push(
        mode === 'redundant'
          ? await drive(messages, () =>
              Promise.all([
                rawPublish(brokers[0]!, redundantName, '1'),
                rawPublish(brokers[1]!, redundantName, '1'),
              ]),
            )
          : await drive(messages, (i) => rawPublish(brokers[i % 2]!, plain, '0')),
      );
      await purge(brokers);
      beetleRuns.push(
        mode === 'redundant'
          ? await drive(messages, async () => {
              if ((await publisher.publish(redundantName, body)) !== 2) throw new Error('not redundant');
            })
          : await drive(messages, () => publisher.publish(plain, body)),
      );
      await purge(brokers);
    }
    const best = (runs: Run[]): Run => runs.reduce((a, b) => (b.rate > a.rate ? b : a));
    const beetle = best(beetleRuns);
    const raw = best(rawRuns);
    results[mode] = {
      beetle: Math.round(beetle.rate),
      raw: Math.round(raw.rate),
      ratio: Number((beetle.rate / raw.rate).toFixed(3)),
      beetleCpuUs: Number(beetle.cpu.toFixed(1)),
      rawCpuUs: Number(raw.cpu.toFixed(1)),
      rounds: beetleRuns.map((b, i) => Number((b.rate / rawRuns[i]!.rate).toFixed(3))),
    };
    log(
      `${mode.padEnd(14)} beetle ${Math.round(beetle.rate).toString().padStart(7)} msgs/s   raw amqplib ${Math.round(
        raw.rate,
      )
        .toString()
        .padStart(
          7,
        )} msgs/s   ratio ${(beetle.rate / raw.rate).toFixed(2)}   (client CPU/msg: beetle ${beetle.cpu.toFixed(
        1,
      )} µs, raw ${raw.cpu.toFixed(1)} µs; per-round ratios ${results[mode].rounds.join(', ')})`,
    );
  }
  await publisher.close();
  for (const b of brokers) {
    for (const name of [plain, redundantName]) {
      await b.channel.deleteQueue(name);
      await b.channel.deleteExchange(name);
    }
    // The Publisher's lazy setup also published policy messages; they are not ours to delete.
    await b.connection.close();
  }
  if (values.json)
    process.stdout.write(`${JSON.stringify({ messages, window, rounds, servers, results })}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
