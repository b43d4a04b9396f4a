/**
 * How a delivery ends on the broker: acked, handed back (requeued or dead-lettered, maybe after a hold), or
 * answered (RPC reply). The state machine sees only `DeliverySettler`; the subscriber's deliveries settle on
 * their channel through `ChannelSettler`, and their hand-backs go through `Requeues`.
 */
import { silentLogger, type BeetleConfig, type Logger, type QueueDefinition } from '@beetle/core';
import type { Clock, TimerHandle } from '@beetle/core/kit';
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
      this.held.delete(handle);
      if (holds !== undefined) this.releaseDeadLetterHold(channel, holds, queue.name);
      channel.reject(delivery, requeue);
    };
    const handle = this.clock.setTimeout(fire, holdMs);
    this.held.set(handle, fire);
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
