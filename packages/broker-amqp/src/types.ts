import type { BrokerAddress, ExchangeDefinition, Logger, QueueDefinition, RawDelivery } from '@beetle/core';
import type { EnvelopeProperties } from '@beetle/core/kit';

/**
 * The seams of the broker layer. The publisher and the subscriber depend on these interfaces only, so a
 * test (or a user) can put another implementation behind them.
 */

/** Settings for one broker, derived from the Beetle configuration (durations in seconds). */
export interface BrokerOptions {
  readonly address: BrokerAddress;
  /** Heartbeat in seconds; `'server'` accepts the broker's proposal; 0 turns heartbeats off (as in Ruby). */
  readonly heartbeat: number | 'server';
  readonly connectTimeout: number;
  /** Bound for every broker round trip (declare, bind, purge, confirm, close). */
  readonly operationTimeout: number;
  readonly frameMax: number;
  readonly channelMax: number;
  /** Shown in the RabbitMQ UI; suffixed with the pid and role. */
  readonly connectionName: string | undefined;
  readonly logger: Logger;
  /** Publisher confirms on the shared publish channel (default true). */
  readonly confirms?: boolean;
  /** Heartbeat of the CONSUMING connection (default: `heartbeat`); the subscriber passes `subscriberHeartbeat`. */
  readonly consumerHeartbeat?: number | 'server';
  /** Connect timeout of the CONSUMING connection in seconds (default: `connectTimeout`). */
  readonly consumerConnectTimeout?: number;
}

/** A delivery handed to a consumer callback: what decoding reads (core's `RawDelivery`) and its tags. */
export interface Delivery extends RawDelivery {
  readonly fields: RawDelivery['fields'] & { readonly deliveryTag: number; readonly consumerTag: string };
}

export interface PublishOptions {
  readonly mandatory?: boolean;
}

/** A channel for publishing; with confirms, `publish` resolves when the broker confirmed the message. */
export interface PublishChannel {
  readonly server: string;
  /**
   * Resolves once the broker confirmed (confirm mode) or the frame was written (no confirms). Rejects with a
   * `BrokerError` on nack, channel/connection loss or `operationTimeout`. Waits for `drain` and for an
   * unblocked connection instead of buffering without limit (bounded by the timeout).
   */
  publish(
    exchange: string,
    routingKey: string,
    body: Buffer,
    properties: Partial<EnvelopeProperties> & Record<string, unknown>,
    options?: PublishOptions,
  ): Promise<void>;
}

/** A channel carrying consumers, kept apart from publishing so a slow consumer never stalls publishing. */
export interface ConsumerChannel {
  readonly server: string;
  /**
   * Starts consuming with manual acks; returns the consumer tag. `onCancel` is called (once) when the BROKER
   * cancels the consumer (basic.cancel, e.g. the queue was deleted); not after `cancel()` or a channel loss.
   * No deliveries arrive for that consumer afterwards.
   */
  consume(queue: string, onDelivery: (delivery: Delivery) => void, onCancel?: () => void): Promise<string>;
  /** basic.cancel. */
  cancel(consumerTag: string): Promise<void>;
  /**
   * basic.ack, written with the other acks of this loop turn (in the check phase; a run of acked deliveries
   * as one `multiple` ack); false (and a log line) when the channel is already gone — the broker will
   * redeliver. A nack, reject or `close()` writes the waiting acks first.
   */
  ack(delivery: Delivery): boolean;
  /**
   * Hands the delivery back: requeued with basic.nack (requeue, not multiple), or dead-lettered with
   * basic.reject (requeue false); false when the channel is already gone.
   */
  reject(delivery: Delivery, requeue: boolean): boolean;
  /**
   * Publishes a copy of the delivery (same body and properties, `x-delivery-count` left out) to `queue` through
   * the default exchange, on a confirm channel of the same connection; resolves once the broker confirmed it.
   * The caller then acks the original: the queue's delivery count starts over (quorum queues' delivery-limit).
   */
  republish(queue: string, delivery: Delivery): Promise<void>;
  /** Publishes on this channel without confirms (RPC replies). */
  publish(
    exchange: string,
    routingKey: string,
    body: Buffer,
    properties: Record<string, unknown>,
  ): Promise<void>;
  /** Fires once when the channel or its connection is gone (the error, if any, says why). */
  onClose(listener: (error: Error | undefined) => void): void;
  close(): Promise<void>;
}

/** Declaring topology on one broker exactly as Ruby does (reference §5.5, §6.1). */
export interface TopologyDeclarer {
  declareExchange(exchange: ExchangeDefinition): Promise<void>;
  /** Declares the queue (and its `_dead_letter` queue when dead lettering is on). */
  declareQueue(queue: QueueDefinition): Promise<void>;
  bindQueue(queue: string, exchange: string, key: string): Promise<void>;
  /** Message count of a queue (passive declare); for throttling and status. */
  queueLength(queue: string): Promise<number>;
  purgeQueue(queue: string): Promise<void>;
}

/** Which of the two connections to a broker. */
export type ConnectionRole = 'publisher' | 'consumer';

/** Passed to `onLost` listeners. */
export interface ConnectionLostEvent {
  readonly server: string;
  readonly role: ConnectionRole;
  /** Why it died; `undefined` for an orderly close initiated by the broker without an error. */
  readonly error: Error | undefined;
}

/** The last error a connection or channel reported in the background (not as the result of a call). */
export interface BackgroundError {
  readonly error: Error;
  /** `Date.now()` when it was recorded. */
  readonly at: number;
  readonly role: ConnectionRole;
}

/** One broker as the publisher needs it; `BrokerConnection` implements it. */
export interface PublisherConnection {
  readonly server: string;
  /**
   * The shared publish channel if it is open right now (no connect, no await): the fast path of a publish;
   * `undefined` means "call `publishChannel()`".
   */
  readyPublishChannel(): PublishChannel | undefined;
  /** The shared publish channel, (re)opened on demand. */
  publishChannel(): Promise<PublishChannel>;
  /** A declarer on the publishing connection. */
  declarer(): Promise<TopologyDeclarer>;
  /** Whether the publishing connection is open right now. */
  readonly publisherConnected: boolean;
  /** Called whenever one of the broker's connections dies; returns an unsubscribe function. */
  onLost(listener: (event: ConnectionLostEvent) => void): () => void;
  /** The last background error (connection or channel error event, missed heartbeats), if any. */
  readonly lastBackgroundError: BackgroundError | undefined;
}

/** Connections per broker (`host:port`) as the publisher needs them; `BrokerPool` implements it. */
export interface PublisherPool {
  get(server: string): PublisherConnection;
  /** Whether the pool is closed (`get` then throws); optional for pools of one's own. */
  readonly closed?: boolean;
}
