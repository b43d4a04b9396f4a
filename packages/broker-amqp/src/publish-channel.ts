import type { Channel, ConfirmChannel, Message, Options } from 'amqplib';
import { BrokerError, InvalidPublishError, type Logger } from '@beetle/core';
import { DeadlineSweeper, errorMessage } from '@beetle/core/kit';
import { waitWritable, WriteBuffer, type Link } from './link.js';
import type { PublishChannel, PublishOptions } from './types.js';

interface PendingConfirm {
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

export interface PublishChannelHooks {
  readonly logger: Logger;
  /** The channel is gone (the error event before the close, if any): the next use opens a new one. */
  readonly onClosed: (error: Error | undefined) => void;
}

/**
 * The shared publish channel of a publishing connection. With confirms, each publish resolves when the broker
 * confirmed it; one sweeper (not a timer per message) fails the pending confirms and kills the connection
 * when the oldest one is overdue. Waits for `drain` / `unblocked` instead of buffering without limit; every
 * wait is bounded by the operation timeout.
 */
export class AmqpPublishChannel implements PublishChannel {
  /** Pending confirms in the order they were written; their deadlines grow with that order. */
  private readonly pending: DeadlineSweeper<PendingConfirm>;
  private readonly timeoutMs: number;
  private closedError: BrokerError | undefined;
  private closeReason: Error | undefined;
  /** What the pending confirms were failed with, once they were. */
  private failedWith: Error | undefined;
  private readonly buffer = new WriteBuffer();

  constructor(
    readonly server: string,
    private readonly link: Link,
    private readonly channel: ConfirmChannel | Channel,
    private readonly confirms: boolean,
    private readonly hooks: PublishChannelHooks,
  ) {
    this.timeoutMs = link.operationTimeout * 1000;
    this.pending = new DeadlineSweeper({
      periodMs: Math.max(10, Math.min(250, this.timeoutMs / 4)),
      ordered: true,
      onExpired: (entry) => this.confirmOverdue(entry),
    });
    channel.on('error', (error: Error) => {
      this.closeReason = error;
      hooks.logger.warn({ server, err: error }, `publish channel error: ${error.message}`);
    });
    channel.on('close', () => {
      this.failAll(this.channelClosedError());
      this.buffer.wake();
      hooks.onClosed(this.closeReason);
    });
    channel.on('drain', () => this.buffer.drained());
    channel.on('return', (message: Message) => {
      hooks.logger.warn(
        { server, exchange: message.fields.exchange, routingKey: message.fields.routingKey },
        `mandatory message ${String(message.properties.messageId)} returned as unroutable`,
      );
    });
  }

  publish(
    exchange: string,
    routingKey: string,
    body: Buffer,
    properties: Record<string, unknown>,
    options?: PublishOptions,
  ): Promise<void> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (this.link.blocked || this.buffer.full) {
      return this.waitWritable().then(() => this.send(exchange, routingKey, body, properties, options));
    }
    return this.send(exchange, routingKey, body, properties, options);
  }

  /** Whether the channel is still usable. */
  get open(): boolean {
    return this.closedError === undefined;
  }

  /**
   * The error pending confirms are rejected with once the channel is gone. amqplib calls the confirm callbacks
   * (with "channel closed") before our own 'close' listener runs, but after the 'error' event with the reason.
   */
  private channelClosedError(): BrokerError {
    if (!this.closedError) {
      const reason = this.closeReason;
      this.closedError = new BrokerError(
        'broker-closed',
        this.server,
        `publish channel closed${reason ? `: ${reason.message}` : ''}`,
        { cause: reason },
      );
    }
    return this.closedError;
  }

  private send(
    exchange: string,
    routingKey: string,
    body: Buffer,
    properties: Record<string, unknown>,
    options: PublishOptions | undefined,
  ): Promise<void> {
    if (this.closedError) return Promise.reject(this.closedError);
    const props = (options?.mandatory ? { ...properties, mandatory: true } : properties) as Options.Publish;
    if (!this.confirms) {
      try {
        this.write(exchange, routingKey, body, props, undefined);
      } catch (error) {
        return Promise.reject(this.writeError(error));
      }
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const entry: PendingConfirm = { resolve, reject };
      this.pending.add(entry, Date.now() + this.timeoutMs);
      const onConfirm = (error: unknown): void => {
        // Not pending any more: already failed (overdue, or the channel closed).
        if (!this.pending.delete(entry)) return;
        if (error === null || error === undefined) resolve();
        else if (this.closedError || this.closeReason || errorMessage(error) === 'channel closed')
          reject(outcomeUnknown(this.channelClosedError()));
        else
          reject(
            new BrokerError('broker-closed', this.server, `publish not confirmed: ${errorMessage(error)}`, {
              cause: error,
            }),
          );
      };
      const queued = this.confirmWindow()?.length;
      try {
        this.write(exchange, routingKey, body, props, onConfirm);
      } catch (error) {
        this.pending.delete(entry);
        this.unqueueConfirm(onConfirm, queued);
        reject(this.writeError(error));
      }
    });
  }

  /**
   * What a publish that threw in amqplib rejects with. amqplib encodes both frames before writing either, so
   * nothing was sent. Its encoders throw TypeError/RangeError for input they cannot encode (a bigint header,
   * a shortstr over 255 bytes, priority 256, a cyclic header…): a caller error, not a broker failure, so the
   * publisher neither fails over nor marks the broker dead. Anything else (amqplib's IllegalOperationError on
   * a closed connection) is the channel's.
   */
  private writeError(error: unknown): Error {
    if (this.closedError) return this.closedError;
    if (error instanceof TypeError || error instanceof RangeError) {
      return new InvalidPublishError('message', `amqplib cannot encode the message: ${errorMessage(error)}`, {
        cause: error,
      });
    }
    return new BrokerError('broker-closed', this.server, `publish failed: ${errorMessage(error)}`, {
      cause: error,
    });
  }

  /** amqplib's window of confirm callbacks (an internal array), if it has the shape we know. */
  private confirmWindow(): unknown[] | undefined {
    const window = (this.channel as unknown as { unconfirmed?: unknown }).unconfirmed;
    return Array.isArray(window) ? window : undefined;
  }

  /**
   * amqplib 0.10's ConfirmChannel queued the confirm callback BEFORE encoding; when encoding threw, the
   * callback stayed in its window and every later confirm resolved the publish before it (the last one never:
   * a stall until the confirm timeout, a killed connection, messages sent again). amqplib 2 queues it after
   * encoding. So after a throw the window is either as it was (nothing to undo) or has our callback last
   * (nothing runs between the push and the throw): take it out. Should it look different, the channel's
   * confirm sequence cannot be trusted: close it, failing its pending confirms as outcome unknown (they were
   * written), rather than confirm the wrong publishes.
   */
  private unqueueConfirm(callback: (error: unknown) => void, lengthBefore: number | undefined): void {
    const window = this.confirmWindow();
    if (window !== undefined && window.length === lengthBefore) return;
    if (window !== undefined && window.length === (lengthBefore ?? -2) + 1 && window.at(-1) === callback) {
      window.pop();
      return;
    }
    if (this.closedError) return; // closing anyway: amqplib fails every queued callback
    const error = new BrokerError(
      'broker-closed',
      this.server,
      'publish channel closed: its confirm sequence is unknown after a publish amqplib could not encode',
    );
    this.hooks.logger.error({ server: this.server }, error.message);
    this.closedError = error;
    this.failAll(error);
    this.channel.close().catch((closeError: unknown) => {
      this.hooks.logger.warn(
        { server: this.server, err: closeError },
        `closing the publish channel: ${errorMessage(closeError)}`,
      );
    });
  }

  private write(
    exchange: string,
    routingKey: string,
    body: Buffer,
    props: Options.Publish,
    callback: ((error: unknown) => void) | undefined,
  ): void {
    const ok = callback
      ? (this.channel as ConfirmChannel).publish(exchange, routingKey, body, props, callback)
      : this.channel.publish(exchange, routingKey, body, props);
    if (!ok) this.buffer.full = true;
  }

  private async waitWritable(): Promise<void> {
    const seconds = this.timeoutMs / 1000;
    await waitWritable(
      this.link,
      this.buffer,
      Date.now() + this.timeoutMs,
      () => this.closedError !== undefined,
      (blocked) =>
        blocked
          ? new BrokerError(
              'broker-blocked',
              this.server,
              `publishing connection blocked by the broker (resource alarm) for ${seconds}s`,
            )
          : new BrokerError(
              'broker-timeout',
              this.server,
              `publish channel not writable (no drain) for ${seconds}s`,
            ),
    );
    if (this.closedError) throw this.closedError;
  }

  /** Fails every pending confirm; returns the error they got. */
  private failAll(error: Error): Error {
    // Every pending entry was written already: whether the broker stored it is unknown.
    const unknown = error instanceof BrokerError ? outcomeUnknown(error) : error;
    this.failedWith = unknown;
    for (const entry of this.pending.takeAll()) entry.reject(unknown);
    return unknown;
  }

  /**
   * The oldest pending confirm is overdue (deadlines grow with the order of writing): the broker is not
   * answering. Every pending confirm fails and the connection is killed; confirms due in the same sweep get
   * the same error.
   */
  private confirmOverdue(entry: PendingConfirm): void {
    if (this.failedWith !== undefined) {
      entry.reject(this.failedWith);
      return;
    }
    const error = new BrokerError(
      'broker-timeout',
      this.server,
      `no publisher confirm within ${this.timeoutMs / 1000}s; closing the connection`,
    );
    this.closedError = error;
    entry.reject(this.failAll(error));
    this.link.kill(error);
  }
}

/**
 * The same failure, marked as having happened after the message was written (`BrokerError.outcomeUnknown`):
 * the broker may have stored it.
 */
export function outcomeUnknown(error: BrokerError): BrokerError {
  if (error.outcomeUnknown) return error;
  return new BrokerError(error.reason, error.server, error.detail, { cause: error, outcomeUnknown: true });
}
