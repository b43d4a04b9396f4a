import type {
  BeetleConfig,
  CopyObservation,
  Logger,
  MessageDefinition,
  PublishObservation,
  Topology,
} from '@beetle/core';
import { encodeMessage, Memo, validatePublish, type EncodedMessage } from '@beetle/core/kit';
import {
  setupQueue,
  type PolicyClient,
  type PublishChannel,
  type PublisherConnection,
  type PublisherPool,
  type SetupQueueResult,
  type TopologyDeclarer,
} from '@beetle/broker-amqp';
import type { PlacementOptions, PublisherEmitter } from './types.js';

/** A message ready to go out: encoded and validated once, sent as the same bytes to every broker. */
export interface Prepared {
  readonly name: string;
  readonly exchange: string;
  readonly key: string;
  readonly mandatory: boolean;
  readonly message: EncodedMessage;
  /** A telemetry's observation of this publish: every copy sent is observed. */
  readonly observation?: PublishObservation | undefined;
}

/**
 * Encodes a publish with the registration's defaults under its options, and refuses what cannot be sent or
 * what every consumer would drop (`InvalidPublishError`), before any broker is involved.
 */
export function prepareMessage(
  definition: MessageDefinition,
  payload: unknown,
  options: PlacementOptions,
  messageId: string,
  redundant: boolean,
  context: { readonly config: BeetleConfig; readonly now: (() => number) | undefined },
): Prepared {
  const headers =
    options.headers === undefined
      ? definition.headers
      : definition.headers === undefined
        ? options.headers
        : { ...definition.headers, ...options.headers };
  const message = encodeMessage(payload as Parameters<typeof encodeMessage>[0], {
    messageId,
    redundant,
    ttl: options.ttl ?? definition.ttl,
    headers,
    persistent: options.persistent ?? definition.persistent,
    priority: options.priority ?? definition.priority,
    replyTo: options.replyTo ?? definition.replyTo,
    now: context.now?.(),
  });
  const key = options.key ?? definition.key;
  validatePublish(message, {
    exchange: definition.exchange,
    routingKey: key,
    frameMax: context.config.frameMax,
  });
  return {
    name: definition.name,
    exchange: definition.exchange,
    key,
    mandatory: options.mandatory ?? definition.mandatory,
    message,
    observation: options.observation,
  };
}

/** The same prepared message with flags "0": a redundant publish that can reach only one broker. */
export function withoutRedundantFlag(prepared: Prepared): Prepared {
  const { message } = prepared;
  if (message.properties.headers.flags === '0') return prepared;
  // Spreading keeps the key order: `flags` stays where the encoder put it.
  const headers = { ...message.properties.headers, flags: '0' };
  return { ...prepared, message: { ...message, properties: { ...message.properties, headers } } };
}

/** What every broker target shares: the publisher's configuration and where it reports. */
export interface TargetContext {
  readonly pool: PublisherPool;
  readonly config: BeetleConfig;
  readonly topology: Topology;
  readonly logger: Logger;
  readonly policies: PolicyClient;
  readonly events: PublisherEmitter;
  /** Unix seconds for the policy message envelope (tests inject it). */
  readonly now: (() => number) | undefined;
}

const MANDATORY = Object.freeze({ mandatory: true });

/**
 * One broker as the publisher sees it (the shape of rabbitmq-client's `createPublisher`): a set-up, the
 * exchange's lazy queue setup, done once per publishing connection and done again after a reset, then
 * `send`. What was declared is remembered here, and forgotten when the publishing connection is lost (the
 * broker may have lost non-durable state, or be another node now) and after a failed attempt (Ruby's
 * `stop!`: a deleted exchange makes every publish fail with NOT_FOUND until it is declared again).
 */
export class BrokerTarget {
  /** Exchanges prepared on the current publishing connection. */
  private readonly exchanges = new Memo();
  /** The policy exchange and queue (declared once per connection, not once per queue). */
  private readonly policyQueue = new Memo();
  private connection: PublisherConnection | undefined;
  private unsubscribe: (() => void) | undefined;

  constructor(
    readonly server: string,
    private readonly context: TargetContext,
  ) {}

  /**
   * The broker's connection, as the pool has it now (the pool may be closed, or hand out another one). A
   * different connection means nothing is declared on it yet.
   */
  private current(): PublisherConnection {
    const connection = this.context.pool.get(this.server);
    if (connection !== this.connection) this.adopt(connection);
    return connection;
  }

  private adopt(connection: PublisherConnection): void {
    this.unsubscribe?.();
    this.forget();
    this.connection = connection;
    this.unsubscribe = connection.onLost((event) => {
      // After a kill, the dead connection's own close event comes later still: by then a new connection
      // may be open, with its declarations.
      if (event.role === 'publisher' && !connection.publisherConnected) this.forget();
    });
  }

  /** Whether a publish to `exchange` can go out now without awaiting anything (channel open, exchange prepared). */
  isReady(exchange: string): boolean {
    return this.current().readyPublishChannel() !== undefined && this.exchanges.isDone(exchange);
  }

  /** Sends the message: at once when the channel is open and the exchange prepared, else after both. */
  send(prepared: Prepared): Promise<void> {
    if (prepared.observation !== undefined) return this.sendObserved(prepared, prepared.observation);
    return this.sendNow(prepared);
  }

  private sendNow(prepared: Prepared): Promise<void> {
    const connection = this.current();
    const channel = connection.readyPublishChannel();
    if (channel && this.exchanges.isDone(prepared.exchange)) return publish(channel, prepared);
    return this.sendSlow(connection, prepared);
  }

  /** `send`, observed as a copy on this broker (an observer that throws is logged and ignored). */
  private sendObserved(prepared: Prepared, observation: PublishObservation): Promise<void> {
    let copy: CopyObservation | undefined;
    try {
      copy = observation.copy(this.server);
    } catch (error) {
      this.context.logger.error({ err: error, server: this.server }, 'telemetry observer threw; ignored');
    }
    const sending = this.sendNow(prepared);
    if (copy === undefined) return sending;
    const observed = copy;
    const end = (error?: unknown): void => {
      try {
        observed.end(error);
      } catch (observerError) {
        this.context.logger.error({ err: observerError }, 'telemetry observer threw; ignored');
      }
    };
    return sending.then(
      () => end(),
      (error: unknown) => {
        end(error);
        throw error;
      },
    );
  }

  private async sendSlow(connection: PublisherConnection, prepared: Prepared): Promise<void> {
    const channel = await connection.publishChannel();
    await this.exchanges.run(prepared.exchange, () => this.prepareExchange(connection, prepared.exchange));
    await publish(channel, prepared);
  }

  /** Opens the publish channel and prepares `exchange` (what `send` would do before sending). */
  async prepare(exchange: string): Promise<void> {
    const connection = this.current();
    await connection.publishChannel();
    await this.exchanges.run(exchange, () => this.prepareExchange(connection, exchange));
  }

  /** Forgets every declaration made (the next send declares again). */
  forget(): void {
    this.exchanges.clear();
    this.policyQueue.clear();
  }

  /** Stops following the connection's losses (the publisher is closed). */
  detach(): void {
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    this.connection = undefined;
  }

  declarer(): Promise<TopologyDeclarer> {
    return this.current().declarer();
  }

  get lastBackgroundError(): PublisherConnection['lastBackgroundError'] {
    // A state read (health checks) works after close too: the closed pool hands out nothing, the last
    // connection still knows its error.
    if (this.context.pool.closed === true) return this.connection?.lastBackgroundError;
    return this.current().lastBackgroundError;
  }

  /** A queue with its dead letter queue, policies and bindings; a policy failure is reported as `setupError`. */
  async setupQueue(declarer: TopologyDeclarer, queue: string): Promise<SetupQueueResult> {
    const { config, topology, logger, policies, now, events } = this.context;
    const connection = this.current();
    const result = await setupQueue(declarer, topology, queue, {
      server: this.server,
      config,
      logger,
      policies,
      policyPublisher: { publish: async (...args) => (await connection.publishChannel()).publish(...args) },
      once: (key, fn) => this.policyQueue.run(key, fn),
      ...(now ? { now } : {}),
    });
    if (result.policy === 'failed') {
      events.emit('setupError', { server: this.server, queue, error: result.policyError });
    }
    return result;
  }

  /**
   * Declares `exchange` once its queues are set up (`setupQueuesAndPolicies`) and counts it prepared on this
   * connection, so that the first publish to it declares nothing: a declaration waits behind the broker's
   * work, and at the start of a publish flood it can take longer than the operation timeout.
   */
  async setupExchange(declarer: TopologyDeclarer, exchange: string): Promise<void> {
    this.current();
    await this.exchanges.run(exchange, () =>
      declarer.declareExchange(this.context.topology.exchange(exchange)),
    );
  }

  /** Lazy queue setup on this broker: the exchange's queues (with policies), then the exchange itself. */
  private async prepareExchange(connection: PublisherConnection, exchange: string): Promise<void> {
    const { config, topology } = this.context;
    const declarer = await connection.declarer();
    if (config.publisherLazyQueueSetup) {
      for (const queue of topology.queuesOfExchange(exchange)) await this.setupQueue(declarer, queue.name);
    }
    await declarer.declareExchange(topology.exchange(exchange));
  }
}

function publish(channel: PublishChannel, prepared: Prepared): Promise<void> {
  const { body, properties } = prepared.message;
  return channel.publish(
    prepared.exchange,
    prepared.key,
    body,
    properties as unknown as Record<string, unknown>,
    prepared.mandatory ? MANDATORY : undefined,
  );
}
