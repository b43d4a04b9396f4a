// Over 400 lines on purpose: one delivery's whole path, arrival to end, read top to bottom in one file.
/**
 * One delivery from its arrival to its end: decoded once, it joins the line of its message's copies, waits
 * for a copy in flight here (holding no slot), takes a handler slot, runs the state machine
 * (`processDelivery`), and leaves the line. What outlives a delivery is also here: the ack counts handed
 * over between copies or held for a copy that did not come (recorded by a sweep, and at stop), and the
 * abandoned runs given back to the store. This is the only place outside the state machine that calls the
 * store.
 */
import {
  ClosedError,
  InvariantError,
  Outcome,
  type BeetleConfig,
  type DecodeResult,
  type DedupStore,
  type Logger,
  type MessageRef,
  type QueueDefinition,
  type DeliveryObservation,
  type Telemetry,
} from '@beetle/core';
import {
  DeadlineSweeper,
  decodeMessage,
  Slots,
  TIMEOUT_GRACE_PERIOD,
  type Clock,
  type TimerHandle,
} from '@beetle/core/kit';
import type { DeliverySink, SubscriberEmitter } from './broker-consumer.js';
import type { Delivery, SubscriberChannel } from './broker-seam.js';
import { LocalCopies, type CopyLine, type DueAcks } from './copies.js';
import type { ResolvedHandler } from './handler.js';
import { processDelivery, type AbandonedRun, type ProcessResult } from './processing.js';
import { ChannelSettler, type Requeues } from './settle.js';

/** How often waits for a copy in flight are checked against their bound, and held ack counts swept (ms). */
const COPY_SWEEP_MS = 1000;

export interface DeliveriesOptions {
  readonly config: BeetleConfig;
  readonly store: DedupStore;
  readonly clock: Clock;
  readonly logger: Logger;
  /** The registered handlers by queue name (the subscriber's registry). */
  readonly handlers: ReadonlyMap<string, ResolvedHandler>;
  readonly requeues: Requeues;
  readonly events: SubscriberEmitter;
  readonly telemetry?: Telemetry | undefined;
}

/** A delivery waiting for the copy before it: how it is woken (`false`: stop), once. */
interface CopyWait {
  readonly queue: string;
  readonly line: CopyLine;
  readonly resolve: (go: boolean) => void;
  done: boolean;
}

/** The deliveries of one subscriber, from every broker. */
export class Deliveries implements DeliverySink {
  private readonly config: BeetleConfig;
  private readonly store: DedupStore;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly handlers: ReadonlyMap<string, ResolvedHandler>;
  private readonly requeues: Requeues;
  private readonly events: SubscriberEmitter;
  private readonly telemetry: Telemetry | undefined;
  private stopping = false;
  /** Aborted at a forced stop: running handlers are abandoned. */
  private readonly stopController = new AbortController();
  /** Handlers running at once (`subscriberConcurrency`). */
  private readonly slots: Slots;
  /** Per queue, the runs of its handler at once, for handlers with their own `concurrency`. */
  private readonly handlerSlots = new Map<string, Slots>();
  private readonly inFlight = new Set<Promise<void>>();
  /** The copies of each message in flight here, and recently completed ones (see `LocalCopies`). */
  private readonly copies: LocalCopies;
  /** Deliveries waiting for a copy in flight, until their bound (one timer for all). */
  private readonly copyWaits: DeadlineSweeper<CopyWait>;
  /**
   * Records held ack counts whose hold is over, once a sweep period while any is held. `LocalCopies` knows
   * which are due (`takeDueHeld`), so the sweeper watches a single item, `copies`, due at every sweep.
   */
  private readonly heldSweep: DeadlineSweeper<LocalCopies>;
  /** Held counts being recorded by the sweep (awaited by stop, so that the store is not closed under them). */
  private readonly heldRecordings = new Set<Promise<void>>();
  /** Abandoned runs being given back to the store (awaited by stop, before the channels close). */
  private readonly releases = new Set<Promise<void>>();

  constructor(options: DeliveriesOptions) {
    this.config = options.config;
    this.store = options.store;
    this.clock = options.clock;
    this.logger = options.logger;
    this.handlers = options.handlers;
    this.requeues = options.requeues;
    this.events = options.events;
    this.telemetry = options.telemetry;
    this.slots = new Slots(this.config.subscriberConcurrency);
    this.copies = new LocalCopies(() => this.clock.nowMs());
    this.copyWaits = new DeadlineSweeper({
      periodMs: COPY_SWEEP_MS,
      clock: this.clock,
      onExpired: (wait) => {
        this.logger.warn(
          { queue: wait.queue },
          'a copy of this message is still being processed here; going on without waiting for it',
        );
        this.endWait(wait, true);
      },
    });
    this.heldSweep = new DeadlineSweeper({
      periodMs: COPY_SWEEP_MS,
      clock: this.clock,
      onExpired: () => this.sweepHeld(),
    });
  }

  /** Deliveries between their arrival and their end. */
  get inFlightCount(): number {
    return this.inFlight.size;
  }

  onDelivery(server: string, channel: SubscriberChannel, queue: QueueDefinition, delivery: Delivery): void {
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
    const observation = this.telemetry === undefined ? undefined : this.observe(server, queue, delivery);
    const tracked = this.run(server, channel, queue, delivery, decoded, line, observation);
    this.inFlight.add(tracked);
    void tracked.finally(() => this.inFlight.delete(tracked));
  }

  // ------------------------------------------------------------------------------------------------ stop

  /** Stop, first step: deliveries arriving now, and those waiting for a slot, are left for redelivery. */
  beginStop(): void {
    this.stopping = true;
    this.slots.close();
    for (const slots of this.handlerSlots.values()) slots.close();
  }

  /** Deliveries waiting for a copy in flight are not started (redelivered when the channel closes). */
  endCopyWaits(): void {
    for (const wait of [...this.copyWaits.items()]) this.endWait(wait, false);
    this.copyWaits.clear();
  }

  /** Resolves true once nothing is in flight, false after `ms`. */
  async drain(ms: number): Promise<boolean> {
    if (this.inFlight.size === 0) return true;
    return within(
      this.clock,
      (async (): Promise<true> => {
        while (this.inFlight.size > 0) await Promise.all([...this.inFlight]);
        return true;
      })(),
      ms,
    );
  }

  /** A forced stop: running handlers are abandoned (their signals abort, their deliveries stay unsettled). */
  abandonRunning(): void {
    this.stopController.abort(new ClosedError('subscriber stopped'));
  }

  /**
   * Records every held ack count and waits for the abandoned runs to be given back, at most `timeoutSeconds`
   * (a store that is down would otherwise hold `stop()` for its failover timeout: the keys then stay until
   * GC, the abandoned runs until their handler timeout).
   */
  async settleStore(timeoutSeconds: number): Promise<void> {
    this.heldSweep.clear();
    let acksRecorded = false;
    const held = this.recordHeldAcks(this.copies.takeDueHeld(true));
    const recorded = Promise.all([held, ...this.heldRecordings]).then(() => {
      acksRecorded = true;
    });
    const settled = Promise.all([recorded, ...this.releases]).then(() => true);
    if (await within(this.clock, settled, timeoutSeconds * 1000)) return;
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

  // ------------------------------------------------------------------------------------------ one delivery

  /** One delivery from its arrival to its end; never rejects (unexpected errors are logged). */
  private async run(
    server: string,
    channel: SubscriberChannel,
    queue: QueueDefinition,
    delivery: Delivery,
    decoded: DecodeResult,
    line: CopyLine | undefined,
    observation: DeliveryObservation | undefined,
  ): Promise<void> {
    let result: ProcessResult | undefined;
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
        // The handler's own slot first, so that deliveries waiting for it hold none of the shared ones.
        const own = this.ownSlots(queue.name);
        if (own !== undefined && !own.tryAcquire() && !(await own.acquire())) return;
        try {
          // A free slot is taken synchronously (no await); otherwise wait in line for one.
          if (!this.slots.tryAcquire() && !(await this.slots.acquire())) return;
          try {
            result = await this.handle(server, channel, queue, delivery, decoded, line, observation);
          } finally {
            this.slots.release();
          }
        } finally {
          own?.release();
        }
      } finally {
        if (line !== undefined && decoded.ok)
          await this.recordInheritedAcks(line, queue, decoded.message.uuid);
        line?.leave();
        if (this.copies.heldMessages > 0 && !this.stopping && this.heldSweep.size === 0)
          this.heldSweep.add(this.copies, 0);
      }
    } catch (error) {
      this.logger.error({ err: error, server, queue: queue.name }, 'unexpected error handling a delivery');
    }
    if (observation !== undefined) this.endObservation(observation, result);
  }

  /** The slots of a handler with its own `concurrency` (made on its first delivery). */
  private ownSlots(queue: string): Slots | undefined {
    const concurrency = this.handlers.get(queue)?.concurrency;
    if (concurrency === undefined) return undefined;
    let slots = this.handlerSlots.get(queue);
    if (slots === undefined) {
      slots = new Slots(concurrency);
      if (this.stopping) slots.close();
      this.handlerSlots.set(queue, slots);
    }
    return slots;
  }

  /** Starts observing a delivery; a telemetry that throws is logged and the delivery goes on unobserved. */
  private observe(
    server: string,
    queue: QueueDefinition,
    delivery: Delivery,
  ): DeliveryObservation | undefined {
    try {
      const { messageId, headers } = delivery.properties;
      return this.telemetry?.delivery?.({
        queue: queue.name,
        amqpQueue: queue.amqpName,
        server,
        exchange: delivery.fields.exchange,
        routingKey: delivery.fields.routingKey,
        messageId: typeof messageId === 'string' ? messageId : undefined,
        headers,
        redelivered: delivery.fields.redelivered,
        bodySize: delivery.content.length,
      });
    } catch (error) {
      this.logger.error({ err: error, server, queue: queue.name }, 'telemetry observer threw; ignored');
      return undefined;
    }
  }

  /** Ends an observation with what became of the delivery (no result: it was left for redelivery). */
  private endObservation(observation: DeliveryObservation, result: ProcessResult | undefined): void {
    const handled = result?.handlerCalled === true;
    try {
      observation.end({
        outcome: result?.outcome,
        attempt: handled ? (result?.message?.attempt ?? 0) : 0,
        duplicate: result?.outcome === Outcome.OK && !handled,
        error: result?.error,
      });
    } catch (error) {
      this.logger.error({ err: error }, 'telemetry observer threw; ignored');
    }
  }

  private async handle(
    server: string,
    channel: SubscriberChannel,
    queue: QueueDefinition,
    delivery: Delivery,
    decoded: DecodeResult,
    copy: CopyLine | undefined,
    observation: DeliveryObservation | undefined,
  ): Promise<ProcessResult> {
    const handler = this.handlers.get(queue.name);
    if (handler === undefined) throw new InvariantError(`no handler for queue ${queue.name}`);
    const started = this.clock.nowMs();
    const result = await processDelivery({
      delivery,
      source: { queue: queue.amqpName, server },
      handler,
      store: this.store,
      settler: new ChannelSettler(this.requeues, channel, queue, delivery),
      clock: this.clock,
      logger: this.logger,
      stopSignal: this.stopController.signal,
      decoded,
      copy,
      ...(observation === undefined ? {} : { observation }),
    });
    if (result.outcome === undefined) {
      if (result.abandonedRun !== undefined) {
        const release = this.releaseRun(result.abandonedRun);
        this.releases.add(release);
        void release.finally(() => this.releases.delete(release));
      }
      this.events.emit('abandoned', { message: result.message, queue: queue.name, server });
      return result;
    }
    this.events.emit('processed', {
      outcome: result.outcome,
      message: result.message,
      queue: queue.name,
      server,
      durationMs: this.clock.nowMs() - started,
      settled: result.settled,
      error: result.error,
    });
    if (result.outcome === Outcome.InternalError) {
      this.events.emit('error', { error: result.error, phase: 'processing', server, queue: queue.name });
    }
    return result;
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
      const wait: CopyWait = { queue: queue.name, line, resolve, done: false };
      this.copyWaits.add(wait, this.clock.nowMs() + boundMs);
      void previous.then(() => this.endWait(wait, true));
    });
  }

  private endWait(wait: CopyWait, go: boolean): void {
    if (wait.done) return;
    wait.done = true;
    wait.line.waiting = false; // from now on the copy before cannot hand its acks over
    // The last wait is over: stop the sweep's timer now rather than at its next tick.
    if (this.copyWaits.delete(wait) && this.copyWaits.size === 0) this.copyWaits.clear();
    wait.resolve(go && !this.stopping);
  }

  /** The sweep of held ack counts: records those due, and goes on while any are held. */
  private sweepHeld(): void {
    const recording = this.recordHeldAcks(this.copies.takeDueHeld());
    this.heldRecordings.add(recording);
    void recording.finally(() => this.heldRecordings.delete(recording));
    if (this.copies.heldMessages > 0 && !this.stopping) this.heldSweep.add(this.copies, 0);
  }

  // ------------------------------------------------------------------------------------------- the store

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
}

/** The in-flight key of a decoded Beetle delivery (AMQP queue + uuid); undefined for undecodable deliveries. */
function inFlightKey(queue: QueueDefinition, decoded: DecodeResult): string | undefined {
  // Message ids never contain ":" (decoding refuses them), so the key is unambiguous.
  return decoded.ok ? `${decoded.message.uuid}:${queue.amqpName}` : undefined;
}

/** `done`'s value, or false after `ms`. */
async function within(clock: Clock, done: Promise<boolean>, ms: number): Promise<boolean> {
  let timer: TimerHandle;
  const timedOut = new Promise<false>((resolve) => {
    timer = clock.setTimeout(() => resolve(false), ms);
  });
  const result = await Promise.race([done, timedOut]);
  clock.clearTimeout(timer);
  return result;
}
