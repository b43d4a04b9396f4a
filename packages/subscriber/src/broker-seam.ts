/**
 * The subscriber's seam to `@beetle/broker-amqp`: the connections per broker and queue setup. Kept small so
 * the consumer logic does not depend on the broker layer's details, and so tests can put fakes behind
 * `SubscriberPool`. (The concrete `BrokerPool` is only the default, made in `Subscriber.listen`.)
 */
import {
  setupQueue as brokerSetupQueue,
  type ConsumerChannel,
  type Delivery,
  type TopologyDeclarer,
} from '@beetle/broker-amqp';
import type { BeetleConfig, Logger, QueueDefinition, Topology } from '@beetle/core';

export type { Delivery };

/** A consumer channel that also declares topology (what `BrokerConnection.openConsumerChannel` returns). */
export type SubscriberChannel = ConsumerChannel & TopologyDeclarer;

/** One broker as the subscriber needs it; `BrokerConnection` fits (it reconnects lazily on the next use). */
export interface ConsumerConnection {
  openConsumerChannel(prefetch: number): Promise<SubscriberChannel>;
}

/** Connections per broker (`host:port`); `BrokerPool` from `@beetle/broker-amqp` fits. */
export interface SubscriberPool {
  get(server: string): ConsumerConnection;
  close?(): Promise<void>;
}

/** Result of declaring one queue; `policyError` is set when its policies could not be applied/published. */
export interface QueueSetupResult {
  readonly policyError?: unknown;
}

/**
 * Declares a queue on one broker: the queue (and its dead letter queue), its policies and its bindings.
 * `once` memoizes per channel (e.g. the policy queue is declared once per connection, not once per queue).
 */
export type QueueSetup = (
  channel: SubscriberChannel,
  server: string,
  queue: QueueDefinition,
  once: <T>(key: string, fn: () => Promise<T>) => Promise<T>,
) => Promise<QueueSetupResult | void>;

/** `setupQueue` of `@beetle/broker-amqp`; policy update messages go out on the consumer channel. */
export function defaultQueueSetup(config: BeetleConfig, topology: Topology, logger: Logger): QueueSetup {
  return async (channel, server, queue, once) => {
    const result = await brokerSetupQueue(channel, topology, queue.name, {
      server,
      config,
      logger,
      policyPublisher: channel,
      once,
    });
    return result.policy === 'failed' ? { policyError: result.policyError } : {};
  };
}
