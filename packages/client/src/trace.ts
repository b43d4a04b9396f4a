import { hostname } from 'node:os';
import { setupQueue } from '@beetle/broker-amqp';
import { MemoryDedupStore, Topology, type BeetleConfig, type Logger } from '@beetle/core';
import { Subscriber, type HandlerMessage, type QueueSetup, type SubscriberPool } from '@beetle/subscriber';

/** Receives each traced message once (the two copies of a redundant message are deduplicated). */
export type Tracer = (message: HandlerMessage) => void | Promise<void>;

export interface TraceHandle {
  /** The temporary queues, per traced queue. */
  readonly queues: Readonly<Record<string, string>>;
  stop(): Promise<void>;
}

/** Ruby `Beetle.hostname`: the first label of the host name. */
export const shortHostname = (): string => hostname().split('.')[0] ?? 'localhost';

export const traceQueueName = (queue: string, host = shortHostname()): string => `trace-${queue}-${host}`;

/**
 * Ruby `Client#trace`, without mutating the declared topology: a separate topology holds temporary
 * auto-delete queues `trace-<queue>-<host>` with the same bindings as the traced queues, consumed by a
 * separate subscriber with an in-memory dedup store (tracing never writes to the shared store) and without
 * policies.
 */
export async function startTrace(params: {
  config: BeetleConfig;
  topology: Topology;
  queues: readonly string[];
  tracer: Tracer;
  pool?: SubscriberPool;
  logger: Logger;
}): Promise<TraceHandle> {
  const { config, topology, logger } = params;
  const traceTopology = new Topology(config);
  const names: Record<string, string> = {};
  for (const queue of params.queues) {
    const original = topology.queue(queue);
    const name = traceQueueName(original.amqpName);
    names[queue] = name;
    const [first, ...rest] = topology.bindings(queue);
    traceTopology.registerQueue(name, {
      autoDelete: true,
      deadLettering: false,
      lazy: false,
      exchange: first?.exchange,
      key: first?.key,
    });
    for (const b of rest) traceTopology.registerBinding(name, { exchange: b.exchange, key: b.key });
  }
  const tracingSetup: QueueSetup = async (channel, server, queue, once) => {
    await setupQueue(channel, traceTopology, queue.name, { server, config, logger, tracing: true, once });
  };
  const subscriber = new Subscriber({
    config,
    topology: traceTopology,
    store: new MemoryDedupStore(),
    setupQueue: tracingSetup,
    logger,
    ...(params.pool ? { pool: params.pool } : {}),
  });
  for (const name of Object.values(names)) {
    subscriber.register(name, (message) => params.tracer(message));
  }
  await subscriber.listen(Object.values(names));
  return {
    queues: names,
    stop: async () => {
      await subscriber.stop();
    },
  };
}
