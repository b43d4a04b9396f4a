/**
 * The ceiling: raw amqplib doing the broker work of N redundant messages and nothing else. Each message is
 * published as two confirmed persistent copies (one per broker, Beetle's envelope built by hand), with the
 * same window of publishes in flight as Beetle's `publisherMaxInFlight`; one consumer per broker with the
 * same prefetch as the Beetle subscriber acks every copy at once. No dedup store, no processing state.
 */
import { performance } from 'node:perf_hooks';
import type amqp from 'amqplib';
import {
  PREFETCH,
  WINDOW,
  confirmedPublish,
  declareBeetleQueue,
  deleteBeetleQueue,
  drive,
  drivePaced,
  rawBroker,
  rawProperties,
  suffix,
  waitUntil,
  type RawBroker,
} from './common.js';
import { startMeters, summarize, type E2eHarness, type E2eRun } from './e2e-harness.js';

export async function rawE2e(servers: readonly string[]): Promise<E2eHarness> {
  if (servers.length < 2) throw new Error('the redundant ceiling needs two brokers');
  const queue = `bench-raw-e2e-${suffix()}`;
  const publishers = await Promise.all(servers.slice(0, 2).map(rawBroker));
  const consumers: { connection: amqp.ChannelModel; channel: amqp.Channel }[] = [];
  for (const p of publishers) await declareBeetleQueue(p, queue);

  let acked = 0;
  let seq = 0;
  const started = new Map<number, number>();
  const latencies: number[] = [];
  const seen = new Set<number>();
  for (const p of publishers) {
    // A separate connection per broker for consuming, as Beetle's subscriber has.
    const connection = (await rawBroker(p.server)).connection;
    const channel = await connection.createChannel();
    await channel.prefetch(PREFETCH, false);
    await channel.consume(
      queue,
      (message) => {
        if (message === null) return;
        channel.ack(message);
        const i = Number(message.content.toString('latin1'));
        if (!seen.has(i)) {
          seen.add(i);
          const t0 = started.get(i);
          if (t0 !== undefined) latencies.push(performance.now() - t0);
        } else {
          seen.delete(i);
          started.delete(i);
        }
        acked++;
      },
      { noAck: false },
    );
    consumers.push({ connection, channel });
  }

  const run = async (messages: number, rate?: number): Promise<E2eRun> => {
    acked = 0;
    latencies.length = 0;
    const meters = startMeters();
    const t0 = performance.now();
    const pace = (op: () => Promise<void>): Promise<void> =>
      rate === undefined ? drive(messages, WINDOW, op) : drivePaced(messages, rate, WINDOW, op);
    await pace(async () => {
      const i = seq++;
      const body = Buffer.from(String(i), 'latin1');
      const properties = rawProperties(true);
      started.set(i, performance.now());
      await Promise.all(publishers.map((p: RawBroker) => confirmedPublish(p, queue, body, properties)));
    });
    await waitUntil(() => acked >= 2 * messages, 120_000, `${2 * messages} raw copies consumed`);
    const seconds = (performance.now() - t0) / 1000;
    return summarize(messages, seconds, latencies, meters, {
      handlerRuns: messages,
      requeues: 0,
    });
  };

  return {
    name: 'raw amqplib (redundant ceiling)',
    settings: `2 confirmed persistent publishes per message (window ${WINDOW}), prefetch ${PREFETCH}, immediate ack`,
    run,
    async close() {
      for (const c of consumers) await c.connection.close();
      for (const p of publishers) {
        await deleteBeetleQueue(p, queue);
        await p.connection.close();
      }
    },
  };
}
