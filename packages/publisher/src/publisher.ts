import { randomUUID } from 'node:crypto';
import {
  BeetleError,
  ClosedError,
  silentLogger,
  type BeetleConfig,
  type Logger,
  type MessageDefinition,
  type MessageMap,
  type Topology,
  type PublishObservation,
  type Telemetry,
} from '@beetle/core';
import { systemClock, toError, TypedEmitter } from '@beetle/core/kit';
import { BrokerPool, PolicyClient, type PublisherPool, type SetupQueueResult } from '@beetle/broker-amqp';
import { BrokerTarget } from './broker-target.js';
import { InFlight } from './in-flight.js';
import { Placement, type Placed } from './placement.js';
import { Rotation } from './rotation.js';
import { Throttle } from './throttle.js';
import type { PlacementOptions, PublisherEvents, PublishOptions } from './types.js';

export interface PublisherOptions<M extends MessageMap = MessageMap> {
  readonly config: BeetleConfig;
  readonly topology: Topology<M>;
  /**
   * Shared broker connections (a `BrokerPool`, or anything implementing `PublisherPool`); when omitted the
   * publisher creates (and on close closes) its own.
   */
  readonly pool?: PublisherPool;
  readonly logger?: Logger;
  /** Observes every publish (tracing, metrics: `@beetle/telemetry`); nothing extra is done without one. */
  readonly telemetry?: Telemetry;
  /** Clock in Unix seconds (for `timestamp`/`expires_at`); injectable for tests. */
  readonly now?: () => number;
}

/** Per-broker outcome of `setupQueuesAndPolicies`. */
export interface BrokerSetupReport {
  readonly server: string;
  /** The queues set up (policy failures are in `policyError` of the entries). */
  readonly queues: SetupQueueResult[];
  /** The declaration error that stopped the setup on this broker. */
  readonly error?: unknown;
}

/** `setupQueuesAndPolicies` failed on some broker or for some policy; `report` has the details. */
export class QueueSetupError extends BeetleError {
  constructor(
    readonly report: readonly BrokerSetupReport[],
    readonly errors: readonly unknown[],
  ) {
    const failed = report.filter((r) => r.error !== undefined || r.queues.some((q) => q.policy === 'failed'));
    super('queue-setup', `queue setup failed on ${failed.map((r) => r.server).join(', ')}`, {
      cause: errors[0],
    });
  }
}

const PUBLISH_OPTIONS_NONE = Object.freeze({}) as PublishOptions;

/**
 * Publishes Beetle messages to N brokers with Ruby Beetle 6.x semantics (reference §5): round-robin failover
 * for normal messages, two copies with the same message id for redundant ones. Differences from Ruby, all on
 * purpose:
 * - confirms are awaited for every copy (incl. redundant ones); a copy counts only when confirmed;
 * - publishes are pipelined (none waits for another's confirm), bounded by `publisherMaxInFlight`, and each
 *   publish by `publishTimeout` (waiting for a slot included) → `PublishTimeoutError`. A timed-out publish has an
 *   unknown outcome: a copy may already be on a broker (use `messageId` to publish idempotently);
 * - lazy queue setup is tracked per broker and reset when that broker's connection is lost;
 * - a redundant publish whose second copy cannot be placed anywhere resolves 1 (logged, `partial` event). The
 *   first copy went out flagged "1", so consumers keep its dedup keys until the garbage collection removes
 *   them after `expires_at`: unavoidable once the flagged copy is on the wire.
 *
 * A publish goes `publish` → the in-flight window (`in-flight.ts`) → `Placement.place` (`placement.ts`: which
 * brokers, failover, redundancy) → `BrokerTarget.send` (`broker-target.ts`: one broker, its lazy setup) →
 * the broker layer's publish channel; the result comes back here to be reported.
 */
export class Publisher<M extends MessageMap = MessageMap> {
  readonly config: BeetleConfig;
  readonly topology: Topology<M>;
  private readonly ownPool: BrokerPool | undefined;
  private readonly logger: Logger;
  private readonly telemetry: Telemetry | undefined;
  private readonly events: TypedEmitter<PublisherEvents>;
  private readonly targets: readonly BrokerTarget[];
  private readonly rotation: Rotation;
  private readonly window: InFlight;
  private readonly throttling: Throttle;
  private readonly placement: Placement;
  private closing = false;

  constructor(options: PublisherOptions<M>) {
    this.config = options.config;
    this.topology = options.topology;
    this.logger = options.logger ?? silentLogger;
    this.telemetry = options.telemetry;
    let pool = options.pool;
    if (pool === undefined) {
      this.ownPool = new BrokerPool(options.config, this.logger);
      pool = this.ownPool;
    }
    this.events = new TypedEmitter(this.logger);
    const servers = [...this.config.servers];
    if (servers.length === 0) throw new BeetleError('configuration', 'no servers configured for publishing');
    const clock = systemClock;
    const context = {
      pool,
      config: this.config,
      topology: this.topology,
      logger: this.logger,
      policies: new PolicyClient(this.config, this.logger),
      events: this.events,
      now: options.now,
    };
    this.targets = servers.map((server) => new BrokerTarget(server, context));
    this.rotation = new Rotation(
      servers,
      this.config.deadServerRetryInterval,
      this.events,
      this.logger,
      clock,
    );
    this.window = new InFlight(this.config.publisherMaxInFlight, this.config.publishTimeout, clock);
    this.throttling = new Throttle(
      this.targets,
      this.topology,
      this.config.throttlingRefreshInterval,
      this.logger,
      clock,
    );
    this.placement = new Placement({
      config: this.config,
      targets: new Map(this.targets.map((target) => [target.server, target])),
      rotation: this.rotation,
      throttle: this.throttling,
      events: this.events,
      logger: this.logger,
      clock,
      now: options.now,
    });
  }

  /** Subscribes to an event; returns a function that unsubscribes. */
  on<K extends keyof PublisherEvents>(event: K, listener: (payload: PublisherEvents[K]) => void): () => void {
    return this.events.on(event, listener);
  }

  off<K extends keyof PublisherEvents>(event: K, listener: (payload: PublisherEvents[K]) => void): void {
    this.events.off(event, listener);
  }

  /** Brokers currently in the rotation. */
  liveServers(): string[] {
    return this.rotation.liveServers();
  }

  /** Brokers currently out of the rotation. */
  deadServers(): string[] {
    return this.rotation.deadServers();
  }

  /** Publishes currently holding an in-flight slot. */
  get inFlight(): number {
    return this.window.inUse;
  }

  /** Callers waiting for an in-flight slot. */
  get waiting(): number {
    return this.window.waiting;
  }

  /**
   * Publishes a registered message. Resolves with the number of brokers that confirmed it (1, or 2 for a
   * redundant message); rejects `UnknownMessageError`, `NoMessageSentError` (with every broker error in
   * `errors`), `PublishTimeoutError` or `ClosedError`.
   */
  publish<N extends keyof M & string>(name: N, payload: M[N], options?: PublishOptions): Promise<number> {
    if (this.closing) return Promise.reject(new ClosedError('publisher is closed'));
    let definition: MessageDefinition;
    try {
      definition = this.topology.message(name);
    } catch (error) {
      return Promise.reject(toError(error));
    }
    const deadline = this.window.deadline();
    const opts = options ?? PUBLISH_OPTIONS_NONE;
    if (this.window.tryAcquire()) return this.start(definition, payload, opts, deadline);
    return this.window.acquire(name).then(() => this.start(definition, payload, opts, deadline));
  }

  /** Runs a publish holding a slot; the caller's promise rejects at the deadline even if the work goes on. */
  private start(
    definition: MessageDefinition,
    payload: unknown,
    options: PublishOptions,
    deadline: number,
  ): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const entry = this.window.enter(definition.name, deadline, reject);
      const observation = this.telemetry === undefined ? undefined : this.observe(definition, options);
      let work: Promise<Placed>;
      try {
        work = this.placement.place(definition, payload, observation?.options ?? options, deadline);
      } catch (error) {
        // e.g. a payload JSON.stringify cannot encode, or a closed pool: the slot must still be released.
        work = Promise.reject(toError(error));
      }
      work.then(
        (placed) => {
          const count = this.report(placed);
          this.window.leave(entry);
          if (observation !== undefined) this.endObservation(observation.observation, placed.servers);
          resolve(count);
        },
        (error: unknown) => {
          this.window.leave(entry);
          if (observation !== undefined) this.endObservation(observation.observation, [], error);
          reject(toError(error));
        },
      );
    });
  }

  /**
   * Starts observing a publish: its message id is fixed here (the observation names it) and the observation's
   * headers (trace context) go under the caller's. An observer that throws is logged; the publish goes on.
   */
  private observe(
    definition: MessageDefinition,
    options: PublishOptions,
  ): { readonly observation: PublishObservation; readonly options: PlacementOptions } | undefined {
    const messageId = options.messageId ?? randomUUID();
    try {
      const observation = this.telemetry?.publish?.({
        message: definition.name,
        exchange: definition.exchange,
        routingKey: options.key ?? definition.key,
        messageId,
        redundant: options.redundant ?? definition.redundant,
      });
      if (observation === undefined) return undefined;
      const headers =
        observation.headers === undefined ? options.headers : { ...observation.headers, ...options.headers };
      return { observation, options: { ...options, messageId, headers, observation } };
    } catch (error) {
      this.logger.error({ err: error, message: definition.name }, 'telemetry observer threw; ignored');
      return undefined;
    }
  }

  private endObservation(observation: PublishObservation, servers: readonly string[], error?: unknown): void {
    try {
      observation.end(error === undefined ? { servers } : { servers, error });
    } catch (observerError) {
      this.logger.error({ err: observerError }, 'telemetry observer threw; ignored');
    }
  }

  /** The `partial` and `published` events of a placed publish; the number of brokers that confirmed it. */
  private report({ prepared, servers, redundant, errors }: Placed): number {
    const { name } = prepared;
    const messageId = prepared.message.properties.messageId;
    if (redundant && servers.length === 1) {
      const server = servers[0] as string;
      this.logger.warn(
        { message: name, messageId, server, errors },
        `failed to send message ${name} redundantly: only ${server} confirmed it; its dedup keys stay until garbage collection`,
      );
      this.events.emit('partial', { message: name, messageId, server, errors: [...errors] });
    }
    if (this.events.has('published')) {
      this.events.emit('published', { message: name, messageId, servers, redundant });
    }
    return servers.length;
  }

  /**
   * Declares all registered queues (with dead letter queues, bindings and policies, incl. the policy queue) on
   * every broker, brokers in parallel. Resolves with a per-broker report when everything worked; rejects with
   * `QueueSetupError` (carrying the same report) if a declaration failed on some broker or a policy could not be
   * applied/published. Every failure is also logged. Then declares every registered exchange: until a
   * publishing connection is lost, publishes after it declare nothing (call it at start-up to keep
   * declarations out of the first publishes).
   */
  async setupQueuesAndPolicies(): Promise<BrokerSetupReport[]> {
    const errors: unknown[] = [];
    const report = await Promise.all(
      this.targets.map(async (target): Promise<BrokerSetupReport> => {
        const { server } = target;
        const queues: SetupQueueResult[] = [];
        try {
          const declarer = await target.declarer();
          for (const queue of this.topology.queues()) {
            const result = await target.setupQueue(declarer, queue.name);
            queues.push(result);
            if (result.policy === 'failed') errors.push(result.policyError);
          }
          for (const exchange of this.topology.exchanges())
            await target.setupExchange(declarer, exchange.name);
          return { server, queues };
        } catch (error) {
          errors.push(error);
          this.logger.error({ server, err: error }, `queue setup on ${server} failed`);
          return { server, queues, error };
        }
      }),
    );
    if (errors.length > 0) throw new QueueSetupError(report, errors);
    return report;
  }

  /**
   * Throttles publishing (Ruby `throttle`): while the summed length over all brokers of any of these queues
   * exceeds its limit, every publish waits 1 s before sending. Lengths are measured in the background every
   * `throttlingRefreshInterval` seconds (errors are logged and skipped). An empty object stops throttling.
   */
  throttle(limits: Readonly<Record<string, number>>): void {
    this.throttling.set(limits);
  }

  /** Whether publishing is currently throttled. */
  throttled(): boolean {
    return this.throttling.throttled;
  }

  /** Ruby `throttling_status`. */
  throttlingStatus(): 'throttled' | 'unthrottled' {
    return this.throttling.throttled ? 'throttled' : 'unthrottled';
  }

  /** Measures queue lengths now (also what the background timer runs); concurrent calls share one run. */
  refreshThrottling(): Promise<void> {
    return this.throttling.refresh();
  }

  /** Purges the queues on every broker (declaring them first, like Ruby); errors are logged and ignored. */
  async purge(queues: readonly string[]): Promise<void> {
    await Promise.all(
      this.targets.map(async (target) => {
        const { server } = target;
        for (const name of queues) {
          try {
            const declarer = await target.declarer();
            const queue = this.topology.queue(name);
            await declarer.declareQueue(queue);
            await declarer.purgeQueue(queue.amqpName);
          } catch (error) {
            this.logger.warn({ server, queue: name, err: error }, `could not purge ${name} on ${server}`);
          }
        }
      }),
    );
  }

  /**
   * Whether no broker connection of this publisher recorded a background error (connection/channel error,
   * missed heartbeats) within the last `withinSeconds` (default 60).
   */
  publisherHealthy(withinSeconds = 60): boolean {
    const since = Date.now() - withinSeconds * 1000;
    return this.targets.every((target) => {
      const error = target.lastBackgroundError;
      return error === undefined || error.at < since;
    });
  }

  /**
   * Stops accepting publishes, waits for outstanding ones (confirms) up to `timeout` seconds (default
   * `publishTimeout`), then closes the connections if the pool is the publisher's own.
   */
  async close(options: { timeout?: number } = {}): Promise<void> {
    this.closing = true;
    this.throttling.stop();
    const outstanding = await this.window.idle((options.timeout ?? this.config.publishTimeout) * 1000);
    if (outstanding > 0) this.logger.warn({ outstanding }, 'closing with publishes still unconfirmed');
    for (const target of this.targets) target.detach();
    if (this.ownPool) await this.ownPool.close();
  }
}
