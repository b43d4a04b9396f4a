import { ConfigurationError, UnknownMessageError, UnknownQueueError } from './errors.js';
import type { Headers, Payload } from './envelope.js';
import { DEFAULT_TTL } from './retry-policy.js';

/** Exchanges are always durable topic exchanges (Ruby overwrites whatever the user passes). */
export interface ExchangeDefinition {
  readonly name: string;
  readonly type: 'topic';
  readonly durable: true;
  readonly autoDelete: boolean;
  readonly internal: boolean;
  readonly arguments: Readonly<Record<string, unknown>> | undefined;
}

export interface ExchangeOptions {
  autoDelete?: boolean;
  internal?: boolean;
  arguments?: Record<string, unknown>;
}

/** Queues are durable and non-exclusive; lazy mode and dead lettering are applied as broker policies. */
export interface QueueDefinition {
  /** The registered (logical) name, used for handlers and the dedup keys' lookup. */
  readonly name: string;
  /** The name declared on the broker (defaults to `name`). */
  readonly amqpName: string;
  readonly durable: true;
  readonly exclusive: false;
  readonly autoDelete: boolean;
  /** Passed verbatim to queue.declare (e.g. `{ 'x-queue-type': 'quorum' }`). */
  readonly arguments: Readonly<Record<string, unknown>> | undefined;
  readonly lazy: boolean;
  readonly deadLettering: boolean;
  /** Milliseconds a rejected message waits in `<queue>_dead_letter` before it returns. */
  readonly deadLetteringMsgTtl: number;
}

export interface QueueOptions {
  /** Exchange of the implicit first binding (default: the queue name). */
  exchange?: string;
  /** Routing key of the implicit first binding (default: the queue name). */
  key?: string;
  amqpName?: string;
  autoDelete?: boolean;
  arguments?: Record<string, unknown>;
  lazy?: boolean;
  deadLettering?: boolean;
  deadLetteringMsgTtl?: number;
}

export interface BindingDefinition {
  readonly queue: string;
  readonly exchange: string;
  readonly key: string;
}

export interface MessageDefinition {
  readonly name: string;
  readonly exchange: string;
  /** Routing key (default: the message name). */
  readonly key: string;
  /** Seconds until the message counts as `Ancient`. */
  readonly ttl: number;
  readonly redundant: boolean;
  readonly persistent: boolean;
  readonly headers: Headers | undefined;
  readonly mandatory: boolean;
  readonly priority: number | undefined;
  readonly replyTo: string | undefined;
}

export interface MessageOptions {
  exchange?: string;
  key?: string;
  ttl?: number;
  redundant?: boolean;
  persistent?: boolean;
  headers?: Headers;
  mandatory?: boolean;
  priority?: number;
  replyTo?: string;
}

/** The configuration the topology needs for queue defaults and the pre-registered policy queue. */
export interface TopologyConfig {
  beetlePolicyExchangeName: string;
  beetlePolicyUpdatesQueueName: string;
  beetlePolicyUpdatesRoutingKey: string;
  lazyQueuesEnabled: boolean;
  deadLetteringEnabled: boolean;
  deadLetteringMsgTtl: number;
}

export const defaultTopologyConfig: TopologyConfig = {
  beetlePolicyExchangeName: 'beetle-policies',
  beetlePolicyUpdatesQueueName: 'beetle-policy-updates',
  beetlePolicyUpdatesRoutingKey: 'beetle.policy.update',
  lazyQueuesEnabled: false,
  deadLetteringEnabled: false,
  deadLetteringMsgTtl: 1000,
};

/** Maps message names to payload types, for compile-time checked publishing. */
export type MessageMap = Record<string, Payload>;

/**
 * The messages a map names explicitly: `{}` for the permissive default `MessageMap` (any name). Registering a
 * message under a literal name therefore switches a topology from "any name" to "exactly these names".
 */
export type KnownMessages<M extends MessageMap> = string extends keyof M ? Record<never, never> : M;

const nameOf = (kind: string, name: unknown): string => {
  if (typeof name !== 'string' || name.length === 0) {
    throw new ConfigurationError(`${kind} name must be a non-empty string, got ${JSON.stringify(name)}`);
  }
  return name;
};

/**
 * The registry of exchanges, queues, bindings and messages, with Ruby `Beetle::Client`'s registration
 * semantics (reference §1.2). The type parameter records registered messages and their payload types:
 * `topology.message<Order>()('order.created')` makes `publish('order.created', order)` type-checked.
 */
export class Topology<M extends MessageMap = MessageMap> {
  /** Type-only: the registered messages and their payload types (never set at run time). */
  declare readonly messageTypes?: M;
  readonly config: TopologyConfig;
  private readonly exchangeDefs = new Map<string, ExchangeDefinition>();
  private readonly queueDefs = new Map<string, QueueDefinition>();
  private readonly bindingDefs = new Map<string, BindingDefinition[]>();
  private readonly messageDefs = new Map<string, MessageDefinition>();

  constructor(config: Partial<TopologyConfig> = {}) {
    this.config = { ...defaultTopologyConfig, ...config };
    // Ruby pre-registers the policy exchange and queue on every client.
    this.registerQueue(this.config.beetlePolicyUpdatesQueueName, {
      exchange: this.config.beetlePolicyExchangeName,
      key: this.config.beetlePolicyUpdatesRoutingKey,
      lazy: false,
      deadLettering: false,
    });
  }

  registerExchange(name: string, options: ExchangeOptions = {}): this {
    nameOf('exchange', name);
    if (this.exchangeDefs.has(name)) throw new ConfigurationError(`exchange ${name} already configured`);
    this.exchangeDefs.set(name, {
      name,
      type: 'topic',
      durable: true,
      autoDelete: options.autoDelete ?? false,
      internal: options.internal ?? false,
      arguments: options.arguments,
    });
    return this;
  }

  registerQueue(name: string, options: QueueOptions = {}): this {
    nameOf('queue', name);
    if (this.queueDefs.has(name)) throw new ConfigurationError(`queue ${name} already configured`);
    const amqpName = options.amqpName ?? name;
    if (amqpName.includes(':')) {
      // The dedup keys are `msgid:<queue>:<uuid>:<suffix>`; a colon would make them ambiguous.
      throw new ConfigurationError(`queue name ${amqpName} must not contain ":"`);
    }
    this.queueDefs.set(name, {
      name,
      amqpName,
      durable: true,
      exclusive: false,
      autoDelete: options.autoDelete ?? false,
      arguments: options.arguments,
      lazy: options.lazy ?? this.config.lazyQueuesEnabled,
      deadLettering: options.deadLettering ?? this.config.deadLetteringEnabled,
      deadLetteringMsgTtl: options.deadLetteringMsgTtl ?? this.config.deadLetteringMsgTtl,
    });
    return this.registerBinding(name, { exchange: options.exchange ?? name, key: options.key ?? name });
  }

  registerBinding(queue: string, options: { exchange?: string; key?: string } = {}): this {
    if (!this.queueDefs.has(queue)) throw new UnknownQueueError(queue);
    const exchange = options.exchange ?? queue;
    const key = options.key ?? queue;
    if (!this.exchangeDefs.has(exchange)) this.registerExchange(exchange);
    const list = this.bindingDefs.get(queue) ?? [];
    if (!list.some((b) => b.exchange === exchange && b.key === key)) list.push({ queue, exchange, key });
    this.bindingDefs.set(queue, list);
    return this;
  }

  /**
   * Registers a message. The returned topology's type knows the name and its payload type `P`
   * (default: any payload).
   */
  registerMessage<N extends string, P extends Payload = Payload>(
    name: N,
    options: MessageOptions = {},
  ): Topology<KnownMessages<M> & Record<N, P>> {
    nameOf('message', name);
    if (this.messageDefs.has(name)) throw new ConfigurationError(`message ${name} already configured`);
    const exchange = options.exchange ?? name;
    if (!this.exchangeDefs.has(exchange)) this.registerExchange(exchange);
    this.messageDefs.set(name, {
      name,
      exchange,
      key: options.key ?? name,
      ttl: options.ttl ?? DEFAULT_TTL,
      redundant: options.redundant ?? false,
      persistent: options.persistent ?? true,
      headers: options.headers,
      mandatory: options.mandatory ?? false,
      priority: options.priority,
      replyTo: options.replyTo,
    });
    return this as unknown as Topology<KnownMessages<M> & Record<N, P>>;
  }

  hasExchange(name: string): boolean {
    return this.exchangeDefs.has(name);
  }

  hasQueue(name: string): boolean {
    return this.queueDefs.has(name);
  }

  hasMessage(name: string): boolean {
    return this.messageDefs.has(name);
  }

  exchange(name: string): ExchangeDefinition {
    const def = this.exchangeDefs.get(name);
    if (!def) throw new ConfigurationError(`unknown exchange ${JSON.stringify(name)}`);
    return def;
  }

  queue(name: string): QueueDefinition {
    const def = this.queueDefs.get(name);
    if (!def) throw new UnknownQueueError(name);
    return def;
  }

  message(name: string): MessageDefinition {
    const def = this.messageDefs.get(name);
    if (!def) throw new UnknownMessageError(name);
    return def;
  }

  exchanges(): ExchangeDefinition[] {
    return [...this.exchangeDefs.values()];
  }

  queues(): QueueDefinition[] {
    return [...this.queueDefs.values()];
  }

  messages(): MessageDefinition[] {
    return [...this.messageDefs.values()];
  }

  bindings(queue?: string): BindingDefinition[] {
    if (queue !== undefined) return [...(this.bindingDefs.get(queue) ?? [])];
    return [...this.bindingDefs.values()].flat();
  }

  /** Queues bound to an exchange (what lazy queue setup declares on first publish to it). */
  queuesOfExchange(exchange: string): QueueDefinition[] {
    const names = new Set(
      this.bindings()
        .filter((b) => b.exchange === exchange)
        .map((b) => b.queue),
    );
    return [...names].map((name) => this.queue(name));
  }

  /** Exchanges a set of queues is bound to (what a subscriber declares before consuming). */
  exchangesOfQueues(queues: readonly string[]): ExchangeDefinition[] {
    const names = new Set(queues.flatMap((q) => this.bindings(q).map((b) => b.exchange)));
    return [...names].map((name) => this.exchange(name));
  }

  /** Name of the dead letter queue Beetle pairs with a queue. */
  static deadLetterQueueName(amqpName: string): string {
    return `${amqpName}_dead_letter`;
  }
}
