import type { ConnectionOptions } from 'node:tls';
import { ConfigurationError, silentLogger, type BeetleConfig, type Logger } from '@beetle/core';
import type { AckFlush } from '@beetle/core/kit';
import { redisTlsOptions } from './client.js';
import type { RedisConnectionSettings } from './connection.js';
import { sentinelTarget } from './sentinel.js';

/** Options of {@link RedisDedupStore}. Durations are in seconds, like Ruby Beetle's configuration. */
export interface RedisDedupStoreOptions {
  /**
   * `host:port`, the path of a Redis master file (reference §4.8), or Redis Sentinel:
   * `sentinel://host1:26379,host2:26379/<master name>`. Default `localhost:6379`.
   */
  readonly redisServer?: string;
  /**
   * Redis Sentinels (`host:port`, an array or one comma-separated string) that name the master; when set they
   * win over `redisServer` (which can stay a master file for Ruby consumers sharing the configuration).
   */
  readonly sentinels?: string | readonly string[];
  /** The master's name at the Sentinels (with `sentinels`). Default `mymaster`. */
  readonly sentinelMasterName?: string;
  /** AUTH password of the Sentinels (not of Redis). */
  readonly sentinelPassword?: string | undefined;
  /**
   * Replicas that must have a claim, mutex, completion or failure count before the store answers (Redis
   * `WAIT`), so that a failover cannot forget what a handler run or a broker ack was based on. 0 (default):
   * the master's reply suffices. See the README ("Writes a failover can lose").
   */
  readonly waitReplicas?: number;
  /**
   * Seconds one `WAIT` may take (less than `readTimeout`); when fewer replicas confirmed, the call is retried
   * like an outage, until `failoverTimeout`. Default 1.
   */
  readonly waitTimeout?: number;
  /** Which line of the master file applies. Default `system`. */
  readonly systemName?: string;
  /** Database of the dedup store. Default 4. */
  readonly db?: number;
  readonly password?: string | undefined;
  /** `true` for TLS with default options (verification off when env `OPENSSL_SSL_VERIFY_NONE=1`), or options. */
  readonly tls?: boolean | ConnectionOptions;
  /** Seconds to establish a connection. Default 5. */
  readonly connectTimeout?: number;
  /**
   * Seconds without a reply after which a call counts as stalled: the outage is logged, the master file is
   * looked at and the connection is checked (a dead one is replaced). Commands are not resent on a live
   * connection, so a stalled server never runs one twice. Checked every 250 ms (a quarter of readTimeout if
   * shorter), so noticed up to that much later. Default 5.
   */
  readonly readTimeout?: number;
  /** Seconds every call keeps retrying while Redis is unreachable, then `NoRedisMasterError`. Default 180. */
  readonly failoverTimeout?: number;
  /** Seconds between two attempts of a call during an outage. Default 1. */
  readonly retryInterval?: number;
  /** Seconds between two looks at the master file on the hot path. Default 1. */
  readonly masterFileCheckInterval?: number;
  /**
   * Seconds the `status` key outlives a processed message, on the simple path too (Ruby
   * `redis_status_key_expiry_interval`); 0 (default) leaves it to `completedStatusTtl`.
   */
  readonly statusKeyExpiryInterval?: number;
  /**
   * Seconds `status=completed` and `expires` outlive the final ack of a message handled on the full path
   * (redundant, or with retries), at most until the message's `expires_at` (plus a minute for clocks), at
   * least `statusKeyExpiryInterval`: a copy that comes back meanwhile (a broker that forgot an ack) is acked
   * as a duplicate. Default 600; 0 deletes every key (Ruby's behaviour with its default interval 0).
   */
  readonly completedStatusTtl?: number;
  /** Silent by default. */
  readonly logger?: Logger;
  /**
   * When the calls that may delete a message's keys are sent: after the caller's broker acks were written
   * (see `AckFlush`). Default `amqplibAckFlush`, right for acks sent through `@beetle/broker-amqp`.
   */
  readonly ackFlush?: AckFlush;
}

/**
 * The core configuration fields the store reads (Ruby names, seconds). `redisWriteTimeout` is not used: ioredis
 * has no separate write timeout, a command's timeout (`redisReadTimeout`) covers writing and reading.
 */
export type RedisDedupStoreConfig = Partial<
  Pick<
    BeetleConfig,
    | 'redisServer'
    | 'systemName'
    | 'redisDb'
    | 'redisPassword'
    | 'redisTls'
    | 'redisConnectTimeout'
    | 'redisReadTimeout'
    | 'redisWriteTimeout'
    | 'redisFailoverTimeout'
    | 'redisStatusKeyExpiryInterval'
    | 'redisCompletedStatusTtl'
    | 'redisSentinels'
    | 'redisSentinelMasterName'
    | 'redisSentinelPassword'
    | 'redisWaitReplicas'
    | 'redisWaitTimeout'
  >
>;

const seconds = (name: string, value: number | undefined, fallback: number): number => {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new ConfigurationError(`${name} must be a non-negative number of seconds, got ${String(value)}`, {
      key: name,
    });
  }
  return value;
};

const wholeSeconds = (name: string, value: number | undefined, fallback: number): number => {
  const result = seconds(name, value, fallback);
  if (!Number.isInteger(result)) {
    throw new ConfigurationError(`${name} must be whole seconds, got ${result}`, { key: name });
  }
  return result;
};

/** Default of {@link RedisDedupStoreOptions.completedStatusTtl} (core's `redisCompletedStatusTtl`). */
export const DEFAULT_COMPLETED_STATUS_TTL = 600;

/** The store's settings from its options: validated, defaults applied, in milliseconds for the connection. */
export function storeSettings(options: RedisDedupStoreOptions): {
  readonly statusKeyExpiryInterval: number;
  readonly completedStatusTtl: number;
  /** Seconds. */
  readonly failoverTimeout: number;
  readonly connection: RedisConnectionSettings;
} {
  const interval = wholeSeconds('statusKeyExpiryInterval', options.statusKeyExpiryInterval, 0);
  const completedStatusTtl = wholeSeconds(
    'completedStatusTtl',
    options.completedStatusTtl,
    DEFAULT_COMPLETED_STATUS_TTL,
  );
  const db = options.db ?? 4;
  if (!Number.isInteger(db) || db < 0) {
    throw new ConfigurationError(`db must be a non-negative integer, got ${String(db)}`, { key: 'db' });
  }
  const redisServer = (options.redisServer ?? 'localhost:6379').trim();
  if (redisServer === '')
    throw new ConfigurationError('redisServer must not be empty', { key: 'redisServer' });
  // In the order of the fields below (the first invalid one is reported).
  const connectTimeout = seconds('connectTimeout', options.connectTimeout, 5);
  const readTimeout = seconds('readTimeout', options.readTimeout, 5);
  const failoverTimeout = seconds('failoverTimeout', options.failoverTimeout, 180);
  const sentinel = sentinelTarget({
    redisServer,
    redisSentinels: options.sentinels,
    redisSentinelMasterName: options.sentinelMasterName,
    redisSentinelPassword: options.sentinelPassword,
  });
  const waitReplicas = options.waitReplicas ?? 0;
  if (!Number.isInteger(waitReplicas) || waitReplicas < 0) {
    throw new ConfigurationError(`waitReplicas must be a non-negative integer, got ${String(waitReplicas)}`, {
      key: 'waitReplicas',
    });
  }
  const waitTimeout = seconds('waitTimeout', options.waitTimeout, 1);
  // A WAIT longer than the read timeout would count as a stall (and its connection probed and dropped).
  if (waitReplicas > 0 && (waitTimeout <= 0 || waitTimeout >= readTimeout)) {
    throw new ConfigurationError(
      `waitTimeout must be more than 0 and less than readTimeout (${readTimeout}s), got ${waitTimeout}`,
      { key: 'waitTimeout' },
    );
  }
  return {
    statusKeyExpiryInterval: interval,
    completedStatusTtl,
    failoverTimeout,
    connection: {
      redisServer,
      sentinel,
      waitReplicas,
      // WAIT takes whole milliseconds.
      waitTimeoutMs: Math.max(1, Math.round(waitTimeout * 1000)),
      systemName: options.systemName ?? 'system',
      db,
      password: options.password === '' ? undefined : options.password,
      tls: redisTlsOptions(options.tls),
      connectTimeoutMs: connectTimeout * 1000,
      readTimeoutMs: readTimeout * 1000,
      failoverTimeoutMs: failoverTimeout * 1000,
      retryIntervalMs: seconds('retryInterval', options.retryInterval, 1) * 1000,
      masterFileCheckIntervalMs:
        seconds('masterFileCheckInterval', options.masterFileCheckInterval, 1) * 1000,
      logger: options.logger ?? silentLogger,
    },
  };
}

/** The store's options from core's configuration fields (Ruby names and units). */
export const optionsFromConfig = (
  config: RedisDedupStoreConfig,
  extra: { readonly logger?: Logger; readonly ackFlush?: AckFlush },
): RedisDedupStoreOptions => ({
  redisServer: config.redisServer,
  systemName: config.systemName,
  db: config.redisDb,
  password: config.redisPassword ?? undefined,
  tls: config.redisTls,
  connectTimeout: config.redisConnectTimeout,
  readTimeout: config.redisReadTimeout,
  failoverTimeout: config.redisFailoverTimeout,
  statusKeyExpiryInterval: config.redisStatusKeyExpiryInterval,
  completedStatusTtl: config.redisCompletedStatusTtl,
  sentinels: config.redisSentinels,
  sentinelMasterName: config.redisSentinelMasterName,
  sentinelPassword: config.redisSentinelPassword ?? undefined,
  waitReplicas: config.redisWaitReplicas,
  waitTimeout: config.redisWaitTimeout,
  logger: extra.logger,
  ackFlush: extra.ackFlush,
});
