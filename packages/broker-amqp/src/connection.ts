import type { Socket } from 'node:net';
import amqp from 'amqplib';
import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage, Message, Options } from 'amqplib';
import {
  BrokerError,
  ClosedError,
  InvalidPublishError,
  Topology,
  type ExchangeDefinition,
  type Logger,
  type QueueDefinition,
} from '@beetle/core';
import { coalesceWrites, errorMessage, withTimeout } from '@beetle/core/kit';
import type {
  BrokerOptions,
  ConsumerChannel,
  Delivery,
  PublishChannel,
  PublishOptions,
  TopologyDeclarer,
} from './types.js';
import { tlsFailure, tlsSocketOptions } from './tls.js';

/** Which of the two connections to a broker. */
export type ConnectionRole = 'publisher' | 'consumer';

/** Passed to `onLost` listeners. */
export interface ConnectionLostEvent {
  readonly server: string;
  readonly role: ConnectionRole;
  /** Why it died; `undefined` for an orderly close initiated by the broker without an error. */
  readonly error: Error | undefined;
}

/** The last error a connection or channel reported in the background (not as the result of a call). */
export interface BackgroundError {
  readonly error: Error;
  /** `Date.now()` when it was recorded. */
  readonly at: number;
  readonly role: ConnectionRole;
}

interface Link {
  readonly role: ConnectionRole;
  readonly model: ChannelModel;
  blocked: boolean;
  dead: boolean;
  readonly unblockWaiters: Set<() => void>;
  /** Channels open on this connection, closed one by one before the connection itself (see `close`). */
  readonly channels: Set<Channel>;
}

const noop = (): void => undefined;

function socketOf(model: ChannelModel): Socket | undefined {
  return (model.connection as unknown as { stream?: Socket }).stream;
}

/** Reasons amqplib reports for refused logins. */
const isAuthFailure = (message: string): boolean =>
  /ACCESS[-_]REFUSED|403|authentication|login/i.test(message);

/**
 * The connections of one process to one broker (`host:port`): a PUBLISHING connection carrying the shared
 * publish channel and a dedicated declaration channel, and a separate CONSUMING connection for consumer
 * channels, so a blocked publishing connection never stalls consumers and vice versa. Connections are opened
 * lazily on first use and reopened lazily after a loss; every broker round trip is bounded by
 * `operationTimeout`, after which the connection is treated as dead and destroyed.
 */
export class BrokerConnection {
  readonly server: string;
  private readonly options: BrokerOptions;
  private readonly logger: Logger;
  private readonly links = new Map<ConnectionRole, Promise<Link>>();
  private readonly current = new Map<ConnectionRole, Link>();
  private publishChannelPromise: Promise<AmqpPublishChannel> | undefined;
  private declarationChannelPromise: Promise<Channel> | undefined;
  private declarerInstance: AmqpDeclarer | undefined;
  private readonly lostListeners = new Set<(event: ConnectionLostEvent) => void>();
  private readonly memos = new Map<string, Promise<unknown>>();
  private readonly done = new Set<string>();
  private readyChannel: AmqpPublishChannel | undefined;
  private readonly consumerChannels = new Set<AmqpConsumerChannel>();
  private closed = false;
  private background: BackgroundError | undefined;

  constructor(options: BrokerOptions) {
    this.options = options;
    this.server = options.address.server;
    this.logger = options.logger;
  }

  /** The last background error (connection/channel error event, missed heartbeats), if any. */
  get lastBackgroundError(): BackgroundError | undefined {
    return this.background;
  }

  /** Whether the publishing connection is currently open. */
  get publisherConnected(): boolean {
    const link = this.current.get('publisher');
    return link !== undefined && !link.dead;
  }

  private get timeoutMs(): number {
    return this.options.operationTimeout * 1000;
  }

  /** Registers a listener fired whenever one of the two connections dies; returns an unsubscribe function. */
  onLost(listener: (event: ConnectionLostEvent) => void): () => void {
    this.lostListeners.add(listener);
    return () => this.lostListeners.delete(listener);
  }

  /**
   * Runs `fn` once per PUBLISHING connection: concurrent callers share the running promise, a failure is not
   * remembered, and everything is forgotten when the publishing connection is lost (the broker may have lost
   * non-durable state, or it may be a different node now). Used for per-broker declaration tracking.
   */
  once<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const existing = this.memos.get(key) as Promise<T> | undefined;
    if (existing) return existing;
    const promise = fn();
    this.memos.set(key, promise);
    promise.then(
      () => {
        if (this.memos.get(key) === promise) this.done.add(key);
      },
      () => {
        if (this.memos.get(key) === promise) this.memos.delete(key);
      },
    );
    return promise;
  }

  /** Forgets everything `once` remembered (Ruby `stop!` clears its declaration caches after a failure). */
  resetDeclarations(): void {
    this.memos.clear();
    this.done.clear();
  }

  /** Whether `once(key, …)` has completed successfully on the current publishing connection. */
  isDone(key: string): boolean {
    return this.done.has(key);
  }

  /**
   * The shared publish channel if it is open right now (no connect, no await): a fast path for hot loops;
   * `undefined` means "call `publishChannel()`".
   */
  readyPublishChannel(): PublishChannel | undefined {
    const channel = this.readyChannel;
    return channel?.open ? channel : undefined;
  }

  /** The shared publish channel (confirm mode unless `options.confirms === false`), reopened after a loss. */
  publishChannel(): Promise<PublishChannel> {
    return this.ensurePublishChannel();
  }

  private ensurePublishChannel(): Promise<AmqpPublishChannel> {
    if (this.closed) return Promise.reject(new ClosedError(`broker connection ${this.server} is closed`));
    const existing = this.publishChannelPromise;
    if (existing) return existing;
    const promise = this.openPublishChannel();
    this.publishChannelPromise = promise;
    promise.catch(() => {
      if (this.publishChannelPromise === promise) this.publishChannelPromise = undefined;
    });
    return promise;
  }

  private async openPublishChannel(): Promise<AmqpPublishChannel> {
    const link = await this.link('publisher');
    const confirms = this.options.confirms ?? true;
    const channel = await this.openChannel(link, confirms);
    const publishChannel = new AmqpPublishChannel(this.server, link, channel, confirms, this.timeoutMs, {
      logger: this.logger,
      onTimeout: (error) => this.kill(link, error),
      onClosed: (error) => {
        if (error) this.recordBackground(error, 'publisher');
        // Reopened on the next use; a newer channel (if any) is left alone.
        if (this.readyChannel === publishChannel) {
          this.readyChannel = undefined;
          this.publishChannelPromise = undefined;
        }
      },
    });
    this.readyChannel = publishChannel;
    return publishChannel;
  }

  /**
   * A declarer on a dedicated channel of the publishing connection: a declaration failing with a channel
   * error (e.g. PRECONDITION_FAILED) closes only that channel, which is reopened on the next call.
   */
  declarer(): Promise<TopologyDeclarer> {
    if (this.closed) return Promise.reject(new ClosedError(`broker connection ${this.server} is closed`));
    this.declarerInstance ??= new AmqpDeclarer(
      this.server,
      this.timeoutMs,
      async () => {
        const link = await this.link('publisher');
        return { channel: await this.declarationChannel(link), link };
      },
      (link, error) => this.kill(link, error),
    );
    return Promise.resolve(this.declarerInstance);
  }

  private declarationChannel(link: Link): Promise<Channel> {
    const existing = this.declarationChannelPromise;
    if (existing) return existing;
    const promise = this.openChannel(link, false).then((channel) => {
      channel.on('error', (error: Error) => {
        this.logger.warn({ server: this.server, err: error }, `declaration channel error: ${error.message}`);
      });
      channel.on('close', () => {
        if (this.declarationChannelPromise === promise) this.declarationChannelPromise = undefined;
      });
      return channel;
    });
    this.declarationChannelPromise = promise;
    promise.catch(() => {
      if (this.declarationChannelPromise === promise) this.declarationChannelPromise = undefined;
    });
    return promise;
  }

  /** A new channel on the consuming connection with `basic.qos(prefetch)`. */
  async openConsumerChannel(prefetch: number): Promise<ConsumerChannel & TopologyDeclarer> {
    if (this.closed) throw new ClosedError(`broker connection ${this.server} is closed`);
    const link = await this.link('consumer');
    const channel = await this.openChannel(link, false);
    const consumer = new AmqpConsumerChannel(
      this.server,
      link,
      channel,
      this.timeoutMs,
      this.logger,
      (error) => this.kill(link, error),
    );
    this.consumerChannels.add(consumer);
    consumer.onClose(() => this.consumerChannels.delete(consumer));
    await consumer.prefetch(prefetch);
    return consumer;
  }

  /**
   * Closes every channel, then both connections; a broker that does not answer within `operationTimeout` gets
   * its sockets destroyed. Idempotent.
   */
  async close(): Promise<void> {
    this.closed = true;
    const links = [...this.links.values()];
    this.links.clear();
    await Promise.all(
      links.map(async (pending) => {
        let link: Link;
        try {
          link = await withTimeout(pending, this.timeoutMs, () => new Error('connect still pending'));
        } catch {
          return; // a failed or hanging connect: the attempt destroys itself (see connect)
        }
        if (link.dead) return;
        const answered = await this.closeChannels(link);
        link.dead = true;
        try {
          // A broker that let a channel.close time out gets no second wait.
          if (!answered) throw new Error('the broker did not answer channel.close');
          await withTimeout(link.model.close(), this.timeoutMs, () => new Error('close timed out'));
        } catch (error) {
          this.logger.debug(
            { server: this.server, err: error },
            `closing ${link.role} connection: ${errorMessage(error)}`,
          );
          socketOf(link.model)?.destroy();
        }
      }),
    );
  }

  // ---------------------------------------------------------------------------------------------- internals

  /**
   * amqplib gives every channel its own write buffer and interleaves them on the socket, so a
   * `connection.close` frame can overtake publishes or acks still buffered on a channel, and the broker drops
   * whatever arrives after it: messages published without confirms, or acks, would be lost. A `channel.close`
   * queues behind that channel's frames and its close-ok comes back only after the broker processed them.
   */
  private async closeChannels(link: Link): Promise<boolean> {
    let answered = true;
    await Promise.all(
      [...link.channels].map(async (channel) => {
        try {
          await withTimeout(channel.close(), this.timeoutMs, () => {
            answered = false;
            return new Error('channel.close timed out');
          });
        } catch (error) {
          this.logger.debug(
            { server: this.server, err: error },
            `closing a ${link.role} channel: ${errorMessage(error)}`,
          );
        }
      }),
    );
    return answered;
  }

  private async openChannel(link: Link, confirms: boolean): Promise<Channel> {
    const channel = await this.roundTrip(
      link,
      'channel.open',
      confirms ? link.model.createConfirmChannel() : link.model.createChannel(),
    );
    link.channels.add(channel);
    channel.once('close', () => link.channels.delete(channel));
    return channel;
  }

  private link(role: ConnectionRole): Promise<Link> {
    if (this.closed) return Promise.reject(new ClosedError(`broker connection ${this.server} is closed`));
    const existing = this.links.get(role);
    if (existing) return existing;
    const promise = this.connect(role);
    this.links.set(role, promise);
    promise.catch(() => {
      if (this.links.get(role) === promise) this.links.delete(role);
    });
    return promise;
  }

  private async connect(role: ConnectionRole): Promise<Link> {
    const { address, frameMax, channelMax, connectionName } = this.options;
    const consumer = role === 'consumer';
    const heartbeat = (consumer ? this.options.consumerHeartbeat : undefined) ?? this.options.heartbeat;
    const connectTimeout =
      (consumer ? this.options.consumerConnectTimeout : undefined) ?? this.options.connectTimeout;
    const timeoutMs = connectTimeout * 1000;
    const name = `${connectionName ?? 'beetle'}-${process.pid}-${role}`;
    // `channelMax` is honoured by amqplib but missing from its type definitions.
    const params: Options.Connect & { channelMax: number } = {
      protocol: address.tls ? 'amqps' : 'amqp',
      hostname: address.host,
      port: address.port,
      username: address.user,
      password: address.password,
      vhost: address.vhost,
      frameMax,
      channelMax,
      // No preference accepts the broker's value (RabbitMQ: 60 s); amqplib 2 takes 0 as off, as Ruby does.
      heartbeat: heartbeat === 'server' ? undefined : heartbeat,
      locale: 'en_US',
    };
    // CA, client certificate and key from server_connection_options; files are read at every connect.
    const tls = address.tls
      ? await tlsSocketOptions(address).catch((error: unknown) => {
          const message = `cannot connect (${role} connection): ${errorMessage(error)}`;
          this.logger.warn({ server: this.server, role, err: error }, message);
          throw new BrokerError('broker-connect', this.server, message, { cause: error });
        })
      : {};
    const attempt = amqp.connect(params, {
      timeout: timeoutMs,
      noDelay: true,
      ...tls,
      clientProperties: { connection_name: name },
    });
    let model: ChannelModel;
    try {
      // The socket timeout does not cover a handshake that trickles; this timer bounds the whole attempt.
      model = await withTimeout(
        attempt,
        timeoutMs + 200,
        () => new Error(`connect timed out after ${connectTimeout}s`),
      );
    } catch (error) {
      // A late success of an abandoned attempt is closed at once.
      attempt.then((late) => socketOf(late)?.destroy(), noop);
      const message = errorMessage(error);
      const what =
        tlsFailure(error, address.tlsOptions?.ca !== undefined) ??
        (isAuthFailure(message)
          ? `authentication failed for user ${JSON.stringify(address.user)} on vhost ${JSON.stringify(address.vhost)}`
          : 'cannot connect');
      this.logger.warn({ server: this.server, role, err: error }, `${what}: ${message}`);
      throw new BrokerError('broker-connect', this.server, `${what} (${role} connection): ${message}`, {
        cause: error,
      });
    }
    if (this.closed) {
      socketOf(model)?.destroy();
      throw new ClosedError(`broker connection ${this.server} is closed`);
    }
    const socket = socketOf(model);
    if (socket !== undefined) coalesceWrites(socket);
    const link: Link = {
      role,
      model,
      blocked: false,
      dead: false,
      unblockWaiters: new Set(),
      channels: new Set(),
    };
    this.current.set(role, link);
    model.on('error', (error: Error) => {
      this.recordBackground(error, role);
      this.logger.warn(
        { server: this.server, role, err: error },
        `${role} connection error: ${error.message}`,
      );
    });
    model.on('close', (error?: Error) => this.lost(link, error));
    model.on('blocked', (reason: string) => {
      link.blocked = true;
      this.logger.warn(
        { server: this.server, role, reason },
        `${role} connection blocked by the broker: ${reason}`,
      );
    });
    model.on('unblocked', () => {
      link.blocked = false;
      this.logger.info({ server: this.server, role }, `${role} connection unblocked`);
      for (const wake of link.unblockWaiters) wake();
      link.unblockWaiters.clear();
    });
    this.logger.debug({ server: this.server, role, connectionName: name }, `${role} connection open`);
    return link;
  }

  private recordBackground(error: Error, role: ConnectionRole): void {
    this.background = { error, at: Date.now(), role };
  }

  private lost(link: Link, error: Error | undefined): void {
    const wasDead = link.dead;
    link.dead = true;
    for (const wake of link.unblockWaiters) wake();
    link.unblockWaiters.clear();
    if (this.current.get(link.role) === link) {
      this.current.delete(link.role);
      // The current link is what the stored promise resolved to: forget it, the next use reconnects.
      this.links.delete(link.role);
      if (link.role === 'publisher') {
        this.publishChannelPromise = undefined;
        this.declarationChannelPromise = undefined;
        this.readyChannel = undefined;
        this.memos.clear();
        this.done.clear();
      }
    }
    if (wasDead && this.closed) return;
    if (error) this.recordBackground(error, link.role);
    if (!this.closed) {
      this.logger.warn(
        { server: this.server, role: link.role, err: error },
        `${link.role} connection lost${error ? `: ${error.message}` : ''}`,
      );
    }
    const event: ConnectionLostEvent = { server: this.server, role: link.role, error };
    for (const listener of this.lostListeners) {
      try {
        listener(event);
      } catch (listenerError) {
        this.logger.error({ server: this.server, err: listenerError }, 'onLost listener threw');
      }
    }
  }

  /** Treats a link as dead (e.g. after a timeout): destroys the socket and runs the loss handling now. */
  private kill(link: Link, error: Error): void {
    if (link.dead) return;
    socketOf(link.model)?.destroy();
    this.lost(link, error);
  }

  private roundTrip<T>(link: Link, what: string, promise: Promise<T>): Promise<T> {
    return withTimeout(promise, this.timeoutMs, () => {
      const error = new BrokerError(
        'broker-timeout',
        this.server,
        `${what} timed out after ${this.options.operationTimeout}s`,
      );
      this.kill(link, error);
      return error;
    }).catch((error: unknown) => {
      if (error instanceof BrokerError) throw error;
      throw new BrokerError('broker-closed', this.server, `${what} failed: ${errorMessage(error)}`, {
        cause: error,
      });
    });
  }
}

interface PendingConfirm {
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
  readonly deadline: number;
}

interface PublishChannelHooks {
  readonly logger: Logger;
  readonly onTimeout: (error: Error) => void;
  readonly onClosed: (error: Error | undefined) => void;
}

/** Waits for `drain` / `unblocked` without buffering without limit; every wait is bounded. */
class AmqpPublishChannel implements PublishChannel {
  private readonly pending = new Map<number, PendingConfirm>();
  private sequence = 0;
  private closedError: BrokerError | undefined;
  private closeReason: Error | undefined;
  private needsDrain = false;
  private readonly drainWaiters = new Set<() => void>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(
    readonly server: string,
    private readonly link: Link,
    private readonly channel: ConfirmChannel | Channel,
    private readonly confirms: boolean,
    private readonly timeoutMs: number,
    private readonly hooks: PublishChannelHooks,
  ) {
    channel.on('error', (error: Error) => {
      this.closeReason = error;
      hooks.logger.warn({ server, err: error }, `publish channel error: ${error.message}`);
    });
    channel.on('close', () => {
      this.failAll(this.channelClosedError());
      this.wakeDrain();
      hooks.onClosed(this.closeReason);
    });
    channel.on('drain', () => {
      this.needsDrain = false;
      this.wakeDrain();
    });
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
    if (this.link.blocked || this.needsDrain) {
      return this.waitWritable().then(() => this.send(exchange, routingKey, body, properties, options));
    }
    return this.send(exchange, routingKey, body, properties, options);
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

  /** Whether the channel is still usable. */
  get open(): boolean {
    return this.closedError === undefined;
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
      const id = ++this.sequence;
      this.pending.set(id, { resolve, reject, deadline: Date.now() + this.timeoutMs });
      const onConfirm = (error: unknown): void => {
        const entry = this.pending.get(id);
        if (!entry) return;
        this.pending.delete(id);
        if (error === null || error === undefined) entry.resolve();
        else if (this.closedError || this.closeReason || errorMessage(error) === 'channel closed')
          entry.reject(outcomeUnknown(this.channelClosedError()));
        else
          entry.reject(
            new BrokerError('broker-closed', this.server, `publish not confirmed: ${errorMessage(error)}`, {
              cause: error,
            }),
          );
      };
      const queued = this.confirmWindow()?.length;
      try {
        this.write(exchange, routingKey, body, props, onConfirm);
      } catch (error) {
        this.pending.delete(id);
        this.unqueueConfirm(onConfirm, queued);
        reject(this.writeError(error));
        return;
      }
      this.sweeper ??= this.startSweeper();
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
    if (!ok) this.needsDrain = true;
  }

  private async waitWritable(): Promise<void> {
    const deadline = Date.now() + this.timeoutMs;
    while ((this.link.blocked || this.needsDrain) && !this.closedError) {
      const remaining = deadline - Date.now();
      const blocked = this.link.blocked;
      if (remaining <= 0) {
        throw new BrokerError(
          blocked ? 'broker-blocked' : 'broker-timeout',
          this.server,
          blocked
            ? `publishing connection blocked by the broker (resource alarm) for ${this.timeoutMs / 1000}s`
            : `publish channel not writable (no drain) for ${this.timeoutMs / 1000}s`,
        );
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, remaining);
        timer.unref();
        function done(): void {
          clearTimeout(timer);
          resolve();
        }
        if (blocked) this.link.unblockWaiters.add(done);
        this.drainWaiters.add(done);
      });
    }
    if (this.closedError) throw this.closedError;
  }

  private wakeDrain(): void {
    for (const wake of this.drainWaiters) wake();
    this.drainWaiters.clear();
  }

  private failAll(error: Error): void {
    const entries = [...this.pending.values()];
    this.pending.clear();
    // Every pending entry was written already: whether the broker stored it is unknown.
    const unknown = error instanceof BrokerError ? outcomeUnknown(error) : error;
    for (const entry of entries) entry.reject(unknown);
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  /** One timer per channel (not per message) checks the oldest pending confirms against their deadlines. */
  private startSweeper(): NodeJS.Timeout {
    const period = Math.max(10, Math.min(250, this.timeoutMs / 4));
    const timer = setInterval(() => {
      if (this.pending.size === 0) {
        clearInterval(timer);
        this.sweeper = undefined;
        return;
      }
      const first = this.pending.values().next();
      if (!first.done && first.value.deadline <= Date.now()) {
        // Deadlines grow with insertion order: the oldest confirm is overdue, the broker is not answering.
        const error = new BrokerError(
          'broker-timeout',
          this.server,
          `no publisher confirm within ${this.timeoutMs / 1000}s; closing the connection`,
        );
        this.closedError = error;
        this.failAll(error);
        this.hooks.onTimeout(error);
      }
    }, period);
    timer.unref();
    return timer;
  }
}

/** The same failure, marked as having happened after the message was written (see `outcomeUnknown`). */
function outcomeUnknown(error: BrokerError): BrokerError {
  if (error.outcomeUnknown) return error;
  const message = error.message.startsWith(`${error.server}: `)
    ? error.message.slice(error.server.length + 2)
    : error.message;
  return new BrokerError(error.reason as 'broker-closed', error.server, message, {
    cause: error,
    outcomeUnknown: true,
  });
}

interface DeclarationTarget {
  readonly channel: Channel;
  readonly link: Link;
}

/** Declarations exactly as Ruby Beetle makes them (reference §5.5, §12). */
class AmqpDeclarer implements TopologyDeclarer {
  constructor(
    readonly server: string,
    protected readonly timeoutMs: number,
    private readonly target: () => Promise<DeclarationTarget>,
    private readonly onTimeout: (link: Link, error: Error) => void,
  ) {}

  protected async op<T>(what: string, run: (channel: Channel) => Promise<T>): Promise<T> {
    const { channel, link } = await this.target();
    try {
      return await withTimeout(run(channel), this.timeoutMs, () => {
        const error = new BrokerError(
          'broker-timeout',
          this.server,
          `${what} timed out after ${this.timeoutMs / 1000}s`,
        );
        this.onTimeout(link, error);
        return error;
      });
    } catch (error) {
      if (error instanceof BrokerError) throw error;
      throw new BrokerError('broker-closed', this.server, `${what} failed: ${errorMessage(error)}`, {
        cause: error,
      });
    }
  }

  async declareExchange(exchange: ExchangeDefinition): Promise<void> {
    const options: Options.AssertExchange = {
      durable: true,
      autoDelete: exchange.autoDelete,
      internal: exchange.internal,
    };
    if (exchange.arguments !== undefined) options.arguments = exchange.arguments;
    await this.op(`exchange.declare ${exchange.name}`, (ch) =>
      ch.assertExchange(exchange.name, 'topic', options),
    );
  }

  async declareQueue(queue: QueueDefinition): Promise<void> {
    const options: Options.AssertQueue = { durable: true, exclusive: false, autoDelete: queue.autoDelete };
    if (queue.arguments !== undefined) options.arguments = queue.arguments;
    await this.op(`queue.declare ${queue.amqpName}`, (ch) => ch.assertQueue(queue.amqpName, options));
    if (queue.deadLettering) {
      const dlq = Topology.deadLetterQueueName(queue.amqpName);
      await this.op(`queue.declare ${dlq}`, (ch) => ch.assertQueue(dlq, options));
    }
  }

  async bindQueue(queue: string, exchange: string, key: string): Promise<void> {
    await this.op(`queue.bind ${queue} ${exchange} ${key}`, (ch) => ch.bindQueue(queue, exchange, key));
  }

  async queueLength(queue: string): Promise<number> {
    const ok = await this.op(`queue.declare passive ${queue}`, (ch) => ch.checkQueue(queue));
    return ok.messageCount;
  }

  async purgeQueue(queue: string): Promise<void> {
    await this.op(`queue.purge ${queue}`, (ch) => ch.purgeQueue(queue));
  }
}

/** A channel on the consuming connection; also declares (subscribers declare on their own channel). */
class AmqpConsumerChannel extends AmqpDeclarer implements ConsumerChannel {
  private closed = false;
  private closeError: Error | undefined;
  private readonly closeListeners = new Set<(error: Error | undefined) => void>();
  private needsDrain = false;
  private readonly drainWaiters = new Set<() => void>();

  constructor(
    server: string,
    private readonly link: Link,
    private readonly channel: Channel,
    timeoutMs: number,
    private readonly logger: Logger,
    onTimeout: (error: Error) => void,
  ) {
    super(
      server,
      timeoutMs,
      () => Promise.resolve({ channel, link }),
      (_link, error) => onTimeout(error),
    );
    channel.on('error', (error: Error) => {
      this.closeError = error;
      logger.warn({ server, err: error }, `consumer channel error: ${error.message}`);
    });
    channel.on('close', () => {
      this.closed = true;
      for (const wake of this.drainWaiters) wake();
      this.drainWaiters.clear();
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
    channel.on('drain', () => {
      this.needsDrain = false;
      for (const wake of this.drainWaiters) wake();
      this.drainWaiters.clear();
    });
  }

  async prefetch(count: number): Promise<void> {
    await this.op(`basic.qos ${count}`, (ch) => ch.prefetch(count, false));
  }

  async consume(
    queue: string,
    onDelivery: (delivery: Delivery) => void,
    onCancel?: () => void,
  ): Promise<string> {
    const ok = await this.op(`basic.consume ${queue}`, (ch) =>
      ch.consume(
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
          onDelivery(message);
        },
        { noAck: false },
      ),
    );
    return ok.consumerTag;
  }

  async cancel(consumerTag: string): Promise<void> {
    if (this.closed) return;
    await this.op(`basic.cancel ${consumerTag}`, (ch) => ch.cancel(consumerTag));
  }

  ack(delivery: Delivery): boolean {
    if (this.closed) {
      this.logger.warn(
        { server: this.server, deliveryTag: delivery.fields.deliveryTag },
        'ack on a closed channel',
      );
      return false;
    }
    try {
      this.channel.ack(delivery as unknown as Message);
      return true;
    } catch (error) {
      this.logger.warn({ server: this.server, err: error }, `ack failed: ${errorMessage(error)}`);
      return false;
    }
  }

  reject(delivery: Delivery, requeue: boolean): boolean {
    if (this.closed) {
      this.logger.warn(
        { server: this.server, deliveryTag: delivery.fields.deliveryTag },
        'reject on a closed channel',
      );
      return false;
    }
    try {
      this.channel.reject(delivery as unknown as Message, requeue);
      return true;
    } catch (error) {
      this.logger.warn({ server: this.server, err: error }, `reject failed: ${errorMessage(error)}`);
      return false;
    }
  }

  async publish(
    exchange: string,
    routingKey: string,
    body: Buffer,
    properties: Record<string, unknown>,
  ): Promise<void> {
    if (this.closed) throw new BrokerError('broker-closed', this.server, 'consumer channel closed');
    const deadline = Date.now() + this.timeoutMs;
    while ((this.needsDrain || this.link.blocked) && !this.closed) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        throw new BrokerError(
          this.link.blocked ? 'broker-blocked' : 'broker-timeout',
          this.server,
          'channel not writable',
        );
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, Math.min(remaining, 100));
        timer.unref();
        function done(): void {
          clearTimeout(timer);
          resolve();
        }
        this.drainWaiters.add(done);
      });
    }
    try {
      if (!this.channel.publish(exchange, routingKey, body, properties)) this.needsDrain = true;
    } catch (error) {
      throw new BrokerError('broker-closed', this.server, `publish failed: ${errorMessage(error)}`, {
        cause: error,
      });
    }
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
    try {
      await withTimeout(this.channel.close(), this.timeoutMs, () => new Error('channel.close timed out'));
    } catch (error) {
      this.logger.debug(
        { server: this.server, err: error },
        `closing consumer channel: ${errorMessage(error)}`,
      );
    }
  }
}
