/**
 * How a delivery ends on the broker: acked, handed back (requeued or dead-lettered, maybe after a hold), or
 * answered (RPC reply). The state machine sees only `DeliverySettler`; the subscriber's deliveries settle on
 * their channel through `ChannelSettler`, and their hand-backs go through `Requeues`.
 */
import { silentLogger, type BeetleConfig, type Logger, type QueueDefinition } from '@beetle/core';
import { errorMessage, type Clock, type TimerHandle } from '@beetle/core/kit';
import type { Delivery, SubscriberChannel } from './broker-seam.js';
import { isNotReady, RequeuePacing, type RejectReason } from './requeue.js';

export type { RejectReason };

/**
 * How the state machine settles its delivery on the broker. Implemented by the consumer over a channel; in
 * unit tests by a recorder.
 */
export interface DeliverySettler {
  /** basic.ack; false when it cannot reach the broker (channel gone): the broker will redeliver. */
  ack(): boolean;
  /**
   * Hands the delivery back: reject to the dead letter queue, or requeue (after the requeue delay). `reason`
   * says why, so that the settler can pace copies of a message that is not ready yet (see `RejectReason`).
   */
  reject(reason?: RejectReason): void;
  /** Publishes an RPC reply (exchange `""`, routing key `replyTo`, not persistent, no Beetle headers). */
  reply(replyTo: string, body: Buffer, headers: { readonly status: 'OK' | 'FAILED' }): Promise<void>;
}

export type SettleState = 'pending' | 'acked' | 'rejected';

/**
 * Settles a delivery exactly once: a second ack, or a reject after an ack, is refused and logged (Ruby
 * rejects already-acked deliveries after store errors, which closes the channel).
 */
export class OnceSettler {
  private current: SettleState = 'pending';

  constructor(
    private readonly inner: DeliverySettler,
    private readonly logger: Logger = silentLogger,
    private readonly context: object = {},
  ) {}

  get state(): SettleState {
    return this.current;
  }

  /** Whether the ack was sent (false if already settled or the channel is gone). */
  ack(): boolean {
    if (this.current !== 'pending') {
      this.logger.error(
        { ...this.context, state: this.current },
        'refusing to ack a delivery already settled',
      );
      return false;
    }
    this.current = 'acked';
    return this.inner.ack();
  }

  reject(reason?: RejectReason): boolean {
    if (this.current !== 'pending') {
      this.logger.error(
        { ...this.context, state: this.current },
        'refusing to reject a delivery already settled',
      );
      return false;
    }
    this.current = 'rejected';
    this.inner.reject(reason);
    return true;
  }
}

/** Ruby's `handler_result.to_s`: buffers verbatim, `null`/`undefined` as empty, anything else `String()`. */
export function replyBody(result: unknown): Buffer {
  if (Buffer.isBuffer(result)) return result;
  if (result instanceof Uint8Array) return Buffer.from(result);
  if (result === undefined || result === null) return Buffer.alloc(0);
  return Buffer.from(typeof result === 'string' ? result : String(result as string), 'utf8');
}

/** Settles one delivery on its channel (a class rather than closures: one allocation per delivery). */
export class ChannelSettler implements DeliverySettler {
  constructor(
    private readonly requeues: Requeues,
    private readonly channel: SubscriberChannel,
    private readonly queue: QueueDefinition,
    private readonly delivery: Delivery,
  ) {}

  ack(): boolean {
    return this.channel.ack(this.delivery);
  }

  reject(reason?: RejectReason): void {
    this.requeues.reject(this.channel, this.queue, this.delivery, reason);
  }

  reply(replyTo: string, body: Buffer, headers: { readonly status: 'OK' | 'FAILED' }): Promise<void> {
    return this.channel.publish('', replyTo, body, { deliveryMode: 1, headers: { ...headers } });
  }
}

/**
 * Hands deliveries back to the broker: to the dead letter queue (dead lettering) or requeued, after a hold
 * (a timer for that delivery alone). Requeues wait `rejectRequeueDelay`. Copies of a message that is not
 * ready yet are paced (`RequeuePacing`): held longer with each sighting, or until the known retry time, up to
 * `rejectRequeueMaxDelay`. With dead lettering the first sighting goes back at once, as in Ruby (the dead
 * letter queue's TTL paces it), and later ones are held only while fewer than half of the consumer's
 * prefetch are held that way: a held delivery occupies a prefetch slot that the rest of the queue could use.
 */
export class Requeues {
  /** Deliveries held before they go back to the broker: their timers and what hands them back. */
  private readonly held = new Map<TimerHandle, () => void>();
  /** How long copies of messages that are not ready yet are held before they go back. */
  private readonly pacing: RequeuePacing;
  /** Dead-letter deliveries held per channel and queue (bounded to half the prefetch). */
  private readonly deadLetterHolds = new Map<SubscriberChannel, Map<string, number>>();
  private stopping = false;

  constructor(
    private readonly config: BeetleConfig,
    private readonly clock: Clock,
    private readonly logger: Logger = silentLogger,
  ) {
    this.pacing = new RequeuePacing(config.rejectRequeueDelay * 1000, config.rejectRequeueMaxDelay * 1000);
  }

  reject(
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
      this.handBack(channel, queue, delivery, requeue);
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
      this.held.delete(handle);
      if (holds !== undefined) this.releaseDeadLetterHold(channel, holds, queue.name);
      this.handBack(channel, queue, delivery, requeue);
    };
    const handle = this.clock.setTimeout(fire, holdMs);
    this.held.set(handle, fire);
  }

  /**
   * Requeue (nack) or dead-letter (reject) now; a requeue whose delivery count is near the queue's delivery
   * limit is refreshed instead (see `refreshAt`).
   */
  private handBack(
    channel: SubscriberChannel,
    queue: QueueDefinition,
    delivery: Delivery,
    requeue: boolean,
  ): void {
    const count = delivery.properties.headers?.['x-delivery-count'];
    const at = refreshAt(this.config, queue);
    if (!requeue || at === undefined || typeof count !== 'number' || count < at) {
      channel.reject(delivery, requeue);
      return;
    }
    // Never rejects (failures are logged and fall back to the requeue); bounded by the prefetch: each refresh
    // holds its unacked delivery.
    void this.refresh(channel, queue, delivery, count);
  }

  /**
   * A quorum queue counts every return of a delivery (3.10 to 4.2 count nack too) and drops or dead-letters
   * it past its delivery-limit, behind Beetle's attempt counting. So the message is published again to its
   * queue (same body, properties and message id; the queue counts the new one from 0), confirmed, and only
   * then the original is acked. At least once: should the ack not get through, both are delivered and the
   * dedup store answers the second (its keys, or the completed status kept after the last ack). The ack of
   * the original is not counted in the store: the message is not done.
   */
  private async refresh(
    channel: SubscriberChannel,
    queue: QueueDefinition,
    delivery: Delivery,
    count: number,
  ): Promise<void> {
    const context = { queue: queue.amqpName, server: channel.server, deliveryCount: count };
    try {
      await channel.republish(queue.amqpName, delivery);
    } catch (error) {
      this.logger.warn(
        { ...context, err: error },
        `could not republish a delivery near the delivery limit, requeued instead: ${errorMessage(error)}`,
      );
      channel.reject(delivery, true);
      return;
    }
    this.logger.debug(context, 'republished a delivery near the delivery limit');
    if (!channel.ack(delivery)) {
      this.logger.warn(context, 'republished, but the original could not be acked: both will be delivered');
    }
  }

  /** The subscriber is stopping: from now on deliveries go back at once (those held stay until `handBackAll`). */
  stopHolding(): void {
    this.stopping = true;
  }

  /** Hands back every held delivery now (before the channels close). */
  handBackAll(): void {
    for (const [handle, fire] of [...this.held]) {
      this.clock.clearTimeout(handle);
      fire();
    }
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
}

/**
 * The `x-delivery-count` from which a requeue is a refresh: `requeueRefreshDeliveryCount`, or the queue's
 * `x-delivery-limit` argument when lower (the delivery with count = limit is the last one the queue makes);
 * undefined when refreshes are off.
 */
export function refreshAt(config: BeetleConfig, queue: QueueDefinition): number | undefined {
  const configured = config.requeueRefreshDeliveryCount;
  if (configured <= 0) return undefined;
  const limit = queue.arguments?.['x-delivery-limit'];
  return typeof limit === 'number' && Number.isSafeInteger(limit) && limit > 0
    ? Math.min(configured, limit)
    : configured;
}
