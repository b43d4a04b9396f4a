import { BrokerPool } from '@beetle/broker-amqp';
import {
  ClosedError,
  ConfigurationError,
  UnknownQueueError,
  silentLogger,
  type BeetleConfig,
  type DedupStore,
  type Logger,
  type QueueDefinition,
  type Telemetry,
  type Topology,
} from '@beetle/core';
import { systemClock, TypedEmitter, type Clock } from '@beetle/core/kit';
import { BrokerConsumer, type BrokerStatus, type ConsumerSettings } from './broker-consumer.js';
import { defaultQueueSetup, type QueueSetup, type SubscriberPool } from './broker-seam.js';
import { Deliveries } from './delivery.js';
import type { SubscriberEvents } from './events.js';
import { resolveHandler, type Handler, type HandlerOptions, type ResolvedHandler } from './handler.js';
import { Requeues } from './settle.js';

export type { BrokerState, BrokerStatus } from './broker-consumer.js';

export interface SubscriberOptions {
  readonly config: BeetleConfig;
  readonly topology: Topology;
  readonly store: DedupStore;
  /**
   * Broker connections (e.g. a shared `BrokerPool`; not closed by `stop()`). Default: the subscriber's own
   * connections with its connect timeout and heartbeat (`subscriberHeartbeat`), closed on `stop()`.
   */
  readonly pool?: SubscriberPool;
  /** Queue declaration (queue, dead letter queue, bindings, policies); default: `setupQueue` of the broker layer. */
  readonly setupQueue?: QueueSetup;
  readonly logger?: Logger;
  /**
   * Observes every delivery (tracing, metrics: `@beetle/telemetry`); nothing extra is done without one.
   */
  readonly telemetry?: Telemetry;
  readonly clock?: Clock;
  /** Randomness for the server order and the reconnect jitter (tests). */
  readonly random?: () => number;
}

export interface StopOptions {
  /** Seconds to wait for running handlers (default: `config.stopTimeout`). */
  readonly timeout?: number;
}

export interface StopResult {
  /** Handlers still running at the deadline: their deliveries were left unacked for redelivery. */
  readonly abandoned: number;
}

/** Grace (ms) for deliveries past their handler to finish their store calls after a forced stop. */
const ABANDON_GRACE_MS = 1000;

/**
 * Consumes the registered queues from every broker (`servers` + `additionalSubscriptionServers`) and runs
 * each delivery through Beetle's processing state machine with deduplication in the `DedupStore`. The
 * facade: the handler registry, listening, pause and resume, status and the order of a stop. Deliveries go
 * from the brokers' consumers (`broker-consumer.ts`) straight to `Deliveries` (`delivery.ts`).
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
  private listened: readonly QueueDefinition[] | undefined;
  /** The broker pool, when the subscriber made it (and closes it on stop). */
  private ownPool: SubscriberPool | undefined;
  private stopping = false;
  private stopPromise: Promise<StopResult> | undefined;
  /** Deliveries handed back to the broker after a hold. */
  private readonly requeues: Requeues;
  private readonly deliveries: Deliveries;

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
    this.requeues = new Requeues(this.config, this.clock, this.logger);
    this.deliveries = new Deliveries({
      config: this.config,
      store: this.store,
      clock: this.clock,
      logger,
      handlers: this.handlers,
      requeues: this.requeues,
      events: this,
      telemetry: options.telemetry,
    });
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
    const pool = this.options.pool ?? new BrokerPool(this.config, this.logger);
    if (this.options.pool === undefined) this.ownPool = pool;
    const settings: ConsumerSettings = {
      config: this.config,
      topology: this.topology,
      logger: this.logger,
      clock: this.clock,
      random: this.random,
      pool,
      setupQueue: this.options.setupQueue ?? defaultQueueSetup(this.config, this.topology, this.logger),
      queues: definitions,
      paused: this.paused,
      events: this,
    };
    const servers = shuffle(
      [...this.config.servers, ...this.config.additionalSubscriptionServers],
      this.random,
    );
    for (const server of servers) {
      this.brokers.set(server, new BrokerConsumer(server, settings, this.deliveries));
    }
    await Promise.all([...this.brokers.values()].map((broker) => broker.connect()));
    return this.status();
  }

  /** The state of every broker. */
  status(): BrokerStatus[] {
    return [...this.brokers.values()].map((broker) => broker.status());
  }

  /** The queues being listened to (registered names; empty before `listen`), each with whether it is paused. */
  listening(): { queue: string; paused: boolean }[] {
    return (this.listened ?? []).map((q) => ({ queue: q.name, paused: this.paused.has(q.name) }));
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

  private listenedQueue(name: string): QueueDefinition {
    const definition = this.listened?.find((q) => q.name === name);
    if (definition === undefined) {
      if (!this.topology.hasQueue(name)) throw new UnknownQueueError(name);
      throw new ConfigurationError(`queue ${name} is not being listened to`);
    }
    return definition;
  }

  private async doStop(timeoutSeconds: number): Promise<StopResult> {
    this.stopping = true;
    // New deliveries, and those waiting for a slot, are left for redelivery; hand-backs go at once.
    this.deliveries.beginStop();
    this.requeues.stopHolding();
    const brokers = [...this.brokers.values()];
    // 1. No new deliveries: cancel the consumers, stop reconnecting.
    await Promise.all(brokers.map((broker) => broker.stopConsuming()));
    // 2. Deliveries waiting for a copy in flight are not started (redelivered when the channel closes).
    this.deliveries.endCopyWaits();
    // 3. Wait for running handlers; they settle as usual.
    let abandoned = 0;
    if (!(await this.deliveries.drain(timeoutSeconds * 1000))) {
      abandoned = this.deliveries.inFlightCount;
      this.logger.warn(
        { abandoned },
        'stop timeout: abandoning running handlers; their messages will be redelivered',
      );
      this.deliveries.abandonRunning();
      await this.deliveries.drain(ABANDON_GRACE_MS);
    }
    // 4. Ack counts held for copies that will not come now are recorded, and abandoned runs released
    //    (within the stop timeout).
    await this.deliveries.settleStore(timeoutSeconds);
    // 5. Requeue what waits for its requeue delay, then close the channels (unsettled deliveries return).
    this.requeues.handBackAll();
    await Promise.all(brokers.map((broker) => broker.close()));
    if (this.ownPool !== undefined) {
      try {
        await this.ownPool.close?.();
      } catch (error) {
        this.logger.warn({ err: error }, 'closing the broker pool failed');
      }
    }
    return { abandoned };
  }
}

function shuffle<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j] as T, items[i] as T];
  }
  return items;
}
