import amqp from 'amqplib';
import type { Channel, ChannelModel, Options } from 'amqplib';
import { BeetleError, BrokerError, ClosedError, type Logger } from '@beetle/core';
import { coalesceWrites, errorMessage, Lazy, withTimeout } from '@beetle/core/kit';
import { AmqpConsumerChannel } from './consumer-channel.js';
import { AmqpDeclarer, type DeclarationTarget } from './declarer.js';
import { isAuthFailure, roundTrip, socketOf, type Link } from './link.js';
import { AmqpPublishChannel } from './publish-channel.js';
import { tlsFailure, tlsSocketOptions } from './tls.js';
import type {
  BackgroundError,
  BrokerOptions,
  ConnectionLostEvent,
  ConnectionRole,
  ConsumerChannel,
  PublishChannel,
  PublisherConnection,
  TopologyDeclarer,
} from './types.js';

const noop = (): void => undefined;

/**
 * The connections of one process to one broker (`host:port`): a PUBLISHING connection carrying the shared
 * publish channel and a dedicated declaration channel, and a separate CONSUMING connection for consumer
 * channels, so a blocked publishing connection never stalls consumers and vice versa. Connections are opened
 * lazily on first use and reopened lazily after a loss; every broker round trip is bounded by
 * `operationTimeout`, after which the connection is treated as dead and destroyed.
 */
export class BrokerConnection implements PublisherConnection {
  readonly server: string;
  private readonly options: BrokerOptions;
  private readonly logger: Logger;
  private readonly links: Record<ConnectionRole, Lazy<Link>>;
  /** The open link of each role, set as soon as it is connected (what a loss is compared with). */
  private readonly current = new Map<ConnectionRole, Link>();
  private readonly publishChannelLazy = new Lazy(() => this.openPublishChannel());
  /** The publish channel once open: read without awaiting on the hot path. */
  private readyChannel: AmqpPublishChannel | undefined;
  private readonly declaration = new Lazy(() => this.openDeclarationChannel());
  private declarerInstance: AmqpDeclarer | undefined;
  private readonly lostListeners = new Set<(event: ConnectionLostEvent) => void>();
  private closed = false;
  private background: BackgroundError | undefined;

  constructor(options: BrokerOptions) {
    this.options = options;
    this.server = options.address.server;
    this.logger = options.logger;
    this.links = {
      publisher: new Lazy(() => this.connect('publisher')),
      consumer: new Lazy(() => this.connect('consumer')),
    };
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
   * The shared publish channel if it is open right now (no connect, no await): a fast path for hot loops;
   * `undefined` means "call `publishChannel()`".
   */
  readyPublishChannel(): PublishChannel | undefined {
    const channel = this.readyChannel;
    return channel?.open ? channel : undefined;
  }

  /** The shared publish channel (confirm mode unless `options.confirms === false`), reopened after a loss. */
  publishChannel(): Promise<PublishChannel> {
    if (this.closed) return Promise.reject(this.closedError());
    return this.publishChannelLazy.get();
  }

  private async openPublishChannel(): Promise<AmqpPublishChannel> {
    const link = await this.link('publisher');
    const confirms = this.options.confirms ?? true;
    const channel = await this.openChannel(link, confirms);
    const publishChannel = new AmqpPublishChannel(this.server, link, channel, confirms, {
      logger: this.logger,
      onClosed: (error) => {
        if (error) this.recordBackground(error, 'publisher');
        // Reopened on the next use; a newer channel (if any) is left alone.
        if (this.readyChannel === publishChannel) {
          this.readyChannel = undefined;
          this.publishChannelLazy.reset();
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
    if (this.closed) return Promise.reject(this.closedError());
    this.declarerInstance ??= new AmqpDeclarer(() =>
      this.closed ? Promise.reject(this.closedError()) : this.declaration.get(),
    );
    return Promise.resolve(this.declarerInstance);
  }

  private async openDeclarationChannel(): Promise<DeclarationTarget> {
    const link = await this.link('publisher');
    const channel = await this.openChannel(link, false);
    const target = { channel, link };
    channel.on('error', (error: Error) => {
      this.logger.warn({ server: this.server, err: error }, `declaration channel error: ${error.message}`);
    });
    channel.on('close', () => {
      if (this.declaration.value === target) this.declaration.reset();
    });
    return target;
  }

  /** A new channel on the consuming connection with `basic.qos(prefetch)`. */
  async openConsumerChannel(prefetch: number): Promise<ConsumerChannel & TopologyDeclarer> {
    if (this.closed) throw this.closedError();
    const link = await this.link('consumer');
    const channel = await this.openChannel(link, false);
    const consumer = new AmqpConsumerChannel(this.server, link, channel, this.logger);
    await consumer.prefetch(prefetch);
    return consumer;
  }

  /**
   * Closes every channel, then both connections; a broker that does not answer within `operationTimeout` gets
   * its sockets destroyed. Idempotent.
   */
  async close(): Promise<void> {
    this.closed = true;
    const links: Promise<Link>[] = [];
    for (const lazy of Object.values(this.links)) {
      if (lazy.current !== undefined) links.push(lazy.current);
      lazy.reset();
    }
    await Promise.all(
      links.map(async (pending) => {
        let link: Link;
        try {
          // Only awaited here, never passed on.
          link = await withTimeout(
            pending,
            this.timeoutMs,
            () => new BrokerError('broker-timeout', this.server, 'connect still pending'),
          );
        } catch {
          return; // a failed or hanging connect: the attempt destroys itself (see connect)
        }
        if (link.dead) return;
        const answered = await this.closeChannels(link);
        link.dead = true;
        try {
          // A broker that let a channel.close time out gets no second wait. (Both errors are only logged.)
          if (!answered)
            throw new BrokerError('broker-timeout', this.server, 'the broker did not answer channel.close');
          await withTimeout(
            link.model.close(),
            this.timeoutMs,
            () => new BrokerError('broker-timeout', this.server, 'close timed out'),
          );
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

  private closedError(): ClosedError {
    return new ClosedError(`broker connection ${this.server} is closed`);
  }

  /**
   * amqplib gives every channel its own write buffer and interleaves them on the socket, so a
   * `connection.close` frame can overtake publishes or acks still buffered on a channel, and the broker drops
   * whatever arrives after it: messages published without confirms, or acks, would be lost. A `channel.close`
   * queues behind that channel's frames and its close-ok comes back only after the broker processed them.
   */
  private async closeChannels(link: Link): Promise<boolean> {
    for (const write of link.heldWrites) write();
    let answered = true;
    await Promise.all(
      [...link.channels].map(async (channel) => {
        try {
          await withTimeout(channel.close(), this.timeoutMs, () => {
            answered = false;
            return new BrokerError('broker-timeout', this.server, 'channel.close timed out'); // only logged below
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
    const channel = await roundTrip(link, 'channel.open', () =>
      confirms ? link.model.createConfirmChannel() : link.model.createChannel(),
    );
    link.channels.add(channel);
    channel.once('close', () => link.channels.delete(channel));
    return channel;
  }

  private link(role: ConnectionRole): Promise<Link> {
    if (this.closed) return Promise.reject(this.closedError());
    return this.links[role].get();
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
        () => new BeetleError('timeout', `connect timed out after ${connectTimeout}s`),
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
      throw this.closedError();
    }
    const socket = socketOf(model);
    if (socket !== undefined) coalesceWrites(socket);
    const link: Link = {
      role,
      server: this.server,
      model,
      operationTimeout: this.options.operationTimeout,
      blocked: false,
      dead: false,
      unblockWaiters: new Set(),
      channels: new Set(),
      heldWrites: new Set(),
      kill: (error) => this.kill(link, error),
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
      this.links[link.role].reset();
      if (link.role === 'publisher') {
        this.publishChannelLazy.reset();
        this.declaration.reset();
        this.readyChannel = undefined;
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
}
