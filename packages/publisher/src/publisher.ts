import { randomUUID } from 'node:crypto';
import {
  BeetleError,
  BrokerError,
  ClosedError,
  InvalidPublishError,
  NoMessageSentError,
  PublishTimeoutError,
  silentLogger,
  type BeetleConfig,
  type Headers,
  type Logger,
  type MessageDefinition,
  type MessageMap,
  type Topology,
} from '@beetle/core';
import {
  type EncodedMessage,
  encodeMessage,
  Memo,
  Slots,
  TypedEmitter,
  validatePublish,
} from '@beetle/core/kit';
import {
  BrokerPool,
  PolicyClient,
  setupQueue,
  type BrokerConnection,
  type PublishChannel,
  type SetupQueueResult,
} from '@beetle/broker-amqp';

/** Per-publish options (Ruby's publishing options, plus `messageId`). They override the registration. */
export interface PublishOptions {
  /** Send to two brokers (flags "1"). */
  redundant?: boolean;
  /** Seconds until the message is `Ancient` (default: registration, else 86400). */
  ttl?: number;
  /** Routing key (default: registration, else the message name). */
  key?: string;
  /** Merged over the registered headers; `null`/`undefined` values are dropped. */
  headers?: Headers;
  persistent?: boolean;
  priority?: number;
  mandatory?: boolean;
  replyTo?: string;
  /**
   * Caller-chosen message id (idempotent publishing); a UUID v4 otherwise. Any non-empty string without ":" of
   * up to 255 bytes; note that Ruby's garbage collectors only collect the keys of lowercase hex ids.
   */
  messageId?: string;
}

export interface PublisherOptions<M extends MessageMap = MessageMap> {
  readonly config: BeetleConfig;
  readonly topology: Topology<M>;
  /** Shared broker connections; when omitted the publisher creates (and on close closes) its own. */
  readonly pool?: BrokerPool;
  readonly logger?: Logger;
  /** Clock in Unix seconds (for `timestamp`/`expires_at`); injectable for tests. */
  readonly now?: () => number;
}

/** Payloads of the publisher's events. */
export interface PublisherEvents {
  /** A publish completed: `servers` confirmed it (1 or 2 entries). */
  published: { message: string; messageId: string; servers: string[]; redundant: boolean };
  /** One attempt on one broker failed; the publisher retries or moves on. */
  failover: { message: string; messageId: string; server: string; error: unknown };
  /** A broker was taken out of the rotation after two consecutive failures. */
  brokerDead: { server: string; error: unknown };
  /** A broker that had been dead confirmed a publish again. */
  brokerRecovered: { server: string; deadForMs: number };
  /** A redundant publish got only one copy placed (the result is 1). */
  partial: { message: string; messageId: string; server: string; errors: unknown[] };
  /** Lazy queue setup could not apply or publish the policies of a queue (the publish itself went on). */
  setupError: { server: string; queue: string; error: unknown };
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

interface Prepared {
  readonly name: string;
  readonly exchange: string;
  readonly key: string;
  readonly mandatory: boolean;
  readonly message: EncodedMessage;
}

const MANDATORY = Object.freeze({ mandatory: true });
const PUBLISH_OPTIONS_NONE = Object.freeze({}) as PublishOptions;
const THROTTLE_DELAY_MS = 1000;
const SWEEP_INTERVAL_MS = 50;

const exchangeKeys = new Map<string, string>();
/** The `BrokerConnection.once` key of an exchange's lazy setup (cached: no string building per publish). */
function exchangeKey(exchange: string): string {
  let key = exchangeKeys.get(exchange);
  if (key === undefined) {
    key = `publisher:exchange:${exchange}`;
    exchangeKeys.set(exchange, key);
  }
  return key;
}

interface Outstanding {
  readonly name: string;
  readonly deadline: number;
  readonly reject: (error: Error) => void;
  timedOut: boolean;
}

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
 */
export class Publisher<M extends MessageMap = MessageMap> {
  readonly config: BeetleConfig;
  readonly topology: Topology<M>;
  private readonly pool: BrokerPool;
  private readonly ownsPool: boolean;
  private readonly logger: Logger;
  private readonly now: (() => number) | undefined;
  private readonly events: TypedEmitter<PublisherEvents>;
  private readonly slots: Slots;
  private readonly servers: readonly string[];
  private live: string[];
  private readonly dead = new Map<string, number>();
  /** Brokers back in the rotation after having been dead, until their first success. */
  private readonly probation = new Map<string, number>();
  private cursor: number;
  private readonly outstanding = new Set<Outstanding>();
  private sweeper: NodeJS.Timeout | undefined;
  private running = 0;
  private readonly idleWaiters = new Set<() => void>();
  private closing = false;
  private readonly policies: PolicyClient;
  private throttleLimits = new Map<string, number>();
  private throttledState = false;
  private throttleTimer: NodeJS.Timeout | undefined;
  private throttleRefresh: Promise<void> | undefined;
  private readonly declarations = new Map<BrokerConnection, Memo>();

  constructor(options: PublisherOptions<M>) {
    this.config = options.config;
    this.topology = options.topology;
    this.logger = options.logger ?? silentLogger;
    this.ownsPool = options.pool === undefined;
    this.pool = options.pool ?? new BrokerPool(options.config, this.logger);
    this.now = options.now;
    this.events = new TypedEmitter(this.logger);
    this.slots = new Slots(this.config.publisherMaxInFlight);
    this.servers = [...this.config.servers];
    if (this.servers.length === 0)
      throw new BeetleError('configuration', 'no servers configured for publishing');
    this.live = [...this.servers];
    this.cursor = Math.floor(Math.random() * this.live.length) - 1;
    this.policies = new PolicyClient(this.config, this.logger);
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
    return [...this.live];
  }

  /** Brokers currently out of the rotation. */
  deadServers(): string[] {
    return [...this.dead.keys()];
  }

  /** Publishes currently holding an in-flight slot. */
  get inFlight(): number {
    return this.slots.inUse;
  }

  /** Callers waiting for an in-flight slot. */
  get waiting(): number {
    return this.slots.waiting;
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
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
    const timeoutMs = this.config.publishTimeout * 1000;
    const deadline = Date.now() + timeoutMs;
    const opts = options ?? PUBLISH_OPTIONS_NONE;
    if (this.slots.tryAcquire()) return this.start(definition, payload, opts, deadline);
    return this.slots.acquire(timeoutMs).then((granted) => {
      if (!granted) {
        throw new PublishTimeoutError(
          `publish of ${name}: no free in-flight slot (publisherMaxInFlight ${this.config.publisherMaxInFlight}) within ${this.config.publishTimeout}s`,
        );
      }
      return this.start(definition, payload, opts, deadline);
    });
  }

  /** Runs a publish holding a slot; the caller's promise rejects at the deadline even if the work goes on. */
  private start(
    definition: MessageDefinition,
    payload: unknown,
    options: PublishOptions,
    deadline: number,
  ): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const entry: Outstanding = { name: definition.name, deadline, reject, timedOut: false };
      this.outstanding.add(entry);
      this.running++;
      this.sweeper ??= this.startSweeper();
      let work: Promise<number>;
      try {
        work = this.run(definition, payload, options, deadline);
      } catch (error) {
        // e.g. a payload JSON.stringify cannot encode, or a closed pool: the slot must still be released.
        work = Promise.reject(error instanceof Error ? error : new Error(String(error)));
      }
      work.then(
        (count) => {
          this.finish(entry);
          resolve(count);
        },
        (error: unknown) => {
          this.finish(entry);
          reject(error instanceof Error ? error : new Error(String(error)));
        },
      );
    });
  }

  private finish(entry: Outstanding): void {
    this.outstanding.delete(entry);
    this.running--;
    this.slots.release();
    if (this.running === 0) {
      for (const wake of this.idleWaiters) wake();
      this.idleWaiters.clear();
    }
  }

  /** One timer for all publishes (not one per publish) enforces `publishTimeout`. */
  private startSweeper(): NodeJS.Timeout {
    const timer = setInterval(() => {
      if (this.outstanding.size === 0) {
        clearInterval(timer);
        this.sweeper = undefined;
        return;
      }
      const now = Date.now();
      for (const entry of this.outstanding) {
        if (entry.deadline > now) continue;
        // The slot stays taken until the work settles (bounded by the broker timeouts): memory stays bounded.
        this.outstanding.delete(entry);
        entry.timedOut = true;
        entry.reject(
          new PublishTimeoutError(
            `publish of ${entry.name} did not complete within ${this.config.publishTimeout}s (outcome unknown)`,
          ),
        );
      }
    }, SWEEP_INTERVAL_MS);
    timer.unref();
    return timer;
  }

  /**
   * The common case without extra awaits: not throttled, no dead broker, channels open and exchange prepared.
   * Anything else (and any failure) continues on the general path.
   */
  private run(
    definition: MessageDefinition,
    payload: unknown,
    options: PublishOptions,
    deadline: number,
  ): Promise<number> {
    if (this.throttledState || this.dead.size > 0)
      return this.runSlow(definition, payload, options, deadline);
    const messageId = options.messageId ?? randomUUID();
    if (!(options.redundant ?? definition.redundant)) {
      const prepared = this.prepare(definition, payload, options, messageId, false);
      const server = this.selectNextServer();
      if (server === undefined) return this.runSlow(definition, payload, options, deadline, prepared);
      return this.publishOn(server, prepared).then(
        () => {
          this.succeeded(server);
          this.published(prepared, [server], false);
          return 1;
        },
        (error: unknown) => this.continueFailover(prepared, deadline, error, server),
      );
    }
    const prepared = this.prepare(definition, payload, options, messageId, true);
    if (this.live.length < 2) return this.runSlow(definition, payload, options, deadline, prepared);
    const first = this.selectNextServer() as string;
    const second = this.selectNextServer(new Set([first]));
    if (
      second === undefined ||
      !this.isReady(first, definition.exchange) ||
      !this.isReady(second, definition.exchange)
    ) {
      return this.runSlow(definition, payload, options, deadline, prepared);
    }
    const copies = [this.publishOn(first, prepared), this.publishOn(second, prepared)];
    return Promise.all(copies).then(
      () => {
        this.succeeded(first);
        this.succeeded(second);
        this.published(prepared, [first, second], true);
        return 2;
      },
      () => this.recoverRedundant(prepared, [first, second], copies, deadline),
    );
  }

  private async continueFailover(
    prepared: Prepared,
    deadline: number,
    error: unknown,
    server: string,
  ): Promise<number> {
    if (error instanceof InvalidPublishError) throw error;
    const errors: unknown[] = [error];
    const tries = this.servers.length * 2 - 1;
    this.attemptFailed(prepared.name, prepared.message.properties.messageId, server, error, tries % 2 === 0);
    const placed = await this.failoverPublish(prepared, deadline, errors, { tries, server });
    if (placed === undefined) throw new NoMessageSentError(prepared.name, errors);
    this.published(prepared, [placed], false);
    return 1;
  }

  private async recoverRedundant(
    prepared: Prepared,
    pair: readonly string[],
    copies: readonly Promise<void>[],
    deadline: number,
  ): Promise<number> {
    const errors: unknown[] = [];
    const placed: string[] = [];
    const used = new Set(pair);
    const outcomes = await Promise.allSettled(copies);
    await Promise.all(
      pair.map((server, i) => {
        const outcome = outcomes[i];
        if (outcome?.status === 'fulfilled') {
          this.succeeded(server);
          placed.push(server);
          return Promise.resolve();
        }
        const reason: unknown = outcome?.reason;
        errors.push(reason);
        if (reason instanceof InvalidPublishError) return Promise.resolve();
        this.attemptFailed(prepared.name, prepared.message.properties.messageId, server, reason, false);
        if (reason instanceof BrokerError && reason.outcomeUnknown) {
          this.notPlacingAgain(prepared, server);
          return Promise.resolve();
        }
        return this.placeCopy(prepared, server, 2, used, placed, deadline, errors);
      }),
    );
    return this.finishRedundant(prepared, placed, errors);
  }

  private async runSlow(
    definition: MessageDefinition,
    payload: unknown,
    options: PublishOptions,
    deadline: number,
    validated?: Prepared,
  ): Promise<number> {
    let redundant = options.redundant ?? definition.redundant;
    // Bad input is refused before any waiting or connecting (prepare throws InvalidPublishError).
    const messageId = validated?.message.properties.messageId ?? options.messageId ?? randomUUID();
    let prepared = validated ?? this.prepare(definition, payload, options, messageId, redundant);
    if (this.throttledState) await sleep(Math.min(THROTTLE_DELAY_MS, Math.max(0, deadline - Date.now())));
    this.recycleDeadServers();
    const name = definition.name;
    const errors: unknown[] = [];
    if (redundant && this.live.length < 2) {
      if (this.dead.size > 0) {
        this.logger.warn(
          { message: name, live: this.live, dead: [...this.dead.keys()] },
          `fewer than two brokers alive: publishing ${name} once, not redundantly`,
        );
      }
      redundant = false;
    }
    let pair: string[] = [];
    if (redundant) {
      // Both brokers are made ready (connected, exchange prepared) BEFORE the flags are fixed: a broker that is
      // down is found out before any copy went out flagged "1" (Ruby sends the first copy flagged anyway).
      pair = await this.readyPair(name, messageId, definition.exchange, deadline, errors);
      if (pair.length < 2) {
        this.logger.warn(
          { message: name, messageId, ready: pair, errors },
          `only ${pair.length} broker(s) reachable: publishing ${name} once, not redundantly`,
        );
        redundant = false;
      }
    }
    if (!redundant) {
      prepared = withoutRedundantFlag(prepared);
      const server = await this.failoverPublish(prepared, deadline, errors);
      if (server === undefined) throw new NoMessageSentError(name, errors);
      this.published(prepared, [server], false);
      return 1;
    }
    const used = new Set(pair);
    const placed: string[] = [];
    await Promise.all(
      pair.map((server) => this.placeCopy(prepared, server, 1, used, placed, deadline, errors)),
    );
    return this.finishRedundant(prepared, placed, errors);
  }

  private finishRedundant(prepared: Prepared, servers: string[], errors: unknown[]): number {
    const { name } = prepared;
    const messageId = prepared.message.properties.messageId;
    if (servers.length === 0) {
      const invalid = errors.find((e) => e instanceof InvalidPublishError);
      throw invalid ?? new NoMessageSentError(name, errors);
    }
    if (servers.length === 1) {
      const server = servers[0] as string;
      this.logger.warn(
        { message: name, messageId, server, errors },
        `failed to send message ${name} redundantly: only ${server} confirmed it; its dedup keys stay until garbage collection`,
      );
      this.events.emit('partial', { message: name, messageId, server, errors });
    }
    this.published(prepared, servers, true);
    return servers.length;
  }

  private prepare(
    definition: MessageDefinition,
    payload: unknown,
    options: PublishOptions,
    messageId: string,
    redundant: boolean,
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
      now: this.now?.(),
    });
    const key = options.key ?? definition.key;
    validatePublish(message, {
      exchange: definition.exchange,
      routingKey: key,
      frameMax: this.config.frameMax,
    });
    return {
      name: definition.name,
      exchange: definition.exchange,
      key,
      mandatory: options.mandatory ?? definition.mandatory,
      message,
    };
  }

  /** Two distinct brokers with an open publish channel and the exchange prepared (fewer if not possible). */
  private readyPair(
    name: string,
    messageId: string,
    exchange: string,
    deadline: number,
    errors: unknown[],
  ): string[] | Promise<string[]> {
    const used = new Set<string>();
    const first = this.selectNextServer(used);
    if (first !== undefined) used.add(first);
    const second = this.selectNextServer(used);
    if (second !== undefined) used.add(second);
    if (
      first !== undefined &&
      second !== undefined &&
      this.isReady(first, exchange) &&
      this.isReady(second, exchange)
    ) {
      return [first, second];
    }
    const ready: string[] = [];
    const readyOne = async (candidate: string | undefined): Promise<void> => {
      let server = candidate;
      while (server !== undefined && Date.now() < deadline) {
        for (let attempt = 1; attempt <= 2 && Date.now() < deadline; attempt++) {
          try {
            await this.prepareBroker(server, exchange);
            ready.push(server);
            return;
          } catch (error) {
            errors.push(error);
            this.attemptFailed(name, messageId, server, error, attempt === 2);
          }
        }
        server = this.selectNextServer(used);
        if (server !== undefined) used.add(server);
      }
    };
    return Promise.all([readyOne(first), readyOne(second)]).then(() => ready);
  }

  private isReady(server: string, exchange: string): boolean {
    const broker = this.pool.get(server);
    return broker.readyPublishChannel() !== undefined && this.declared(broker).isDone(exchangeKey(exchange));
  }

  private async prepareBroker(server: string, exchange: string): Promise<void> {
    const broker = this.pool.get(server);
    await broker.publishChannel();
    await this.declared(broker).run(exchangeKey(exchange), () => this.prepareExchange(broker, exchange));
  }

  private published(prepared: Prepared, servers: string[], redundant: boolean): void {
    if (!this.events.has('published')) return;
    this.events.emit('published', {
      message: prepared.name,
      messageId: prepared.message.properties.messageId,
      servers,
      redundant,
    });
  }

  /**
   * Ruby `publish_with_failover`: round robin; a failure retries the same broker once, then marks it dead.
   * `resume` continues after a failed first attempt made by the fast path.
   */
  private async failoverPublish(
    prepared: Prepared,
    deadline: number,
    errors: unknown[],
    resume?: { tries: number; server: string },
  ): Promise<string | undefined> {
    let tries = resume?.tries ?? this.servers.length * 2;
    let server: string | undefined = resume?.server;
    while (tries > 0 && Date.now() < deadline) {
      if (tries % 2 === 0) server = this.selectNextServer();
      if (server === undefined) break;
      try {
        await this.publishOn(server, prepared);
        this.succeeded(server);
        return server;
      } catch (error) {
        if (error instanceof InvalidPublishError) throw error;
        errors.push(error);
        tries--;
        this.attemptFailed(
          prepared.name,
          prepared.message.properties.messageId,
          server,
          error,
          tries % 2 === 0,
        );
      }
    }
    return undefined;
  }

  /**
   * Places one copy of a redundant message: on `first` (from attempt `startAttempt`, the second marks it
   * dead), then on brokers not used yet.
   */
  private async placeCopy(
    prepared: Prepared,
    first: string,
    startAttempt: number,
    used: Set<string>,
    placed: string[],
    deadline: number,
    errors: unknown[],
  ): Promise<void> {
    const messageId = prepared.message.properties.messageId;
    let server: string | undefined = first;
    let attempt = startAttempt;
    while (server !== undefined && Date.now() < deadline) {
      for (; attempt <= 2 && Date.now() < deadline; attempt++) {
        try {
          await this.publishOn(server, prepared);
          this.succeeded(server);
          placed.push(server);
          return;
        } catch (error) {
          errors.push(error);
          if (error instanceof InvalidPublishError) return; // the caller's input: no broker to blame or retry
          this.attemptFailed(prepared.name, messageId, server, error, attempt === 2);
          if (error instanceof BrokerError && error.outcomeUnknown) {
            this.notPlacingAgain(prepared, server);
            return;
          }
        }
      }
      attempt = 1;
      server = this.selectNextServer(used);
      if (server !== undefined) used.add(server);
    }
  }

  /**
   * A redundant copy failed after it was written (outcome unknown): the broker may hold it already. Placing it
   * again, there or elsewhere, could make a third copy, which consumers would handle again once the keys of
   * the first two are gone. Used by every path that places copies (`placeCopy`, `recoverRedundant`).
   */
  private notPlacingAgain(prepared: Prepared, server: string): void {
    const messageId = prepared.message.properties.messageId;
    this.logger.warn(
      { message: prepared.name, messageId, server },
      `copy of ${prepared.name} on ${server} has an unknown outcome; not placing it again`,
    );
  }

  private attemptFailed(
    name: string,
    messageId: string,
    server: string,
    error: unknown,
    markDead: boolean,
  ): void {
    this.logger.warn(
      { message: name, messageId, server, err: error },
      `publishing ${name} to ${server} failed: ${error instanceof Error ? error.message : String(error)}`,
    );
    // Like Ruby's `stop!`: forget what was declared there, so the next attempt redeclares (e.g. a deleted
    // exchange makes every publish fail with NOT_FOUND until it is declared again).
    this.declared(this.pool.get(server)).clear();
    this.events.emit('failover', { message: name, messageId, server, error });
    if (markDead) this.markDead(server, error);
  }

  private publishOn(server: string, prepared: Prepared): Promise<void> {
    const broker = this.pool.get(server);
    const key = exchangeKey(prepared.exchange);
    const channel = broker.readyPublishChannel();
    // Fast path: channel open and the exchange prepared on this connection; no extra awaits.
    if (channel && this.declared(broker).isDone(key)) return this.send(channel, prepared);
    return this.publishOnSlow(broker, key, prepared);
  }

  private async publishOnSlow(
    broker: BrokerConnection,
    exchangeKey: string,
    prepared: Prepared,
  ): Promise<void> {
    const channel = await broker.publishChannel();
    await this.declared(broker).run(exchangeKey, () => this.prepareExchange(broker, prepared.exchange));
    await this.send(channel, prepared);
  }

  private send(channel: PublishChannel, prepared: Prepared): Promise<void> {
    const { body, properties } = prepared.message;
    return channel.publish(
      prepared.exchange,
      prepared.key,
      body,
      properties as unknown as Record<string, unknown>,
      prepared.mandatory ? MANDATORY : undefined,
    );
  }

  /** Lazy queue setup on this broker: the exchange's queues (with policies), then the exchange itself. */
  private async prepareExchange(broker: BrokerConnection, exchange: string): Promise<void> {
    const declarer = await broker.declarer();
    if (this.config.publisherLazyQueueSetup) {
      for (const queue of this.topology.queuesOfExchange(exchange)) {
        await this.setupQueueOn(broker, declarer, queue.name);
      }
    }
    await declarer.declareExchange(this.topology.exchange(exchange));
  }

  private async setupQueueOn(
    broker: BrokerConnection,
    declarer: Awaited<ReturnType<BrokerConnection['declarer']>>,
    queue: string,
  ): Promise<SetupQueueResult> {
    const result = await setupQueue(declarer, this.topology, queue, {
      server: broker.server,
      config: this.config,
      logger: this.logger,
      policies: this.policies,
      policyPublisher: { publish: async (...args) => (await broker.publishChannel()).publish(...args) },
      once: (key, fn) => this.declared(broker).run(`publisher:${key}`, fn),
      ...(this.now ? { now: this.now } : {}),
    });
    if (result.policy === 'failed') {
      this.events.emit('setupError', { server: broker.server, queue, error: result.policyError });
    }
    return result;
  }

  /** What was declared on a broker's current publishing connection (forgotten when it is lost). */
  private declared(broker: BrokerConnection): Memo {
    let memo = this.declarations.get(broker);
    if (memo === undefined) {
      const created = new Memo();
      broker.onLost((event) => {
        if (event.role === 'publisher' && !broker.publisherConnected) created.clear();
      });
      this.declarations.set(broker, created);
      memo = created;
    }
    return memo;
  }

  private selectNextServer(exclude?: ReadonlySet<string>): string | undefined {
    const n = this.live.length;
    for (let i = 0; i < n; i++) {
      this.cursor = (this.cursor + 1) % n;
      const server = this.live[this.cursor];
      if (server !== undefined && !exclude?.has(server)) return server;
    }
    return undefined;
  }

  private markDead(server: string, error: unknown): void {
    if (this.dead.has(server)) return;
    this.dead.set(server, Date.now());
    this.probation.delete(server);
    this.live = this.live.filter((s) => s !== server);
    this.logger.warn({ server, err: error }, `broker ${server} marked dead`);
    this.events.emit('brokerDead', { server, error });
  }

  private succeeded(server: string): void {
    if (this.probation.size === 0) return;
    const diedAt = this.probation.get(server);
    if (diedAt === undefined) return;
    this.probation.delete(server);
    const deadForMs = Date.now() - diedAt;
    this.logger.info({ server, deadForMs }, `broker ${server} recovered`);
    this.events.emit('brokerRecovered', { server, deadForMs });
  }

  /** Ruby `recycle_dead_servers`: dead longer than `deadServerRetryInterval` → back; none alive → the oldest. */
  private recycleDeadServers(): void {
    if (this.dead.size === 0) return;
    const cutoff = Date.now() - this.config.deadServerRetryInterval * 1000;
    const back: string[] = [];
    for (const [server, diedAt] of this.dead) if (diedAt <= cutoff) back.push(server);
    if (back.length === 0 && this.live.length === 0) {
      let oldest: string | undefined;
      let oldestAt = Infinity;
      for (const [server, diedAt] of this.dead) {
        if (diedAt < oldestAt) {
          oldest = server;
          oldestAt = diedAt;
        }
      }
      if (oldest !== undefined) back.push(oldest);
    }
    for (const server of back) {
      this.probation.set(server, this.dead.get(server) ?? Date.now());
      this.dead.delete(server);
      this.live.push(server);
      this.logger.info({ server }, `retrying dead broker ${server}`);
    }
  }

  /**
   * Declares all registered queues (with dead letter queues, bindings and policies, incl. the policy queue) on
   * every broker, brokers in parallel. Resolves with a per-broker report when everything worked; rejects with
   * `QueueSetupError` (carrying the same report) if a declaration failed on some broker or a policy could not be
   * applied/published. Every failure is also logged.
   */
  async setupQueuesAndPolicies(): Promise<BrokerSetupReport[]> {
    const errors: unknown[] = [];
    const report = await Promise.all(
      this.servers.map(async (server): Promise<BrokerSetupReport> => {
        const broker = this.pool.get(server);
        const queues: SetupQueueResult[] = [];
        try {
          const declarer = await broker.declarer();
          for (const queue of this.topology.queues()) {
            const result = await this.setupQueueOn(broker, declarer, queue.name);
            queues.push(result);
            if (result.policy === 'failed') errors.push(result.policyError);
          }
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
    this.throttleLimits = new Map(Object.entries(limits));
    if (this.throttleTimer) clearInterval(this.throttleTimer);
    this.throttleTimer = undefined;
    if (this.throttleLimits.size === 0) {
      this.throttledState = false;
      return;
    }
    this.throttleTimer = setInterval(
      () => void this.refreshThrottling(),
      this.config.throttlingRefreshInterval * 1000,
    );
    this.throttleTimer.unref();
    void this.refreshThrottling();
  }

  /** Whether publishing is currently throttled. */
  throttled(): boolean {
    return this.throttledState;
  }

  /** Ruby `throttling_status`. */
  throttlingStatus(): 'throttled' | 'unthrottled' {
    return this.throttledState ? 'throttled' : 'unthrottled';
  }

  /** Measures queue lengths now (also what the background timer runs); concurrent calls share one run. */
  refreshThrottling(): Promise<void> {
    this.throttleRefresh ??= this.measureThrottling().finally(() => {
      this.throttleRefresh = undefined;
    });
    return this.throttleRefresh;
  }

  private async measureThrottling(): Promise<void> {
    let throttled = false;
    for (const [queue, limit] of this.throttleLimits) {
      const amqpName = this.topology.hasQueue(queue) ? this.topology.queue(queue).amqpName : queue;
      const lengths = await Promise.all(
        this.servers.map(async (server) => {
          try {
            const declarer = await this.pool.get(server).declarer();
            return await declarer.queueLength(amqpName);
          } catch (error) {
            this.logger.warn(
              { server, queue, err: error },
              `could not measure the length of ${queue} on ${server}`,
            );
            return 0;
          }
        }),
      );
      const total = lengths.reduce((a, b) => a + b, 0);
      if (total > limit) throttled = true;
    }
    if (throttled !== this.throttledState) {
      this.logger.info({ throttled }, throttled ? 'publisher throttled' : 'publisher no longer throttled');
    }
    this.throttledState = throttled && this.throttleLimits.size > 0;
  }

  /** Purges the queues on every broker (declaring them first, like Ruby); errors are logged and ignored. */
  async purge(queues: readonly string[]): Promise<void> {
    await Promise.all(
      this.servers.map(async (server) => {
        for (const name of queues) {
          try {
            const declarer = await this.pool.get(server).declarer();
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
    return this.servers.every((server) => {
      const error = this.pool.get(server).lastBackgroundError;
      return error === undefined || error.at < since;
    });
  }

  /**
   * Stops accepting publishes, waits for outstanding ones (confirms) up to `timeout` seconds (default
   * `publishTimeout`), then closes the connections if the pool is the publisher's own.
   */
  async close(options: { timeout?: number } = {}): Promise<void> {
    this.closing = true;
    if (this.throttleTimer) clearInterval(this.throttleTimer);
    this.throttleTimer = undefined;
    const timeoutMs = (options.timeout ?? this.config.publishTimeout) * 1000;
    if (this.running > 0) {
      let timer: NodeJS.Timeout | undefined;
      let wake: (() => void) | undefined;
      await new Promise<void>((resolve) => {
        wake = resolve;
        this.idleWaiters.add(resolve);
        timer = setTimeout(resolve, timeoutMs);
      });
      clearTimeout(timer);
      if (wake) this.idleWaiters.delete(wake);
      if (this.running > 0) {
        this.logger.warn({ outstanding: this.running }, 'closing with publishes still unconfirmed');
      }
    }
    if (this.ownsPool) await this.pool.close();
  }
}

/** The same prepared message with flags "0": a redundant publish that can reach only one broker. */
function withoutRedundantFlag(prepared: Prepared): Prepared {
  const { message } = prepared;
  if (message.properties.headers.flags === '0') return prepared;
  // Spreading keeps the key order: `flags` stays where the encoder put it.
  const headers = { ...message.properties.headers, flags: '0' };
  return { ...prepared, message: { ...message, properties: { ...message.properties, headers } } };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
