import { BrokerPool } from '@beetle/broker-amqp';
import {
  BeetleError,
  createConfig,
  silentLogger,
  Topology,
  type BeetleConfig,
  type BeetleConfigInput,
  type DedupStore,
  type ExchangeOptions,
  type Logger,
  type Telemetry,
  type KnownMessages,
  type MessageMap,
  type MessageOptions,
  type Payload,
  type QueueOptions,
} from '@beetle/core';
import { amqplibAckFlush, errorMessage, withTimeout } from '@beetle/core/kit';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Publisher, type BrokerSetupReport, type PublishOptions } from '@beetle/publisher';
import {
  Subscriber,
  type BrokerStatus,
  type Handler,
  type HandlerOptions,
  type StopResult,
} from '@beetle/subscriber';
import { applyDeclarations, type Declarations } from './declarations.js';
import {
  EventLoopDelay,
  liveness,
  readiness,
  type ClientHealth,
  type HealthOptions,
  type LivenessOptions,
  type ProbeResult,
  type PublishingHealth,
  type StoreHealth,
} from './probes.js';
import { shortHostname, startTrace, type TraceHandle, type Tracer } from './trace.js';

export interface ClientOptions<M extends MessageMap = MessageMap> {
  /** A configuration, or input for `createConfig` (validated). */
  readonly config?: BeetleConfig | BeetleConfigInput;
  /** Declarations made up front (typed message names); a fresh topology otherwise. */
  readonly topology?: Topology<M>;
  /**
   * The dedup backend: `RedisDedupStore`, `MemoryDedupStore` or your own. Default: a `RedisDedupStore` from
   * the configuration, created when the client starts listening (producers never connect to Redis).
   */
  readonly store?: DedupStore;
  readonly logger?: Logger;
  /** Observes publishes and deliveries (tracing, metrics: `@beetle/telemetry`). */
  readonly telemetry?: Telemetry;
}

/**
 * The whole system, like Ruby's `Beetle::Client`: declarations, publishing, subscribing, tracing. It only
 * composes the packages — everything it does, `Publisher`, `Subscriber` and the stores do; a service needing
 * part of it uses those directly. Broker connections are shared by its publisher and subscriber.
 */
export class Client<M extends MessageMap = MessageMap> {
  readonly config: BeetleConfig;
  readonly topology: Topology<M>;
  readonly logger: Logger;
  private readonly pool: BrokerPool;
  private storeInstance: DedupStore | undefined;
  private readonly ownsStore: boolean;
  private publisherInstance: Publisher<M> | undefined;
  private subscriberInstance: Subscriber | undefined;
  private readonly handlers: { queues: string[]; handler: Handler; options: HandlerOptions }[] = [];
  private readonly traces = new Set<TraceHandle>();
  private readonly telemetry: Telemetry | undefined;
  private stopped = false;
  private readonly eventLoop = new EventLoopDelay();
  /** The ping in flight: probes during a Redis outage share it instead of piling up pings. */
  private storePing: Promise<void> | undefined;
  /** The store's health at the last check (what `liveness()` knows without asking Redis). */
  private lastStore: StoreHealth | undefined;

  constructor(options: ClientOptions<M> = {}) {
    this.config = createConfig(options.config);
    this.topology = options.topology ?? new Topology(this.config);
    this.logger = options.logger ?? silentLogger;
    this.pool = new BrokerPool(this.config, this.logger);
    this.storeInstance = options.store;
    this.ownsStore = options.store === undefined;
    this.telemetry = options.telemetry;
  }

  // --- declarations -------------------------------------------------------------------------------

  exchange(name: string, options?: ExchangeOptions): this {
    this.topology.registerExchange(name, options);
    return this;
  }

  queue(name: string, options?: QueueOptions): this {
    this.topology.registerQueue(name, options);
    return this;
  }

  binding(queue: string, options?: { exchange?: string; key?: string }): this {
    this.topology.registerBinding(queue, options);
    return this;
  }

  /** Registers a message; the returned client knows its name and payload type `P` at compile time. */
  message<N extends string, P extends Payload = Payload>(
    name: N,
    options?: MessageOptions,
  ): Client<KnownMessages<M> & Record<N, P>> {
    this.topology.registerMessage(name, options);
    return this as unknown as Client<KnownMessages<M> & Record<N, P>>;
  }

  /** Registers a handler for one or more queues (Ruby `register_handler`). */
  handler(queues: string | readonly string[], handler: Handler, options: HandlerOptions = {}): this {
    const list = typeof queues === 'string' ? [queues] : [...queues];
    for (const queue of list) this.topology.queue(queue);
    this.handlers.push({ queues: list, handler, options });
    if (this.subscriberInstance) for (const q of list) this.subscriberInstance.register(q, handler, options);
    return this;
  }

  /** Registers declarations loaded from a file (`loadDeclarations`). */
  configure(declarations: Declarations): this {
    applyDeclarations(this.topology, declarations);
    return this;
  }

  // --- publishing ---------------------------------------------------------------------------------

  get publisher(): Publisher<M> {
    this.publisherInstance ??= new Publisher<M>({
      config: this.config,
      topology: this.topology,
      pool: this.pool,
      logger: this.logger,
      ...(this.telemetry === undefined ? {} : { telemetry: this.telemetry }),
    });
    return this.publisherInstance;
  }

  /** Resolves with the number of brokers that confirmed the message (1 or 2). */
  publish<N extends keyof M & string>(name: N, payload: M[N], options?: PublishOptions): Promise<number> {
    return this.publisher.publish(name, payload, options);
  }

  purge(queues?: readonly string[]): Promise<void> {
    const names = queues ?? this.topology.queues().map((q) => q.name);
    return this.publisher.purge(names.map((q) => this.topology.queue(q).amqpName));
  }

  throttle(limits: Readonly<Record<string, number>>): void {
    this.publisher.throttle(limits);
  }

  throttled(): boolean {
    return this.publisherInstance?.throttled() ?? false;
  }

  setupQueuesAndPolicies(): Promise<BrokerSetupReport[]> {
    return this.publisher.setupQueuesAndPolicies();
  }

  // --- subscribing --------------------------------------------------------------------------------

  /** The dedup store (created from the configuration on first use unless one was given). */
  get store(): DedupStore {
    // The subscriber acks through this.pool's amqplib connections: the store sends the DEL of a message's
    // keys only once those acks are written (see AckFlush).
    this.storeInstance ??= RedisDedupStore.fromConfig(this.config, {
      logger: this.logger,
      ackFlush: amqplibAckFlush,
    });
    return this.storeInstance;
  }

  get subscriber(): Subscriber {
    if (!this.subscriberInstance) {
      const subscriber = new Subscriber({
        config: this.config,
        topology: this.topology,
        store: this.store,
        pool: this.pool,
        logger: this.logger,
        ...(this.telemetry === undefined ? {} : { telemetry: this.telemetry }),
      });
      for (const { queues, handler, options } of this.handlers) {
        for (const q of queues) subscriber.register(q, handler, options);
      }
      this.subscriberInstance = subscriber;
    }
    return this.subscriberInstance;
  }

  /** Consumes the given queues (default: every queue with a handler) on every broker. */
  listen(queues?: readonly string[]): Promise<BrokerStatus[]> {
    return this.subscriber.listen(queues);
  }

  pauseListening(queues: readonly string[]): Promise<void> {
    return this.subscriber.pauseListening(queues);
  }

  resumeListening(queues: readonly string[]): Promise<void> {
    return this.subscriber.resumeListening(queues);
  }

  /**
   * Consumes copies of the traffic of `queues` (default: all registered) through temporary auto-delete
   * queues `trace-<queue>-<host>`; the declared topology is not touched.
   */
  async trace(queues: readonly string[] | undefined, tracer: Tracer): Promise<TraceHandle> {
    const names = queues ?? this.topology.queues().map((q) => q.name);
    const handle = await startTrace({
      config: this.config,
      topology: this.topology,
      queues: names,
      tracer,
      logger: this.logger,
    });
    this.traces.add(handle);
    return {
      queues: handle.queues,
      stop: async () => {
        this.traces.delete(handle);
        await handle.stop();
      },
    };
  }

  // --- lifecycle ----------------------------------------------------------------------------------

  /**
   * Publisher and subscriber state, the store's health check (`DedupStore.ping`) when the client has a store
   * with one (none before the first `listen`, unless one was given), and whether each broker accepts
   * publishes (see `HealthOptions.publishing`). Each check waits at most `timeout` seconds (default 1).
   */
  async health(options: HealthOptions = {}): Promise<ClientHealth> {
    const timeoutMs = (options.timeout ?? 1) * 1000;
    const checkPublishing = !this.stopped && (options.publishing ?? this.publisherInstance !== undefined);
    const [store, publishing] = await Promise.all([
      this.storeHealth(timeoutMs),
      checkPublishing ? this.publishingHealth(timeoutMs) : undefined,
    ]);
    const subscriber = this.subscriberInstance?.status() ?? [];
    const listening = (this.subscriberInstance?.listening() ?? []).map(({ queue, paused }) => ({
      queue,
      paused,
      consumingOn: subscriber.filter((b) => b.consuming.includes(queue)).map((b) => b.server),
    }));
    return {
      stopped: this.stopped,
      publisherHealthy: this.publisherInstance?.publisherHealthy() ?? true,
      liveServers: this.publisherInstance?.liveServers() ?? [...this.config.servers],
      deadServers: this.publisherInstance?.deadServers() ?? [],
      publishing,
      subscriber,
      listening,
      store,
      eventLoopDelayMs: this.eventLoop.read(),
    };
  }

  /**
   * Kubernetes `/livez` (see `liveness`): from the process' own state only — no broker or Redis round trip,
   * so it answers at once even while Redis is down.
   */
  liveness(options: LivenessOptions = {}): ProbeResult {
    return liveness(
      { stopped: this.stopped, store: this.lastStore, eventLoopDelayMs: this.eventLoop.read() },
      options,
    );
  }

  /** Kubernetes `/readyz` (see `readiness`): a `health` check, judged. */
  async readiness(options: HealthOptions = {}): Promise<ProbeResult> {
    return readiness(await this.health(options));
  }

  private async storeHealth(timeoutMs: number): Promise<StoreHealth | undefined> {
    const store = this.storeInstance;
    if (store?.ping === undefined) return undefined;
    this.storePing ??= store.ping().finally(() => {
      this.storePing = undefined;
    });
    let health: StoreHealth;
    try {
      await withTimeout(
        this.storePing,
        timeoutMs,
        () => new BeetleError('timeout', `no answer within ${timeoutMs} ms`),
      );
      health = { ok: true };
    } catch (error) {
      health = {
        ok: false,
        error: errorMessage(error),
        ...(error instanceof BeetleError ? { reason: error.reason } : {}),
      };
    }
    this.lastStore = health;
    return health;
  }

  private publishingHealth(timeoutMs: number): Promise<PublishingHealth[]> {
    return Promise.all(
      this.config.servers.map(async (server): Promise<PublishingHealth> => {
        try {
          const connection = this.pool.get(server);
          if (connection.readyPublishChannel() !== undefined) return { server, reachable: true };
          // The channel the publisher uses: opened once, shared by concurrent probes and later publishes.
          await withTimeout(
            connection.publishChannel(),
            timeoutMs,
            () => new BeetleError('timeout', `no publishing channel within ${timeoutMs} ms`),
          );
          return { server, reachable: true };
        } catch (error) {
          return { server, reachable: false, error: errorMessage(error) };
        }
      }),
    );
  }

  /**
   * Stops listening (in-flight handlers get `timeout` seconds), stops tracing, waits for outstanding
   * confirms, then closes broker connections and the store it created.
   */
  async stop(options: { timeout?: number } = {}): Promise<StopResult> {
    this.stopped = true;
    this.eventLoop.stop();
    let result: StopResult = { abandoned: 0 };
    if (this.subscriberInstance) result = await this.subscriberInstance.stop(options);
    await Promise.all([...this.traces].map((t) => t.stop()));
    this.traces.clear();
    if (this.publisherInstance) await this.publisherInstance.close(options);
    await this.pool.close();
    if (this.ownsStore && this.storeInstance) await this.storeInstance.close();
    return result;
  }

  /** The host name used in trace queue names. */
  static hostname(): string {
    return shortHostname();
  }
}
