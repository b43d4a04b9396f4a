import { BrokerPool } from '@beetle/broker-amqp';
import {
  ClosedError,
  ConfigurationError,
  Outcome,
  UnknownQueueError,
  silentLogger,
  type BeetleConfig,
  type DecodeResult,
  type DedupStore,
  type Logger,
  type MessageRef,
  type QueueDefinition,
  type Topology,
} from '@beetle/core';
import {
  backoff,
  type Clock,
  decodeMessage,
  systemClock,
  TIMEOUT_GRACE_PERIOD,
  type TimerHandle,
  TypedEmitter,
} from '@beetle/core/kit';
import {
  defaultQueueSetup,
  memo,
  type Delivery,
  type QueueSetup,
  type SubscriberChannel,
  type SubscriberPool,
} from './broker.js';
import { LocalCopies, type CopyLine, type DueAcks } from './copies.js';
import type { SubscriberErrorEvent, SubscriberEvents } from './events.js';
import { resolveHandler, type Handler, type HandlerOptions, type ResolvedHandler } from './handler.js';
import { processDelivery, type AbandonedRun, type DeliverySettler, type RejectReason } from './processing.js';
import { isNotReady, RequeuePacing } from './requeue.js';

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

/** How often waits for a copy in flight are checked against their bound (ms). */
const COPY_SWEEP_MS = 1000;

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
  /** Deliveries held before they go back to the broker: their timers and what hands them back. */
  private readonly requeues = new Map<TimerHandle, () => void>();
  /** How long copies of messages that are not ready yet are held before they go back (see `reject`). */
  private readonly pacing: RequeuePacing;
  /** Dead-letter deliveries held per channel and queue (bounded to half the prefetch, see `reject`). */
  private readonly deadLetterHolds = new Map<SubscriberChannel, Map<string, number>>();
  /** The copies of each message in flight here, and recently completed ones (see `LocalCopies`). */
  private readonly copies: LocalCopies;
  /** Deliveries waiting for a copy in flight: their wake-up (`false`: stop) and when to stop waiting. */
  private readonly copyWaits = new Map<(go: boolean) => void, { until: number; queue: string }>();
  private copySweep: TimerHandle = undefined;
  /** Records held ack counts whose hold is over (see `LocalCopies`); runs while any are held. */
  private heldSweep: TimerHandle = undefined;
  /** Held counts being recorded by the sweep (awaited by stop, so that the store is not closed under them). */
  private readonly heldRecordings = new Set<Promise<void>>();
  /** Abandoned runs being given back to the store (awaited by stop, before the channels close). */
  private readonly releases = new Set<Promise<void>>();
  /** `reject` for the settlers of the deliveries (bound once, not per delivery). */
  private readonly rejectDelivery: RejectDelivery = (channel, queue, delivery, reason) =>
    this.reject(channel, queue, delivery, reason);

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
    this.copies = new LocalCopies(() => this.clock.nowMs());
    this.pacing = new RequeuePacing(
      this.config.rejectRequeueDelay * 1000,
      this.config.rejectRequeueMaxDelay * 1000,
    );
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
      pool: this.options.pool ?? new BrokerPool(this.config, this.logger),
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
    // Decoded once here (for the in-flight key) and handed on to the state machine.
    const decoded = decodeMessage(delivery, { queue: queue.amqpName, server });
    const key = inFlightKey(queue, decoded);
    const line =
      key === undefined || !decoded.ok
        ? undefined
        : this.copies.enter(key, { queue: queue.amqpName, uuid: decoded.message.uuid });
    const tracked = this.runDelivery(server, channel, queue, delivery, decoded, line);
    this.inFlight.add(tracked);
    void tracked.finally(() => this.inFlight.delete(tracked));
  }

  /** One delivery from its arrival to its end; never rejects (unexpected errors are logged). */
  private async runDelivery(
    server: string,
    channel: SubscriberChannel,
    queue: QueueDefinition,
    delivery: Delivery,
    decoded: DecodeResult,
    line: CopyLine | undefined,
  ): Promise<void> {
    try {
      try {
        // A copy of the same message is being processed here: wait for it (without holding a slot).
        if (line?.previous !== undefined && !(await this.awaitCopy(line, line.previous, queue))) {
          this.logger.debug(
            { server, queue: queue.name, uuid: delivery.properties.messageId },
            'stopped while waiting for a copy in flight; left for redelivery',
          );
          return;
        }
        // A free slot is taken synchronously (no await); otherwise wait in line for one.
        if (!this.tryAcquireSlot() && !(await this.acquireSlot())) return;
        try {
          await this.handle(server, channel, queue, delivery, decoded, line);
        } finally {
          this.releaseSlot();
        }
      } finally {
        if (line !== undefined && decoded.ok)
          await this.recordInheritedAcks(line, queue, decoded.message.uuid);
        line?.leave();
        if (this.copies.heldMessages > 0) this.scheduleHeldSweep();
      }
    } catch (error) {
      this.logger.error({ err: error, server, queue: queue.name }, 'unexpected error handling a delivery');
    }
  }

  private async handle(
    server: string,
    channel: SubscriberChannel,
    queue: QueueDefinition,
    delivery: Delivery,
    decoded: DecodeResult,
    copy: CopyLine | undefined,
  ): Promise<void> {
    const handler = this.handlers.get(queue.name);
    if (handler === undefined) throw new Error(`no handler for queue ${queue.name}`);
    const started = this.clock.nowMs();
    const result = await processDelivery({
      delivery,
      source: { queue: queue.amqpName, server },
      handler,
      store: this.store,
      settler: new ChannelSettler(this.rejectDelivery, channel, queue, delivery),
      clock: this.clock,
      logger: this.logger,
      stopSignal: this.stopController.signal,
      decoded,
      copy,
    });
    if (result.outcome === undefined) {
      if (result.abandonedRun !== undefined) {
        const release = this.releaseRun(result.abandonedRun);
        this.releases.add(release);
        void release.finally(() => this.releases.delete(release));
      }
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

  /**
   * Waits for the processing of a copy of the same message in this process, bounded by the handler timeout
   * plus the grace period (after which the store would consider that copy's consumer dead anyway) and by stop.
   * Resolves true to go on with the state machine, false when stopping (the delivery stays unsettled).
   */
  private awaitCopy(line: CopyLine, previous: Promise<void>, queue: QueueDefinition): Promise<boolean> {
    if (this.stopping) {
      line.waiting = false;
      return Promise.resolve(false);
    }
    const timeout = this.handlers.get(queue.name)?.policy.timeout ?? 0;
    const boundMs = (timeout + TIMEOUT_GRACE_PERIOD) * 1000;
    return new Promise<boolean>((resolve) => {
      let done = false;
      const finish = (go: boolean): void => {
        if (done) return;
        done = true;
        line.waiting = false; // from now on the copy before cannot hand its acks over
        this.copyWaits.delete(finish);
        if (this.copyWaits.size === 0 && this.copySweep !== undefined) {
          this.clock.clearTimeout(this.copySweep);
          this.copySweep = undefined;
        }
        resolve(go && !this.stopping);
      };
      this.copyWaits.set(finish, { until: this.clock.nowMs() + boundMs, queue: queue.name });
      this.scheduleCopySweep();
      void previous.then(() => finish(true));
    });
  }

  /**
   * Ends the copy waits past their bound, checking once a second while any wait (the bound is at least the
   * 10 s grace period, so a second late is fine): one timer for all waits instead of one per waiting copy.
   */
  private scheduleCopySweep(): void {
    if (this.copySweep !== undefined) return;
    this.copySweep = this.clock.setTimeout(() => {
      this.copySweep = undefined;
      const now = this.clock.nowMs();
      for (const [finish, wait] of this.copyWaits) {
        if (now < wait.until) continue;
        this.logger.warn(
          { queue: wait.queue },
          'a copy of this message is still being processed here; going on without waiting for it',
        );
        finish(true);
      }
      if (this.copyWaits.size > 0) this.scheduleCopySweep();
    }, COPY_SWEEP_MS);
  }

  /** Once a second while ack counts are held: records those whose hold is over. */
  private scheduleHeldSweep(): void {
    if (this.heldSweep !== undefined || this.stopping) return;
    this.heldSweep = this.clock.setTimeout(() => {
      this.heldSweep = undefined;
      const recording = this.recordHeldAcks(this.copies.takeDueHeld());
      this.heldRecordings.add(recording);
      void recording.finally(() => this.heldRecordings.delete(recording));
      if (this.copies.heldMessages > 0) this.scheduleHeldSweep();
    }, COPY_SWEEP_MS);
  }

  /** Records ack counts held for a copy that did not come (in time). */
  private async recordHeldAcks(due: readonly DueAcks[]): Promise<void> {
    await Promise.all(due.map(({ ref, acks }) => this.recordAcks(ref, acks, 'a held ack count')));
  }

  /**
   * Records acks an earlier copy handed over that this delivery did not record with its own (it was not
   * acked as completed: stopped while waiting, expired, ...).
   */
  private recordInheritedAcks(line: CopyLine, queue: QueueDefinition, uuid: string): Promise<void> {
    return this.recordAcks(
      { queue: queue.amqpName, uuid },
      line.takeInheritedAcks(),
      'the acks of earlier copies',
    );
  }

  /** Records `acks` acks of a redundant message. Errors are logged: the keys then stay until GC removes them. */
  private async recordAcks(ref: MessageRef, acks: number, what: string): Promise<void> {
    if (acks === 0) return;
    try {
      await this.store.acknowledged(ref, { redundant: true, acks });
    } catch (error) {
      this.logger.error(
        { err: error, queue: ref.queue, uuid: ref.uuid, acks },
        `could not record ${what}; the dedup keys stay until garbage collected`,
      );
    }
  }

  /**
   * Gives an abandoned run back to the store (`DedupStore.release`), so that the redelivery runs at once:
   * left counted, its message would wait for the handler timeout, and a last attempt would end as
   * `AttemptsLimitReached` without a run. Errors are logged: the run then times out as before.
   */
  private async releaseRun(run: AbandonedRun): Promise<void> {
    const { ref, attempts } = run;
    const context = { queue: ref.queue, uuid: ref.uuid, attempts };
    if (this.store.release === undefined) {
      this.logger.warn(
        context,
        'the dedup store cannot release an abandoned run; it runs again after its timeout',
      );
      return;
    }
    try {
      const released = await this.store.release(ref, { attempts });
      if (!released) this.logger.debug(context, 'abandoned run not released: the message moved on meanwhile');
    } catch (error) {
      this.logger.error(
        { ...context, err: error },
        'could not release an abandoned run; its message runs again only after its handler timeout',
      );
    }
  }

  /**
   * Hands a delivery back to the broker: to the dead letter queue (dead lettering) or requeued, after a hold
   * (a timer for this delivery alone). Requeues wait `rejectRequeueDelay`. Copies of a message that is not
   * ready yet are paced (`RequeuePacing`): held longer with each sighting, or until the known retry time,
   * up to `rejectRequeueMaxDelay`. With dead lettering the first sighting goes back at once, as in Ruby (the
   * dead letter queue's TTL paces it), and later ones are held only while fewer than half of the consumer's
   * prefetch are held that way: a held delivery occupies a prefetch slot that the rest of the queue could use.
   */
  private reject(
    channel: SubscriberChannel,
    queue: QueueDefinition,
    delivery: Delivery,
    reason: RejectReason | undefined,
  ): void {
    const requeue = !queue.deadLettering;
    const { rejectRequeueDelay, rejectRequeueMaxDelay, prefetchCount } = this.config;
    let holdMs = requeue ? rejectRequeueDelay * 1000 : 0;
    const paced = rejectRequeueDelay > 0 && rejectRequeueMaxDelay > 0 && isNotReady(reason);
    let holds: Map<string, number> | undefined;
    if (paced && !this.stopping) {
      if (!requeue) {
        holds = this.deadLetterHolds.get(channel);
        if ((holds?.get(queue.name) ?? 0) >= Math.floor(prefetchCount / 2)) {
          channel.reject(delivery, false);
          return;
        }
      }
      const key = `${String(delivery.properties.messageId)}:${queue.amqpName}`;
      holdMs = this.pacing.holdMs(key, reason, this.clock.nowMs(), !requeue);
    }
    if (holdMs <= 0 || this.stopping) {
      channel.reject(delivery, requeue);
      return;
    }
    if (!requeue) {
      if (holds === undefined) {
        holds = new Map();
        this.deadLetterHolds.set(channel, holds);
      }
      holds.set(queue.name, (holds.get(queue.name) ?? 0) + 1);
    }
    const fire = (): void => {
      this.requeues.delete(handle);
      if (holds !== undefined) this.releaseDeadLetterHold(channel, holds, queue.name);
      channel.reject(delivery, requeue);
    };
    const handle = this.clock.setTimeout(fire, holdMs);
    this.requeues.set(handle, fire);
  }

  private releaseDeadLetterHold(channel: SubscriberChannel, holds: Map<string, number>, queue: string): void {
    const left = (holds.get(queue) ?? 1) - 1;
    if (left > 0) {
      holds.set(queue, left);
      return;
    }
    holds.delete(queue);
    if (holds.size === 0 && this.deadLetterHolds.get(channel) === holds) this.deadLetterHolds.delete(channel);
  }

  /** Takes a free slot now if there is one (what `acquireSlot` does without waiting). */
  private tryAcquireSlot(): boolean {
    if (this.stopping || this.running >= this.config.subscriberConcurrency) return false;
    this.running++;
    return true;
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
    // 2. Deliveries waiting for a slot or for a copy in flight are not started (redelivered when the channel
    //    closes).
    for (const wake of this.waiting.splice(0)) wake(false);
    for (const wake of [...this.copyWaits.keys()]) wake(false);
    if (this.copySweep !== undefined) this.clock.clearTimeout(this.copySweep);
    this.copySweep = undefined;
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
    // 4. Ack counts held for copies that will not come now are recorded, and abandoned runs released
    //    (within the stop timeout: a store that is down would otherwise hold stop() for its failover
    //    timeout; the keys then stay until GC, the abandoned runs until their handler timeout).
    if (this.heldSweep !== undefined) this.clock.clearTimeout(this.heldSweep);
    this.heldSweep = undefined;
    let acksRecorded = false;
    const recorded = Promise.all([
      this.recordHeldAcks(this.copies.takeDueHeld(true)),
      ...this.heldRecordings,
    ]).then(() => {
      acksRecorded = true;
    });
    const released = Promise.all([...this.releases]);
    if (
      !(await this.within(
        Promise.all([recorded, released]).then(() => true),
        timeoutSeconds * 1000,
      ))
    ) {
      if (!acksRecorded) {
        this.logger.warn(
          { timeoutSeconds },
          'stop timeout: held ack counts not recorded yet; their dedup keys stay until garbage collected',
        );
      }
      if (this.releases.size > 0) {
        this.logger.warn(
          { timeoutSeconds, abandoned: this.releases.size },
          'stop timeout: abandoned runs not released yet; ' +
            'their messages run again only after their handler timeout',
        );
      }
    }
    // 5. Requeue what waits for its requeue delay, then close the channels (unsettled deliveries return).
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
    return this.within(
      (async (): Promise<true> => {
        while (this.inFlight.size > 0) await Promise.all([...this.inFlight]);
        return true;
      })(),
      ms,
    );
  }

  /** `done`'s value, or false after `ms`. */
  private async within(done: Promise<boolean>, ms: number): Promise<boolean> {
    let timer: TimerHandle;
    const timedOut = new Promise<false>((resolve) => {
      timer = this.clock.setTimeout(() => resolve(false), ms);
    });
    const result = await Promise.race([done, timedOut]);
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

/**
 * The consumers of one broker: one channel, one consumer per queue, reconnect with backoff. A consumer the
 * broker cancels (basic.cancel, e.g. its queue was deleted) is restored on the same channel after a backoff:
 * the queue is set up again (queue, dead letter queue, policies, bindings) and consumed again.
 */
class BrokerConsumer {
  private state: BrokerState = 'idle';
  private failures = 0;
  private lastError: unknown;
  private channel: SubscriberChannel | undefined;
  private readonly consumers = new Map<string, string>();
  private reconnectTimer: TimerHandle;
  private closing = false;
  /** Queues (logical names) whose consumer the broker cancelled, waiting to be set up and consumed again. */
  private readonly lost = new Set<string>();
  private readonly recoveryTimers = new Map<string, TimerHandle>();
  /** Consecutive failed recoveries per queue (backoff exponent). */
  private readonly recoveryFailures = new Map<string, number>();

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
    // A new channel sets up and consumes every queue: pending recoveries of cancelled consumers are moot.
    this.clearRecoveries();
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
        this.clearRecoveries();
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
      if (this.lost.has(name)) {
        // Cancelled by the broker (queue deleted?) before or while paused: set it up again first.
        await this.recover(queue);
        continue;
      }
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
    this.clearRecoveries();
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
    // The broker may cancel before basic.consume-ok has been processed here (tag not known yet).
    const consumer: { tag: string | undefined; cancelledEarly: boolean } = {
      tag: undefined,
      cancelledEarly: false,
    };
    const onCancel = (): void => {
      if (consumer.tag === undefined) consumer.cancelledEarly = true;
      else if (this.consumers.get(queue.name) === consumer.tag) this.consumerLost(channel, queue);
    };
    const tag = await channel.consume(
      queue.amqpName,
      (delivery) => this.owner.onDelivery(this.server, channel, queue, delivery),
      onCancel,
    );
    consumer.tag = tag;
    // A pause (or stop) that came in while basic.consume was on its way wins.
    if (this.owner.paused.has(queue.name) || this.closing || this.channel !== channel) {
      await this.cancel(channel, queue.name, tag);
      return;
    }
    if (consumer.cancelledEarly) {
      this.consumerLost(channel, queue);
      return;
    }
    this.consumers.set(queue.name, tag);
  }

  /** The broker cancelled the consumer of `queue` (basic.cancel): report it, set the queue up again later. */
  private consumerLost(channel: SubscriberChannel, queue: QueueDefinition): void {
    if (this.channel !== channel) return;
    this.consumers.delete(queue.name);
    this.lost.add(queue.name);
    const error = new Error(
      `consumer of ${queue.amqpName} on ${this.server} cancelled by the broker (queue deleted?)`,
    );
    this.owner.logger.warn(
      { server: this.server, queue: queue.name },
      `${error.message}; setting the queue up again and consuming it again`,
    );
    this.owner.emit('error', { error, phase: 'consume', server: this.server, queue: queue.name });
    this.scheduleRecovery(queue);
  }

  private scheduleRecovery(queue: QueueDefinition): void {
    if (this.closing || this.recoveryTimers.has(queue.name)) return;
    const { config, clock, random } = this.owner;
    const delay = backoff({
      base: config.subscriberReconnectDelay,
      max: config.subscriberReconnectMaxDelay,
      attempt: this.recoveryFailures.get(queue.name) ?? 0,
      random,
      jitter: 'equal',
    });
    const timer = clock.setTimeout(() => {
      this.recoveryTimers.delete(queue.name);
      void this.recover(queue);
    }, delay * 1000);
    this.recoveryTimers.set(queue.name, timer);
  }

  private clearRecoveries(): void {
    for (const timer of this.recoveryTimers.values()) this.owner.clock.clearTimeout(timer);
    this.recoveryTimers.clear();
    this.recoveryFailures.clear();
    this.lost.clear();
  }

  /**
   * Sets up a queue whose consumer the broker cancelled (exchanges, queue, dead letter queue, policies,
   * bindings) and consumes it again, on the current channel; retried with backoff. Skipped while paused (a
   * resume recovers it) or stopping, and left to the reconnect when the channel is gone. Never throws.
   */
  private async recover(queue: QueueDefinition): Promise<void> {
    const timer = this.recoveryTimers.get(queue.name);
    if (timer !== undefined) {
      this.owner.clock.clearTimeout(timer);
      this.recoveryTimers.delete(queue.name);
    }
    const channel = this.channel;
    if (channel === undefined || this.closing || !this.lost.has(queue.name)) return;
    if (this.owner.paused.has(queue.name)) return;
    const { topology, logger } = this.owner;
    try {
      for (const exchange of topology.exchangesOfQueues([queue.name]))
        await channel.declareExchange(exchange);
      const result = await this.layer.setupQueue(channel, this.server, queue, memo());
      if (result?.policyError !== undefined) {
        const event: SubscriberErrorEvent = {
          error: result.policyError,
          phase: 'policy',
          server: this.server,
          queue: queue.name,
        };
        this.owner.emit('error', event);
      }
      if (this.channel !== channel || this.closing) return;
      this.lost.delete(queue.name);
      if (!this.consumers.has(queue.name)) await this.consume(channel, queue);
      this.recoveryFailures.delete(queue.name);
      if (this.consumers.has(queue.name)) {
        logger.info({ server: this.server, queue: queue.name }, 'consuming again after a broker cancel');
      }
    } catch (error) {
      // A lost channel is the reconnect's business (it sets up and consumes every queue).
      if (this.channel !== channel || this.closing) return;
      this.lost.add(queue.name);
      const failures = (this.recoveryFailures.get(queue.name) ?? 0) + 1;
      this.recoveryFailures.set(queue.name, failures);
      logger.warn(
        { server: this.server, queue: queue.name, err: error, failures },
        'could not set up a queue again after a broker cancel; retrying',
      );
      this.owner.emit('error', { error, phase: 'consume', server: this.server, queue: queue.name });
      this.scheduleRecovery(queue);
    }
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
    this.clearRecoveries();
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
    const delay = backoff({
      base: config.subscriberReconnectDelay,
      max: config.subscriberReconnectMaxDelay,
      attempt: Math.max(0, this.failures - 1),
      random,
      jitter: 'equal',
    });
    this.reconnectTimer = clock.setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.connect();
    }, delay * 1000);
  }
}

/** Settles one delivery on its channel (a class rather than closures: one allocation per delivery). */
type RejectDelivery = (
  channel: SubscriberChannel,
  queue: QueueDefinition,
  delivery: Delivery,
  reason: RejectReason | undefined,
) => void;

class ChannelSettler implements DeliverySettler {
  constructor(
    private readonly rejectDelivery: RejectDelivery,
    private readonly channel: SubscriberChannel,
    private readonly queue: QueueDefinition,
    private readonly delivery: Delivery,
  ) {}

  ack(): boolean {
    return this.channel.ack(this.delivery);
  }

  reject(reason?: RejectReason): void {
    this.rejectDelivery(this.channel, this.queue, this.delivery, reason);
  }

  reply(replyTo: string, body: Buffer, headers: { readonly status: 'OK' | 'FAILED' }): Promise<void> {
    return this.channel.publish('', replyTo, body, { deliveryMode: 1, headers: { ...headers } });
  }
}

/** The in-flight key of a decoded Beetle delivery (AMQP queue + uuid); undefined for undecodable deliveries. */
function inFlightKey(queue: QueueDefinition, decoded: DecodeResult): string | undefined {
  // Message ids never contain ":" (decoding refuses them), so the key is unambiguous.
  return decoded.ok ? `${decoded.message.uuid}:${queue.amqpName}` : undefined;
}

function shuffle<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j] as T, items[i] as T];
  }
  return items;
}
