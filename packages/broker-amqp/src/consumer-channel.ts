import type { Channel, ConfirmChannel, ConsumeMessage, Message } from 'amqplib';
import { BrokerError, type ExchangeDefinition, type Logger, type QueueDefinition } from '@beetle/core';
import { errorMessage, withTimeout } from '@beetle/core/kit';
import { AckBatch } from './ack-batch.js';
import { AmqpDeclarer } from './declarer.js';
import { roundTrip, waitWritable, WriteBuffer, type Link } from './link.js';
import type { ConsumerChannel, Delivery, TopologyDeclarer } from './types.js';

/**
 * A channel on the consuming connection. It also declares (a subscriber declares its queues on its own
 * channel, so a declaration failing with a channel error takes down only that channel) through a declarer
 * of its own, and publishes RPC replies without confirms.
 */
export class AmqpConsumerChannel implements ConsumerChannel, TopologyDeclarer {
  private closed = false;
  private closeError: Error | undefined;
  private readonly closeListeners = new Set<(error: Error | undefined) => void>();
  private readonly buffer = new WriteBuffer();
  private readonly declarer: AmqpDeclarer;
  /** The confirm channel of `republish`, opened on the same connection on first use. */
  private confirmChannel: Promise<ConfirmChannel> | undefined;
  /** Acks go out once per loop turn, runs of them as one `basic.ack(multiple)`. */
  private readonly acks: AckBatch;

  constructor(
    readonly server: string,
    private readonly link: Link,
    private readonly channel: Channel,
    private readonly logger: Logger,
  ) {
    this.acks = new AckBatch((tag, multiple) => this.sendAck(tag, multiple));
    const flushAcks = (): void => this.acks.flush();
    link.heldWrites.add(flushAcks);
    const target = Promise.resolve({ channel, link });
    this.declarer = new AmqpDeclarer(() => target);
    channel.on('error', (error: Error) => {
      this.closeError = error;
      logger.warn({ server, err: error }, `consumer channel error: ${error.message}`);
    });
    channel.on('close', () => {
      this.closed = true;
      link.heldWrites.delete(flushAcks);
      if (this.acks.pending > 0) {
        logger.warn(
          { server, acks: this.acks.pending },
          'consumer channel closed before its last acks were written; the broker redelivers those messages',
        );
      }
      this.acks.clear();
      this.closeConfirmChannel();
      this.buffer.wake();
      const error =
        this.closeError ??
        (link.dead ? new BrokerError('broker-closed', server, 'consumer connection lost') : undefined);
      for (const listener of this.closeListeners) {
        try {
          listener(error);
        } catch (listenerError) {
          logger.error({ server, err: listenerError }, 'onClose listener threw');
        }
      }
      this.closeListeners.clear();
    });
    channel.on('drain', () => this.buffer.drained());
  }

  declareExchange(exchange: ExchangeDefinition): Promise<void> {
    return this.declarer.declareExchange(exchange);
  }

  declareQueue(queue: QueueDefinition): Promise<void> {
    return this.declarer.declareQueue(queue);
  }

  bindQueue(queue: string, exchange: string, key: string): Promise<void> {
    return this.declarer.bindQueue(queue, exchange, key);
  }

  queueLength(queue: string): Promise<number> {
    return this.declarer.queueLength(queue);
  }

  purgeQueue(queue: string): Promise<void> {
    return this.declarer.purgeQueue(queue);
  }

  async prefetch(count: number): Promise<void> {
    await roundTrip(this.link, `basic.qos ${count}`, () => this.channel.prefetch(count, false));
  }

  async consume(
    queue: string,
    onDelivery: (delivery: Delivery) => void,
    onCancel?: () => void,
  ): Promise<string> {
    const ok = await roundTrip(this.link, `basic.consume ${queue}`, () =>
      this.channel.consume(
        queue,
        (message: ConsumeMessage | null) => {
          // amqplib passes null only for a broker-initiated basic.cancel (e.g. the queue was deleted).
          if (message === null) {
            this.logger.warn({ server: this.server, queue }, `consumer of ${queue} cancelled by the broker`);
            if (onCancel !== undefined) {
              try {
                onCancel();
              } catch (error) {
                this.logger.error({ server: this.server, queue, err: error }, 'onCancel listener threw');
              }
            }
            return;
          }
          this.acks.received(message.fields.deliveryTag);
          onDelivery(message);
        },
        { noAck: false },
      ),
    );
    return ok.consumerTag;
  }

  async cancel(consumerTag: string): Promise<void> {
    if (this.closed) return;
    await roundTrip(this.link, `basic.cancel ${consumerTag}`, () => this.channel.cancel(consumerTag));
  }

  ack(delivery: Delivery): boolean {
    return this.settle(delivery, 'ack', false);
  }

  /**
   * Requeues with `basic.nack(requeue, multiple=false)`, dead-letters with `basic.reject(false)`. For classic
   * queues the two are the same; RabbitMQ 4.3 counts a `reject` of a quorum queue delivery as a failed
   * delivery (towards its `delivery-limit`) and a `nack` not (3.10 to 4.2 count both).
   */
  reject(delivery: Delivery, requeue: boolean): boolean {
    return this.settle(delivery, 'reject', requeue);
  }

  /** basic.ack, basic.nack (requeue) or basic.reject; false (logged) when the channel is gone or amqplib refuses. */
  private settle(delivery: Delivery, op: 'ack' | 'reject', requeue: boolean): boolean {
    if (this.closed) {
      this.logger.warn(
        { server: this.server, deliveryTag: delivery.fields.deliveryTag },
        `${op} on a closed channel`,
      );
      return false;
    }
    const tag = delivery.fields.deliveryTag;
    if (op === 'ack') {
      this.acks.ack(tag);
      return true;
    }
    this.acks.settledOtherwise(tag);
    try {
      if (requeue) this.channel.nack(delivery as unknown as Message, false, true);
      else this.channel.reject(delivery as unknown as Message, false);
      return true;
    } catch (error) {
      this.logger.warn({ server: this.server, err: error }, `${op} failed: ${errorMessage(error)}`);
      return false;
    }
  }

  /** Writes one ack frame (from the batch); a refusal is logged, the broker then redelivers. */
  private sendAck(tag: number, multiple: boolean): void {
    if (this.closed) {
      this.logger.warn({ server: this.server, deliveryTag: tag, multiple }, 'ack on a closed channel');
      return;
    }
    try {
      this.channel.ack({ fields: { deliveryTag: tag } } as unknown as Message, multiple);
    } catch (error) {
      this.logger.warn({ server: this.server, err: error }, `ack failed: ${errorMessage(error)}`);
    }
  }

  async publish(
    exchange: string,
    routingKey: string,
    body: Buffer,
    properties: Record<string, unknown>,
  ): Promise<void> {
    if (this.closed) throw new BrokerError('broker-closed', this.server, 'consumer channel closed');
    if (this.link.blocked || this.buffer.full) {
      await waitWritable(
        this.link,
        this.buffer,
        Date.now() + this.link.operationTimeout * 1000,
        () => this.closed,
        (blocked) =>
          new BrokerError(blocked ? 'broker-blocked' : 'broker-timeout', this.server, 'channel not writable'),
      );
    }
    try {
      if (!this.channel.publish(exchange, routingKey, body, properties)) this.buffer.full = true;
    } catch (error) {
      throw new BrokerError('broker-closed', this.server, `publish failed: ${errorMessage(error)}`, {
        cause: error,
      });
    }
  }

  async republish(queue: string, delivery: Delivery): Promise<void> {
    if (this.closed) throw new BrokerError('broker-closed', this.server, 'consumer channel closed');
    this.confirmChannel ??= this.openConfirmChannel();
    let confirms: ConfirmChannel;
    try {
      confirms = await this.confirmChannel;
    } catch (error) {
      this.confirmChannel = undefined;
      throw error;
    }
    const { headers, ...rest } = delivery.properties as Record<string, unknown> & {
      headers?: Record<string, unknown>;
    };
    const properties: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(rest)) if (value !== undefined) properties[key] = value;
    // The queue counts deliveries anew; a stale count in the headers would look like the count.
    const fresh = { ...headers };
    delete fresh['x-delivery-count'];
    properties.headers = fresh;
    const confirmed = new Promise<void>((resolve, reject) => {
      try {
        confirms.publish('', queue, delivery.content, properties, (error: unknown) => {
          if (error === null || error === undefined) resolve();
          else reject(new BrokerError('broker-closed', this.server, `republish to ${queue} not confirmed`));
        });
      } catch (error) {
        reject(
          new BrokerError('broker-closed', this.server, `republish failed: ${errorMessage(error)}`, {
            cause: error,
          }),
        );
      }
    });
    await withTimeout(
      confirmed,
      this.link.operationTimeout * 1000,
      () => new BrokerError('broker-timeout', this.server, `no confirm for the republish to ${queue}`),
    );
  }

  private async openConfirmChannel(): Promise<ConfirmChannel> {
    const link = this.link;
    const channel = await roundTrip(link, 'confirm channel', () => link.model.createConfirmChannel());
    link.channels.add(channel);
    channel.on('error', (error: Error) =>
      this.logger.warn({ server: this.server, err: error }, `republish channel error: ${error.message}`),
    );
    channel.on('close', () => {
      link.channels.delete(channel);
      this.confirmChannel = undefined;
    });
    return channel;
  }

  private closeConfirmChannel(): void {
    const pending = this.confirmChannel;
    this.confirmChannel = undefined;
    pending
      ?.then((channel) => channel.close())
      .catch((error: unknown) =>
        this.logger.debug(
          { server: this.server, err: error },
          `closing republish channel: ${errorMessage(error)}`,
        ),
      );
  }

  onClose(listener: (error: Error | undefined) => void): void {
    if (this.closed) {
      const error = this.closeError;
      queueMicrotask(() => listener(error));
      return;
    }
    this.closeListeners.add(listener);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // channel.close queues behind these frames, so the broker has the acks before the channel goes.
    this.acks.flush();
    try {
      // Only logged below, never passed on.
      await withTimeout(
        this.channel.close(),
        this.link.operationTimeout * 1000,
        () => new BrokerError('broker-timeout', this.server, 'channel.close timed out'),
      );
    } catch (error) {
      this.logger.debug(
        { server: this.server, err: error },
        `closing consumer channel: ${errorMessage(error)}`,
      );
    }
  }
}
