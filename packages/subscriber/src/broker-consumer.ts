/**
 * The consumers of one broker: one channel, one consumer per queue, reconnect with backoff. A consumer the
 * broker cancels (basic.cancel, e.g. its queue was deleted) is restored on the same channel after a backoff:
 * the queue is set up again (queue, dead letter queue, policies, bindings) and consumed again.
 */
import {
  ClosedError,
  type BeetleConfig,
  type Logger,
  type QueueDefinition,
  type Topology,
} from '@beetle/core';
import { backoff, Memo, type Clock, type TimerHandle } from '@beetle/core/kit';
import type { Delivery, QueueSetup, SubscriberChannel, SubscriberPool } from './broker-seam.js';
import { ConsumerCancelledError } from './errors.js';
import type { SubscriberEvents } from './events.js';

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

/** Where the consumers of every broker hand their deliveries (`Deliveries`). */
export interface DeliverySink {
  /** A delivery of `queue` arrived on `channel`; it is settled on that channel later. */
  onDelivery(server: string, channel: SubscriberChannel, queue: QueueDefinition, delivery: Delivery): void;
}

/** Where the subscriber's events go (the subscriber itself). */
export interface SubscriberEmitter {
  emit<K extends keyof SubscriberEvents>(event: K, payload: SubscriberEvents[K]): void;
}

/** What every `BrokerConsumer` of a subscriber shares, fixed at `listen`. */
export interface ConsumerSettings {
  readonly config: BeetleConfig;
  readonly topology: Topology;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly random: () => number;
  readonly pool: SubscriberPool;
  readonly setupQueue: QueueSetup;
  /** The queues listened to. */
  readonly queues: readonly QueueDefinition[];
  /** Queues (logical names) paused by the subscriber. */
  readonly paused: ReadonlySet<string>;
  readonly events: SubscriberEmitter;
}

export class BrokerConsumer {
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
    private readonly settings: ConsumerSettings,
    private readonly sink: DeliverySink,
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
    const { config, logger, queues, pool, events } = this.settings;
    let channel: SubscriberChannel | undefined;
    try {
      channel = await pool.get(this.server).openConsumerChannel(config.prefetchCount);
      if (this.closing) {
        await channel.close();
        return;
      }
      const opened = channel;
      this.channel = opened;
      opened.onClose((error) => this.onChannelClosed(opened, error));
      await this.setUpQueues(opened, queues);
      for (const queue of queues) {
        if (!this.settings.paused.has(queue.name)) await this.consume(opened, queue);
      }
      if (this.channel !== opened) throw new ClosedError('channel closed while setting up consumers');
      this.state = 'consuming';
      this.failures = 0;
      logger.info({ server: this.server, queues: queues.map((q) => q.name) }, 'consuming');
      events.emit('connected', { server: this.server });
    } catch (error) {
      this.failures++;
      this.lastError = error;
      logger.warn(
        { server: this.server, err: error, failures: this.failures },
        'subscriber could not connect',
      );
      events.emit('error', { error, phase: 'connect', server: this.server, queue: undefined });
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
      const queue = this.settings.queues.find((q) => q.name === name);
      if (queue === undefined || this.consumers.has(name)) continue;
      if (this.lost.has(name)) {
        // Cancelled by the broker (queue deleted?) before or while paused: set it up again first.
        await this.recover(queue);
        continue;
      }
      try {
        await this.consume(channel, queue);
      } catch (error) {
        this.settings.logger.warn(
          { server: this.server, queue: name, err: error },
          'could not resume consuming',
        );
        this.settings.events.emit('error', { error, phase: 'consume', server: this.server, queue: name });
      }
    }
  }

  /** Cancels all consumers and stops reconnecting; the channel stays open for acks. */
  async stopConsuming(): Promise<void> {
    this.closing = true;
    if (this.reconnectTimer !== undefined) {
      this.settings.clock.clearTimeout(this.reconnectTimer);
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
      this.settings.events.emit('error', { error, phase: 'close', server: this.server, queue: undefined });
    }
  }

  /**
   * Declares `queues` on `channel`: the exchanges they are bound to first, then each queue (queue, dead
   * letter queue, policies, bindings), sharing one memo (the policy queue is declared once per channel). A
   * queue whose policies could not be applied still works: that is reported, not thrown.
   */
  private async setUpQueues(channel: SubscriberChannel, queues: readonly QueueDefinition[]): Promise<void> {
    const { topology, setupQueue, events } = this.settings;
    for (const exchange of topology.exchangesOfQueues(queues.map((q) => q.name))) {
      await channel.declareExchange(exchange);
    }
    const memo = new Memo();
    const once = <T>(key: string, work: () => Promise<T>): Promise<T> => memo.run(key, work);
    for (const queue of queues) {
      const result = await setupQueue(channel, this.server, queue, once);
      if (result?.policyError !== undefined) {
        events.emit('error', {
          error: result.policyError,
          phase: 'policy',
          server: this.server,
          queue: queue.name,
        });
      }
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
      (delivery) => this.sink.onDelivery(this.server, channel, queue, delivery),
      onCancel,
    );
    consumer.tag = tag;
    // A pause (or stop) that came in while basic.consume was on its way wins.
    if (this.settings.paused.has(queue.name) || this.closing || this.channel !== channel) {
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
    const error = new ConsumerCancelledError(this.server, queue.name, queue.amqpName);
    this.settings.logger.warn(
      { server: this.server, queue: queue.name },
      `${error.message}; setting the queue up again and consuming it again`,
    );
    this.settings.events.emit('error', { error, phase: 'consume', server: this.server, queue: queue.name });
    this.scheduleRecovery(queue);
  }

  private scheduleRecovery(queue: QueueDefinition): void {
    if (this.closing || this.recoveryTimers.has(queue.name)) return;
    const timer = this.settings.clock.setTimeout(
      () => {
        this.recoveryTimers.delete(queue.name);
        void this.recover(queue);
      },
      this.nextDelay(this.recoveryFailures.get(queue.name) ?? 0),
    );
    this.recoveryTimers.set(queue.name, timer);
  }

  private clearRecoveries(): void {
    for (const timer of this.recoveryTimers.values()) this.settings.clock.clearTimeout(timer);
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
      this.settings.clock.clearTimeout(timer);
      this.recoveryTimers.delete(queue.name);
    }
    const channel = this.channel;
    if (channel === undefined || this.closing || !this.lost.has(queue.name)) return;
    if (this.settings.paused.has(queue.name)) return;
    const { logger, events } = this.settings;
    try {
      await this.setUpQueues(channel, [queue]);
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
      events.emit('error', { error, phase: 'consume', server: this.server, queue: queue.name });
      this.scheduleRecovery(queue);
    }
  }

  private async cancel(channel: SubscriberChannel, queue: string, tag: string): Promise<void> {
    try {
      await channel.cancel(tag);
    } catch (error) {
      this.settings.logger.warn({ server: this.server, queue, err: error }, 'basic.cancel failed');
      this.settings.events.emit('error', { error, phase: 'cancel', server: this.server, queue });
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
    this.settings.logger.warn(
      { server: this.server, err: error },
      'subscriber lost its broker channel; reconnecting',
    );
    this.settings.events.emit('disconnected', { server: this.server, error });
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closing || this.reconnectTimer !== undefined) return;
    this.reconnectTimer = this.settings.clock.setTimeout(
      () => {
        this.reconnectTimer = undefined;
        void this.connect();
      },
      this.nextDelay(Math.max(0, this.failures - 1)),
    );
  }

  /** Milliseconds before retry `attempt` (0-based) of a reconnect or a recovery: capped, jittered backoff. */
  private nextDelay(attempt: number): number {
    const { config, random } = this.settings;
    const seconds = backoff({
      base: config.subscriberReconnectDelay,
      max: config.subscriberReconnectMaxDelay,
      attempt,
      random,
      jitter: 'equal',
    });
    return seconds * 1000;
  }
}
