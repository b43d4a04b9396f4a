import { ClosedError, silentLogger, type BeetleConfig, type Logger } from '@beetle/core';
import { brokerAddress } from '@beetle/core/kit';
import { BrokerConnection } from './connection.js';
import type { BrokerOptions, PublisherPool } from './types.js';

/**
 * The `BrokerOptions` of one configured server, Ruby units (seconds): the publisher's connect, response and
 * heartbeat settings, and the subscriber's heartbeat and connect timeout for the consuming connection.
 */
export function brokerOptions(
  config: BeetleConfig,
  server: string,
  logger: Logger = silentLogger,
): BrokerOptions {
  return {
    address: brokerAddress(config, server),
    heartbeat: config.heartbeat,
    connectTimeout: config.publisherConnectTimeout,
    operationTimeout: config.publisherReadResponseTimeout,
    frameMax: config.frameMax,
    channelMax: config.channelMax,
    connectionName: config.connectionName,
    logger,
    confirms: config.publisherConfirms,
    consumerHeartbeat: config.subscriberHeartbeat,
    consumerConnectTimeout: config.subscriberConnectTimeout,
  };
}

/**
 * One `BrokerConnection` per broker per process, created lazily and shared by the publisher and the
 * subscriber of the process.
 */
export class BrokerPool implements PublisherPool {
  private readonly connections = new Map<string, BrokerConnection>();
  private isClosed = false;

  constructor(
    readonly config: BeetleConfig,
    private readonly logger: Logger = silentLogger,
  ) {}

  get(server: string): BrokerConnection {
    if (this.isClosed) throw new ClosedError('broker pool is closed');
    let connection = this.connections.get(server);
    if (!connection) {
      connection = new BrokerConnection(brokerOptions(this.config, server, this.logger));
      this.connections.set(server, connection);
    }
    return connection;
  }

  /** Whether `close` was called. */
  get closed(): boolean {
    return this.isClosed;
  }

  /** The connections created so far. */
  all(): BrokerConnection[] {
    return [...this.connections.values()];
  }

  /** Closes every connection (each bounded by its operation timeout). Idempotent. */
  async close(): Promise<void> {
    this.isClosed = true;
    const connections = [...this.connections.values()];
    this.connections.clear();
    await Promise.all(connections.map((c) => c.close()));
  }
}
