import {
  TypedEmitter,
  ClosedError,
  ConfigurationError,
  Outcome,
  UnknownQueueError,
  silentLogger,
  type BeetleConfig,
  type DedupStore,
  type Logger,
  type QueueDefinition,
  type Topology,
} from '@beetle/core';
import {
  SubscriberConnections,
  defaultQueueSetup,
  memo,
  reconnectDelay,
  type Delivery,
  type QueueSetup,
  type SubscriberChannel,
  type SubscriberPool,
} from './broker.js';
import { systemClock, type Clock, type TimerHandle } from './clock.js';
import type { SubscriberErrorEvent, SubscriberEvents } from './events.js';
import { resolveHandler, type Handler, type HandlerOptions, type ResolvedHandler } from './handler.js';
import { processDelivery, type DeliverySettler } from './processing.js';

export interface SubscriberOptions {
  readonly config: BeetleConfig;
  readonly topology: Topology;
  readonly store: DedupStore;
  /**
   * Broker connections (e.g. a shared `BrokerPool`; not closed by `stop()`). Default: the subscriber's own
   * connections with its connect timeout and heartbeat, closed on `stop()`.
   */
  readonly pool?: SubscriberPool;
  /** Queue declaration (queue, dead letter queue, bindings, policies); default: `setupQueue` of the broker layer. */
  readonly setupQueue?: QueueSetup;
  readonly logger?: Logger;
  readonly clock?: Clock;
  /** Randomness for the server order and the reconnect jitter (tests). */
  readonly random?: () => number;
}

/**
 * Per-broker state: `connecting` (first or later attempt running), `consuming`, `disconnected` (waiting
 * for the next attempt), `stopped`.
 */
export type BrokerState = 'idle' | 'connecting' | 'consuming' | 'disconnected' | 'stopped';

export interface BrokerStatus {
  readonly server: string;
  readonly state: BrokerState;
  /** Consecutive failed connection attempts. */
  readonly failures: number;
  readonly lastError: unknown;
  /** Queues (logical names) with an active consumer on this broker. */
  readonly consuming: readonly string[];
}

export interface StopOptions {
  /** Seconds to wait for running handlers (default: `config.stopTimeout`). */
  readonly timeout?: number;
}

export interface StopResult {
  /** Handlers still running at the deadline: their deliveries were left unacked for redelivery. */
  readonly abandoned: number;
}

interface BrokerLayer {
  readonly pool: SubscriberPool;
  readonly setupQueue: QueueSetup;
  /** Whether the subscriber created the pool (and closes it on stop). */
  readonly owned: boolean;
}

/** Grace (ms) for deliveries past their handler to finish their store calls after a forced stop. */
const ABANDON_GRACE_MS = 1000;

/**
 * Consumes the registered queues from every broker (`servers` + `additionalSubscriptionServers`) and runs
 * each delivery through Beetle's processing state machine with deduplication in the `DedupStore`.
 */
export class Subscriber extends TypedEmitter<SubscriberEvents> {
  readonly config: BeetleConfig;
  readonly topology: Topology;
  readonly store: DedupStore;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly options: SubscriberOptions;
  private readonly handlers = new Map<string, ResolvedHandler>();
  private readonly brokers = new Map<string, BrokerConsumer>();
  private readonly paused = new Set<string>();
  private listened: QueueDefinition[] | undefined;
  private layer: BrokerLayer | undefined;
  private stopping = false;
  private stopPromise: Promise<StopResult> | undefined;
  private readonly stopController = new AbortController();
  private running = 0;
  private readonly waiting: ((go: boolean) => void)[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private readonly requeues = new Map<TimerHandle, () => void>();

  constructor(options: SubscriberOptions) {
    const logger = options.logger ?? silentLogger;
    super(logger);
    this.options = options;
    this.config = options.config;
    this.topology = options.topology;
    this.store = options.store;
    this.logger = logger;
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
  }

  /** Registers the handler of a queue (registered name); throws `UnknownQueueError` for unknown queues. */
  register(queue: string, handler: Handler, options: HandlerOptions = {}): this {
    if (!this.topology.hasQueue(queue)) throw new UnknownQueueError(queue);
    if (this.handlers.has(queue))
      throw new ConfigurationError(`a handler for queue ${queue} is already registered`);
    this.handlers.set(queue, resolveHandler(handler, options));
    return this;
  }

  /** Queues with a registered handler. */
  get queues(): string[] {
    return [...this.handlers.keys()];
  }

  /**
   * Starts consuming `queues` (default: every queue with a handler) on every broker, in random order and
   * independently. Resolves once each broker has started consuming or failed its first attempt; failed
   * brokers keep being retried in the background with capped exponential backoff.
   */
  async listen(queues?: readonly string[]): Promise<BrokerStatus[]> {
    if (this.stopping) throw new ClosedError('subscriber is stopped');
    if (this.listened !== undefined) throw new ConfigurationError('subscriber is already listening');
    const names = [...new Set(queues ?? this.queues)];
    if (names.length === 0) throw new ConfigurationError('no queues to listen to: register a handler first');
    const definitions = names.map((name) => {
      const definition = this.topology.queue(name);
      if (!this.handlers.has(name)) throw new ConfigurationError(`no handler registered for queue ${name}`);
      return definition;
    });
    this.listened = definitions;
    const layer: BrokerLayer = {
      pool: this.options.pool ?? new SubscriberConnections(this.config, this.logger),
      setupQueue: this.options.setupQueue ?? defaultQueueSetup(this.config, this.topology, this.logger),
      owned: this.options.pool === undefined,
    };
    this.layer = layer;
    const internals = this.internals();
    const servers = shuffle(
      [...this.config.servers, ...this.config.additionalSubscriptionServers],
      this.random,
    );
    for (const server of servers) this.brokers.set(server, new BrokerConsumer(server, internals, layer));
    await Promise.all([...this.brokers.values()].map((broker) => broker.connect()));
    return this.status();
  }

  /** The state of every broker. */
  status(): BrokerStatus[] {
    return [...this.brokers.values()].map((broker) => broker.status());
  }

  /** Stops consuming `queues` on all brokers (basic.cancel); deliveries already received are processed. */
  async pauseListening(queues: readonly string[]): Promise<void> {
    for (const name of queues) {
      this.listenedQueue(name);
      this.paused.add(name);
    }
    await Promise.all([...this.brokers.values()].map((broker) => broker.pause(queues)));
  }

  /** Resumes consuming paused queues on all brokers. */
  async resumeListening(queues: readonly string[]): Promise<void> {
    for (const name of queues) {
      this.listenedQueue(name);
      this.paused.delete(name);
    }
    await Promise.all([...this.brokers.values()].map((broker) => broker.resume(queues)));
  }

  /**
   * Stops taking deliveries (cancels consumers), waits up to `timeout` seconds for running handlers (their
   * deliveries are settled as usual), then abandons the rest (signals aborted, deliveries left unacked so
   * the broker redelivers them) and closes the channels. Idempotent.
   */
  stop(options: StopOptions = {}): Promise<StopResult> {
    this.stopPromise ??= this.doStop(options.timeout ?? this.config.stopTimeout);
    return this.stopPromise;
  }

  // ------------------------------------------------------------------------------------------- internals

  private internals(): SubscriberInternals {
    return {
      config: this.config,
      topology: this.topology,
      logger: this.logger,
      clock: this.clock,
      random: this.random,
      listened: this.listened ?? [],
      paused: this.paused,
      isStopping: () => this.stopping,
      onDelivery: (server, channel, queue, delivery) => this.onDelivery(server, channel, queue, delivery),
      emit: (event, payload) => this.emit(event, payload),
    };
  }

  private listenedQueue(name: string): QueueDefinition {
    const definition = this.listened?.find((q) => q.name === name);
    if (definition === undefined) {
      if (!this.topology.hasQueue(name)) throw new UnknownQueueError(name);
      throw new ConfigurationError(`queue ${name} is not being listened to`);
    }
    return definition;
  }

  private onDelivery(
    server: string,
    channel: SubscriberChannel,
    queue: QueueDefinition,
    delivery: Delivery,
  ): void {
    if (this.stopping) {
      // Left unsettled: the broker redelivers it when the channel closes.
      this.logger.debug({ server, queue: queue.name }, 'delivery while stopping; left for redelivery');
      return;
    }
    const task = this.acquireSlot().then(async (go) => {
      if (!go) return;
      try {
        await this.handle(server, channel, queue, delivery);
      } finally {
        this.releaseSlot();
      }
    });
    const tracked = task.catch((error: unknown) => {
      this.logger.error({ err: error, server, queue: queue.name }, 'unexpected error handling a delivery');
    });
    this.inFlight.add(tracked);
    void tracked.finally(() => this.inFlight.delete(tracked));
  }

  private async handle(
    server: string,
    channel: SubscriberChannel,
    queue: QueueDefinition,
    delivery: Delivery,
  ): Promise<void> {
    const handler = this.handlers.get(queue.name);
    if (handler === undefined) throw new Error(`no handler for queue ${queue.name}`);
    const started = this.clock.nowMs();
    const settler: DeliverySettler = {
      ack: () => channel.ack(delivery),
      reject: () => this.reject(channel, queue, delivery),
      reply: (replyTo, body, headers) =>
        channel.publish('', replyTo, body, { deliveryMode: 1, headers: { ...headers } }),
    };
    const result = await processDelivery({
      delivery,
      source: { queue: queue.amqpName, server },
      handler,
      store: this.store,
      settler,
      clock: this.clock,
      logger: this.logger,
      stopSignal: this.stopController.signal,
    });
    if (result.outcome === undefined) {
      this.emit('abandoned', { message: result.message, queue: queue.name, server });
      return;
    }
    this.emit('processed', {
      outcome: result.outcome,
      message: result.message,
      queue: queue.name,
      server,
      durationMs: this.clock.nowMs() - started,
      settled: result.settled,
      error: result.error,
    });
    if (result.outcome === Outcome.InternalError) {
      this.emit('error', { error: result.error, phase: 'processing', server, queue: queue.name });
    }
  }

  /** Dead lettering: reject to the DLQ now. Otherwise requeue after `rejectRequeueDelay`, for this message only. */
  private reject(channel: SubscriberChannel, queue: QueueDefinition, delivery: Delivery): void {
    if (queue.deadLettering) {
      channel.reject(delivery, false);
      return;
    }
    const delayMs = this.config.rejectRequeueDelay * 1000;
    if (delayMs <= 0 || this.stopping) {
      channel.reject(delivery, true);
      return;
    }
    const fire = (): void => {
      this.requeues.delete(handle);
      channel.reject(delivery, true);
    };
    const handle = this.clock.setTimeout(fire, delayMs);
    this.requeues.set(handle, fire);
  }

  private acquireSlot(): Promise<boolean> {
    if (this.stopping) return Promise.resolve(false);
    if (this.running < this.config.subscriberConcurrency) {
      this.running++;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private releaseSlot(): void {
    const next = this.waiting.shift();
    if (next !== undefined && !this.stopping) {
      next(true); // the slot passes on
      return;
    }
    this.running--;
    next?.(false);
  }

  private async doStop(timeoutSeconds: number): Promise<StopResult> {
    this.stopping = true;
    const brokers = [...this.brokers.values()];
    // 1. No new deliveries: cancel the consumers, stop reconnecting.
    await Promise.all(brokers.map((broker) => broker.stopConsuming()));
    // 2. Deliveries waiting for a slot are not started (redelivered when the channel closes).
    for (const wake of this.waiting.splice(0)) wake(false);
    // 3. Wait for running handlers; they settle as usual.
    let abandoned = 0;
    if (!(await this.drain(timeoutSeconds * 1000))) {
      abandoned = this.inFlight.size;
      this.logger.warn(
        { abandoned },
        'stop timeout: abandoning running handlers; their messages will be redelivered',
      );
      this.stopController.abort(new ClosedError('subscriber stopped'));
      await this.drain(ABANDON_GRACE_MS);
    }
    // 4. Requeue what waits for its requeue delay, then close the channels (unsettled deliveries return).
    for (const [handle, fire] of [...this.requeues]) {
      this.clock.clearTimeout(handle);
      fire();
    }
    await Promise.all(brokers.map((broker) => broker.close()));
    if (this.layer?.owned) {
      try {
        await this.layer.pool.close?.();
      } catch (error) {
        this.logger.warn({ err: error }, 'closing the broker pool failed');
      }
    }
    return { abandoned };
  }

  /** Resolves true once nothing is in flight, false after `ms`. */
  private async drain(ms: number): Promise<boolean> {
    if (this.inFlight.size === 0) return true;
    let timer: TimerHandle;
    const timedOut = new Promise<false>((resolve) => {
      timer = this.clock.setTimeout(() => resolve(false), ms);
    });
    const drained = (async (): Promise<true> => {
      while (this.inFlight.size > 0) await Promise.all([...this.inFlight]);
      return true;
    })();
    const result = await Promise.race([drained, timedOut]);
    this.clock.clearTimeout(timer);
    return result;
  }
}

/** What a `BrokerConsumer` needs from its subscriber. @internal */
interface SubscriberInternals {
  readonly config: BeetleConfig;
  readonly topology: Topology;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly random: () => number;
  readonly listened: readonly QueueDefinition[];
  readonly paused: ReadonlySet<string>;
  isStopping(): boolean;
  onDelivery(server: string, channel: SubscriberChannel, queue: QueueDefinition, delivery: Delivery): void;
  emit<K extends keyof SubscriberEvents>(event: K, payload: SubscriberEvents[K]): void;
}

/** The consumers of one broker: one channel, one consumer per queue, reconnect with backoff. */
class BrokerConsumer {
  private state: BrokerState = 'idle';
  private failures = 0;
  private lastError: unknown;
  private channel: SubscriberChannel | undefined;
  private readonly consumers = new Map<string, string>();
  private reconnectTimer: TimerHandle;
  private closing = false;

  constructor(
    readonly server: string,
    private readonly owner: SubscriberInternals,
    private readonly layer: BrokerLayer,
  ) {}

  status(): BrokerStatus {
    return {
      server: this.server,
      state: this.state,
      failures: this.failures,
      lastError: this.lastError,
      consuming: [...this.consumers.keys()],
    };
  }

  /** One connection attempt; never throws (failures schedule the next attempt). */
  async connect(): Promise<void> {
    if (this.closing) return;
    this.state = 'connecting';
    const { config, topology, logger, listened } = this.owner;
    let channel: SubscriberChannel | undefined;
    try {
      channel = await this.layer.pool.get(this.server).openConsumerChannel(config.prefetchCount);
      if (this.closing) {
        await channel.close();
        return;
      }
      const opened = channel;
      this.channel = opened;
      opened.onClose((error) => this.onChannelClosed(opened, error));
      for (const exchange of topology.exchangesOfQueues(listened.map((q) => q.name))) {
        await opened.declareExchange(exchange);
      }
      const once = memo();
      for (const queue of listened) {
        const result = await this.layer.setupQueue(opened, this.server, queue, once);
        if (result?.policyError !== undefined) {
          const event = {
            error: result.policyError,
            phase: 'policy',
            server: this.server,
            queue: queue.name,
          } as const;
          this.owner.emit('error', event);
        }
      }
      for (const queue of listened) {
        if (!this.owner.paused.has(queue.name)) await this.consume(opened, queue);
      }
      if (this.channel !== opened) throw new Error('channel closed while setting up consumers');
      this.state = 'consuming';
      this.failures = 0;
      logger.info({ server: this.server, queues: listened.map((q) => q.name) }, 'consuming');
      this.owner.emit('connected', { server: this.server });
    } catch (error) {
      this.failures++;
      this.lastError = error;
      logger.warn(
        { server: this.server, err: error, failures: this.failures },
        'subscriber could not connect',
      );
      this.owner.emit('error', { error, phase: 'connect', server: this.server, queue: undefined });
      if (channel !== undefined && this.channel === channel) {
        this.channel = undefined;
        this.consumers.clear();
        await channel.close().catch(() => undefined);
      }
      if (!this.closing) {
        this.state = 'disconnected';
        this.scheduleReconnect();
      }
    }
  }

  async pause(queues: readonly string[]): Promise<void> {
    const channel = this.channel;
    if (channel === undefined) return;
    await Promise.all(
      queues.map(async (name) => {
        const tag = this.consumers.get(name);
        if (tag === undefined) return;
        this.consumers.delete(name);
        await this.cancel(channel, name, tag);
      }),
    );
  }

  async resume(queues: readonly string[]): Promise<void> {
    const channel = this.channel;
    if (channel === undefined || this.state !== 'consuming' || this.closing) return;
    for (const name of queues) {
      const queue = this.owner.listened.find((q) => q.name === name);
      if (queue === undefined || this.consumers.has(name)) continue;
      try {
        await this.consume(channel, queue);
      } catch (error) {
        this.owner.logger.warn(
          { server: this.server, queue: name, err: error },
          'could not resume consuming',
        );
        this.owner.emit('error', { error, phase: 'consume', server: this.server, queue: name });
      }
    }
  }

  /** Cancels all consumers and stops reconnecting; the channel stays open for acks. */
  async stopConsuming(): Promise<void> {
    this.closing = true;
    if (this.reconnectTimer !== undefined) {
      this.owner.clock.clearTimeout(this.reconnectTimer);
      this.reconnectTimer = undefined;
    }
    const channel = this.channel;
    if (channel === undefined) return;
    const consumers = [...this.consumers];
    this.consumers.clear();
    await Promise.all(consumers.map(([name, tag]) => this.cancel(channel, name, tag)));
  }

  async close(): Promise<void> {
    this.closing = true;
    this.state = 'stopped';
    const channel = this.channel;
    this.channel = undefined;
    if (channel === undefined) return;
    try {
      await channel.close();
    } catch (error) {
      this.owner.emit('error', { error, phase: 'close', server: this.server, queue: undefined });
    }
  }

  private async consume(channel: SubscriberChannel, queue: QueueDefinition): Promise<void> {
    const tag = await channel.consume(queue.amqpName, (delivery) =>
      this.owner.onDelivery(this.server, channel, queue, delivery),
    );
    // A pause (or stop) that came in while basic.consume was on its way wins.
    if (this.owner.paused.has(queue.name) || this.closing || this.channel !== channel) {
      await this.cancel(channel, queue.name, tag);
      return;
    }
    this.consumers.set(queue.name, tag);
  }

  private async cancel(channel: SubscriberChannel, queue: string, tag: string): Promise<void> {
    try {
      await channel.cancel(tag);
    } catch (error) {
      const event: SubscriberErrorEvent = { error, phase: 'cancel', server: this.server, queue };
      this.owner.logger.warn({ server: this.server, queue, err: error }, 'basic.cancel failed');
      this.owner.emit('error', event);
    }
  }

  private onChannelClosed(channel: SubscriberChannel, error: Error | undefined): void {
    if (this.channel !== channel) return;
    this.channel = undefined;
    this.consumers.clear();
    if (this.closing) return;
    this.state = 'disconnected';
    this.lastError = error;
    this.owner.logger.warn(
      { server: this.server, err: error },
      'subscriber lost its broker channel; reconnecting',
    );
    this.owner.emit('disconnected', { server: this.server, error });
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closing || this.reconnectTimer !== undefined) return;
    const { config, clock, random } = this.owner;
    const delay = reconnectDelay(
      config.subscriberReconnectDelay,
      config.subscriberReconnectMaxDelay,
      Math.max(0, this.failures - 1),
      random,
    );
    this.reconnectTimer = clock.setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.connect();
    }, delay * 1000);
  }
}

function shuffle<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j] as T, items[i] as T];
  }
  return items;
}
