/**
 * The option table: the single source of truth for names, Ruby names, environment variables, types, defaults,
 * units and descriptions. Defaults and units are Ruby Beetle 6.x's (durations in seconds, `deadLetteringMsgTtl` in
 * milliseconds), so a Beetle YAML file means the same thing here. Longer than 400 lines on purpose: one entry
 * per option, in one place.
 */

/** Per-server overrides (Ruby `server_connection_options`, keyed by the exact `host:port` server string). */
export interface ServerConnectionOptions {
  user?: string;
  /** Ruby key `pass` is accepted as an alias. */
  password?: string;
  vhost?: string;
  /** Ruby key `ssl` is accepted as an alias. */
  tls?: boolean;
  /** Ruby merges the whole hash over `{host, port, ...}`, so these override the server string too. */
  host?: string;
  port?: number;
  /**
   * TLS (only with `tls: true`): the CA certificate(s) to trust instead of Node's default list, as PEM text or
   * file paths (read at every connect). Bunny's `tls_ca_certificates` is read when this is unset.
   */
  ca?: string | string[];
  /** TLS client certificate, PEM text or a file path (Bunny: `tls_cert`). */
  cert?: string;
  /** TLS client key, PEM text or a file path (Bunny: `tls_key`). */
  key?: string;
  /** Passphrase of an encrypted `key` or `pfx`. */
  passphrase?: string;
  /** TLS client certificate and key as a PKCS#12 file (path). */
  pfx?: string;
  /** Name sent as SNI and checked against the broker's certificate (default: the host, unless an IP address). */
  servername?: string;
  /** `false` accepts any broker certificate (default `true`; Bunny: `verify_peer`). */
  rejectUnauthorized?: boolean;
  /** Anything else is kept as given for the broker layer; Beetle itself ignores it. */
  [key: string]: unknown;
}

/** Heartbeat value meaning "accept the broker's proposal" (Ruby `:server`). */
export type ServerHeartbeat = 'server';

export interface BeetleConfig {
  /** Which line of the redis master file to use. */
  readonly systemName: string;
  readonly beetlePolicyExchangeName: string;
  readonly beetlePolicyUpdatesQueueName: string;
  readonly beetlePolicyUpdatesRoutingKey: string;
  /** `priority` of the policies Beetle installs via the RabbitMQ HTTP API. */
  readonly beetlePolicyPriority: number;
  /** Broker-wide default policy definition; identical per-queue policies are deleted/skipped. */
  readonly brokerDefaultPolicy: Record<string, unknown>;
  /** Seconds; used by the CLI's garbage collection of dedup keys. */
  readonly gcThreshold: number;
  /** `host:port` of the dedup Redis, or the path of the redis master file. */
  readonly redisServer: string;
  /** Not used by the library; kept for the Go daemons sharing the file. */
  readonly redisServers: string;
  readonly redisDb: number;
  /** Seconds. */
  readonly redisConnectTimeout: number;
  /** Seconds. */
  readonly redisReadTimeout: number;
  /** Seconds. */
  readonly redisWriteTimeout: number;
  readonly redisPassword: string | undefined;
  readonly redisTls: boolean;
  /** Seconds every Redis operation is retried before giving up with `NoRedisMasterError`. */
  readonly redisFailoverTimeout: number;
  /** Seconds; > 0 keeps the `:status` key that long after cleanup (duplicate suppression for simple messages). */
  readonly redisStatusKeyExpiryInterval: number;
  /**
   * Seconds a message's `status=completed` (and `expires`) keys outlive the final ack of a message handled on
   * the full path (redundant, or with retries), capped at the message's remaining lifetime: a copy that comes
   * back meanwhile (a broker that forgot an ack) is acked as a duplicate. 0 deletes every key (Ruby's
   * behaviour). The effective TTL is at least `redisStatusKeyExpiryInterval`.
   */
  readonly redisCompletedStatusTtl: number;
  /**
   * TS-only. Redis Sentinels (`host:port`) to ask for the master of `redisSentinelMasterName`; when set they
   * win over `redisServer` (which can then stay a master file for Ruby consumers sharing the configuration).
   */
  readonly redisSentinels: string[];
  /** TS-only. Name of the master the Sentinels monitor. */
  readonly redisSentinelMasterName: string;
  /** TS-only. AUTH password of the Sentinels (not of Redis). */
  readonly redisSentinelPassword: string | undefined;
  /**
   * TS-only. Replicas that must have the writes a message's processing depends on (claim, mutex, completion,
   * failure count) before the store answers (Redis `WAIT`); 0: answer at the master's reply.
   */
  readonly redisWaitReplicas: number;
  /** TS-only. Seconds one `WAIT` may take; a shortfall is retried like an outage, until `redisFailoverTimeout`. */
  readonly redisWaitTimeout: number;
  /** Kept for the Go daemons sharing the file. */
  readonly redisConfigurationMasterRetries: number;
  /** Seconds; kept for the Go daemons sharing the file. */
  readonly redisConfigurationMasterRetryInterval: number;
  /** Seconds; kept for the Go daemons sharing the file. */
  readonly redisConfigurationClientTimeout: number;
  /** Kept for the Go daemons sharing the file. */
  readonly redisConfigurationClientIds: string;
  /** Brokers for publishing and subscribing (`host:port`); deduplicated, blanks removed. */
  readonly servers: string[];
  /** Brokers only subscribed to (migrations); never contains an entry of `servers`. */
  readonly additionalSubscriptionServers: string[];
  readonly serverConnectionOptions: Record<string, ServerConnectionOptions>;
  readonly vhost: string;
  readonly user: string;
  readonly password: string;
  readonly frameMax: number;
  readonly channelMax: number;
  /** Publisher heartbeat in seconds, `'server'` to accept the broker's value, 0 for none. */
  readonly heartbeat: number | ServerHeartbeat;
  readonly lazyQueuesEnabled: boolean;
  readonly deadLetteringEnabled: boolean;
  /** Milliseconds (as in Ruby): how long a rejected message waits in the dead letter queue. */
  readonly deadLetteringMsgTtl: number;
  readonly updateQueuePropertiesSynchronously: boolean;
  /** Seconds. */
  readonly rabbitmqApiReadTimeout: number;
  /** Seconds. */
  readonly rabbitmqApiWriteTimeout: number;
  /** Seconds. */
  readonly publisherConnectTimeout: number;
  /** Seconds. */
  readonly publisherReadTimeout: number;
  /** Seconds. */
  readonly publisherWriteTimeout: number;
  /** Seconds to wait for a broker's answer to a method (Bunny's continuation timeout). */
  readonly publisherReadResponseTimeout: number;
  /** Seconds. */
  readonly subscriberConnectTimeout: number;
  /** Seconds before a subscriber retries a failed connection (base of the exponential backoff). */
  readonly subscriberReconnectDelay: number;
  /** Subscriber heartbeat in seconds, `'server'` to accept the broker's value, 0 for none (Ruby's default). */
  readonly subscriberHeartbeat: number | ServerHeartbeat;
  /**
   * `basic.qos` prefetch of each consumer (one per queue and broker). Default 100 (Ruby: 1): with 1 a
   * subscriber waits a broker round trip between messages.
   */
  readonly prefetchCount: number;
  /** Seconds between queue length measurements while throttling. */
  readonly throttlingRefreshInterval: number;
  /**
   * Wait for broker confirms on publish. Default `true`, unlike Ruby (`false`): a project decision, so that a
   * resolved publish means the broker has the message.
   */
  readonly publisherConfirms: boolean;
  /** Declare and bind an exchange's queues on the first publish to it. */
  readonly publisherLazyQueueSetup: boolean;
  /** Base connection name shown by RabbitMQ (Ruby appends `-<pid>-<random>` per connection). */
  readonly connectionName: string | undefined;
  /** TS-only. Seconds after which a dead broker rejoins the publisher's rotation (Ruby hard-codes 10). */
  readonly deadServerRetryInterval: number;
  /** TS-only. Publishes awaiting confirms before `publish()` waits for a free slot. */
  readonly publisherMaxInFlight: number;
  /** TS-only. Seconds after which a publish that cannot complete (including waiting for a slot) rejects. */
  readonly publishTimeout: number;
  /**
   * TS-only. Handlers running at once per subscriber (Ruby: 1, on the reactor thread). Unset, it is
   * `prefetchCount`: a Ruby file's `prefetch_count: 1` keeps one handler at a time.
   */
  readonly subscriberConcurrency: number;
  /**
   * A delivery to hand back (requeue) whose `x-delivery-count` reached this (or the queue's `x-delivery-limit`
   * argument, when lower) is republished to its queue with a publisher confirm and then acked, so that a
   * quorum queue's delivery-limit never drops or dead-letters a message Beetle still retries. 0: never.
   */
  readonly requeueRefreshDeliveryCount: number;
  /** TS-only. Seconds; cap of the exponential reconnect backoff that starts at `subscriberReconnectDelay`. */
  readonly subscriberReconnectMaxDelay: number;
  /** TS-only. Seconds before a reject with requeue (queues without dead lettering); per message, non-blocking. */
  readonly rejectRequeueDelay: number;
  /**
   * TS-only. Seconds; cap of the hold of a message that is not ready (in progress elsewhere, delayed), which
   * doubles from `rejectRequeueDelay` with each redelivery of that message. 0: no backoff.
   */
  readonly rejectRequeueMaxDelay: number;
  /** TS-only. Seconds; default bound for a graceful stop. */
  readonly stopTimeout: number;
  /**
   * TS-only. Queues the policy update worker (`beetle policy-updates`) accepts updates for besides those of its
   * topology: comma-separated exact names, `prefix*`, or `*` for every queue.
   */
  readonly policyUpdatesAllowedQueues: string;
}

export type OptionName = keyof BeetleConfig;

/** What `createConfig` accepts: any subset of the options; server lists also as comma-separated strings. */
export type BeetleConfigInput = Partial<
  Omit<BeetleConfig, 'servers' | 'additionalSubscriptionServers' | 'redisSentinels'>
> & {
  servers?: string | readonly string[];
  additionalSubscriptionServers?: string | readonly string[];
  redisSentinels?: string | readonly string[];
};

export type OptionType =
  | 'string'
  | 'boolean'
  | 'integer'
  | 'number'
  | 'serverList'
  | 'heartbeat'
  | 'object'
  | 'serverConnectionOptions';

export type OptionUnit = 'seconds' | 'milliseconds';

interface OptionSpec<T> {
  readonly type: OptionType;
  readonly default: T;
  readonly description: string;
  readonly unit?: OptionUnit;
  /** Inclusive bounds for numbers. */
  readonly min?: number;
  readonly max?: number;
  /** Numbers: must be > 0. */
  readonly positive?: boolean;
  /** Strings: must not be empty. */
  readonly nonEmpty?: boolean;
  /** Strings: may be unset (`undefined`; `null` in files). */
  readonly optional?: boolean;
  /** Not a Ruby Beetle option. */
  readonly tsOnly?: boolean;
  /** Ruby's default where ours differs on purpose. */
  readonly rubyDefault?: T;
  /** Unset, the option takes the value of this one (after merging), not `default`. */
  readonly defaultFrom?: OptionName;
}

/** Metadata of one option, for documentation and the CLI's `config` command. */
export type ConfigOptionInfo = {
  [K in OptionName]: OptionSpec<BeetleConfig[K]> & {
    readonly name: K;
    /** The snake_case key of config files: Ruby's name (TS-only options get the same form). */
    readonly rubyName: string;
    /** `BEETLE_<RUBY_NAME>` */
    readonly envName: string;
    /** Human-readable type and range, as used in error messages. */
    readonly expected: string;
  };
}[OptionName];

/** Node fires timers longer than 2^31-1 ms after 1 ms, so durations used as timers stay below that. */
const TIMER_MAX_SECONDS = 2_147_483;

const str = (def: string, description: string): OptionSpec<string> => ({
  type: 'string',
  nonEmpty: true,
  default: def,
  description,
});
const anyStr = (description: string): OptionSpec<string> => ({ type: 'string', default: '', description });
const optStr = (description: string): OptionSpec<string | undefined> => ({
  type: 'string',
  optional: true,
  default: undefined,
  description,
});
const bool = (def: boolean, description: string): OptionSpec<boolean> => ({
  type: 'boolean',
  default: def,
  description,
});
const int = (def: number, min: number, max: number | undefined, description: string): OptionSpec<number> => ({
  type: 'integer',
  default: def,
  min,
  ...(max === undefined ? {} : { max }),
  description,
});
/** A duration in seconds used as a timer: > 0 unless `allowZero`. */
const secs = (def: number, description: string, allowZero = false): OptionSpec<number> => ({
  type: 'number',
  unit: 'seconds',
  default: def,
  ...(allowZero ? { min: 0 } : { positive: true }),
  max: TIMER_MAX_SECONDS,
  description,
});

const specs: { readonly [K in OptionName]: OptionSpec<BeetleConfig[K]> } = {
  systemName: str('system', 'which line of the redis master file to use'),
  beetlePolicyExchangeName: str('beetle-policies', 'topic exchange for policy update messages'),
  beetlePolicyUpdatesQueueName: str('beetle-policy-updates', 'queue receiving policy update messages'),
  beetlePolicyUpdatesRoutingKey: str('beetle.policy.update', 'binding and routing key of policy updates'),
  beetlePolicyPriority: int(1, 0, undefined, '`priority` of the queue policies Beetle installs'),
  brokerDefaultPolicy: {
    type: 'object',
    default: {},
    description: 'broker-wide default policy definition; identical per-queue policies are deleted or skipped',
  },
  gcThreshold: {
    ...int(
      3600,
      0,
      undefined,
      '`beetle gc` collects the keys of messages that expired more than this long ago',
    ),
    unit: 'seconds',
  },
  redisServer: str(
    'localhost:6379',
    '`host:port` of the dedup store, the path of the redis master file, or `sentinel://host:port,…/<master>`',
  ),
  redisServers: anyStr('unused by the library; kept for the Go daemons sharing the file'),
  redisDb: int(4, 0, undefined, 'Redis database of the dedup store'),
  redisConnectTimeout: secs(5, 'Redis connect timeout'),
  redisReadTimeout: secs(5, 'Redis read timeout'),
  redisWriteTimeout: secs(5, 'Redis write timeout'),
  redisPassword: optStr('Redis AUTH password'),
  redisTls: bool(false, 'connect to Redis with TLS'),
  redisFailoverTimeout: secs(180, 'how long every Redis operation is retried before giving up', true),
  redisStatusKeyExpiryInterval: {
    ...int(
      0,
      0,
      undefined,
      '> 0: keep the `:status` key this long after cleanup (dedup for simple messages)',
    ),
    unit: 'seconds',
  },
  redisCompletedStatusTtl: {
    ...int(
      600,
      0,
      undefined,
      'keep `status=completed` this long after the last ack of a message handled on the full path (redundant or retried), at most until its `expires_at`: a copy coming back later is a duplicate; 0 deletes every key, as Ruby does',
    ),
    unit: 'seconds',
    tsOnly: true,
  },
  redisConfigurationMasterRetries: int(3, 0, undefined, 'kept for the Go daemons sharing the file'),
  redisConfigurationMasterRetryInterval: secs(10, 'kept for the Go daemons sharing the file', true),
  redisConfigurationClientTimeout: secs(5, 'kept for the Go daemons sharing the file (Go default: 10)'),
  redisConfigurationClientIds: anyStr('kept for the Go daemons sharing the file'),
  servers: {
    type: 'serverList',
    default: ['localhost:5672'],
    description: 'brokers for publishing and subscribing (comma-separated `host:port`)',
  },
  additionalSubscriptionServers: {
    type: 'serverList',
    default: [],
    description: 'brokers only subscribed to, e.g. during a migration',
  },
  serverConnectionOptions: {
    type: 'serverConnectionOptions',
    default: {},
    description:
      'per-server overrides: `{"host:port": {user, pass, vhost, ssl, ca, cert, key, passphrase, pfx, servername, rejectUnauthorized}}`',
  },
  vhost: str('/', 'AMQP virtual host'),
  user: { type: 'string', default: 'guest', description: 'AMQP user' },
  password: { type: 'string', default: 'guest', description: 'AMQP password' },
  frameMax: int(131072, 0, 4294967295, 'publisher AMQP frame_max (0 = no limit)'),
  channelMax: int(2047, 1, 65535, 'publisher AMQP channel_max'),
  heartbeat: {
    type: 'heartbeat',
    unit: 'seconds',
    default: 'server',
    description:
      'publisher heartbeat; `server` accepts the broker value, 0 turns heartbeats off (file alias: `publisher_heartbeat`)',
  },
  lazyQueuesEnabled: bool(false, 'default of the queue option `lazy` (policy `queue-mode: lazy`)'),
  deadLetteringEnabled: bool(false, 'default of the queue option `deadLettering`'),
  deadLetteringMsgTtl: {
    ...int(1000, 0, undefined, 'how long rejected messages wait in the dead letter queue'),
    unit: 'milliseconds',
  },
  updateQueuePropertiesSynchronously: bool(
    false,
    'call the RabbitMQ HTTP API inline instead of publishing a policy update message',
  ),
  rabbitmqApiReadTimeout: secs(60, 'RabbitMQ HTTP API read timeout'),
  rabbitmqApiWriteTimeout: secs(60, 'RabbitMQ HTTP API write timeout'),
  publisherConnectTimeout: secs(5, 'publisher connect timeout'),
  publisherReadTimeout: secs(5, 'publisher socket read timeout'),
  publisherWriteTimeout: secs(5, 'publisher socket write timeout'),
  publisherReadResponseTimeout: secs(5, 'how long the publisher waits for a broker answer to a method'),
  subscriberConnectTimeout: secs(5, 'subscriber connect timeout'),
  subscriberReconnectDelay: secs(10, 'delay before a subscriber retries a failed connection (backoff base)'),
  subscriberHeartbeat: {
    type: 'heartbeat',
    unit: 'seconds',
    default: 'server',
    rubyDefault: 0,
    description:
      'subscriber heartbeat; `server` accepts the broker value (dead connections are noticed), 0 turns heartbeats off',
  },
  prefetchCount: {
    ...int(
      100,
      1,
      65535,
      "basic.qos prefetch: unacked deliveries per queue and broker; 1 keeps Ruby's one message at a time",
    ),
    rubyDefault: 1,
  },
  throttlingRefreshInterval: secs(60, 'how often queue lengths are measured while throttling'),
  publisherConfirms: {
    ...bool(true, 'wait for broker confirms on publish (TS default true, Ruby false)'),
    rubyDefault: false,
  },
  publisherLazyQueueSetup: bool(true, "declare and bind an exchange's queues on the first publish to it"),
  connectionName: optStr('base connection name shown by RabbitMQ'),
  deadServerRetryInterval: {
    ...secs(10, 'after this, a dead broker rejoins the publisher rotation (Ruby hard-codes 10)', true),
    tsOnly: true,
  },
  publisherMaxInFlight: {
    ...int(1000, 1, undefined, 'publishes awaiting confirms before publish() waits for a slot'),
    tsOnly: true,
  },
  publishTimeout: {
    ...secs(30, 'a publish that cannot complete (including waiting for a slot) rejects after this'),
    tsOnly: true,
  },
  subscriberConcurrency: {
    ...int(
      100,
      1,
      undefined,
      'handlers running at once per subscriber; unset: `prefetchCount`, so `prefetch_count: 1` runs one at a time as in Ruby (per handler: the handler option `concurrency`)',
    ),
    defaultFrom: 'prefetchCount',
    tsOnly: true,
  },
  requeueRefreshDeliveryCount: {
    ...int(
      10,
      0,
      undefined,
      "a delivery to hand back whose `x-delivery-count` (quorum queues) reached this, or the queue's `x-delivery-limit` argument, is republished with a confirm and acked instead, so the queue's delivery-limit cannot drop it; 0: never",
    ),
    tsOnly: true,
  },
  subscriberReconnectMaxDelay: {
    ...secs(60, 'cap of the exponential reconnect backoff starting at subscriber_reconnect_delay'),
    tsOnly: true,
  },
  rejectRequeueDelay: {
    ...secs(1, 'pause before a reject with requeue (queues without dead lettering), per message', true),
    tsOnly: true,
  },
  rejectRequeueMaxDelay: {
    ...secs(
      10,
      'cap of the backoff of a message not ready yet (in progress elsewhere, delayed): its hold doubles from reject_requeue_delay with each redelivery (0: no backoff)',
      true,
    ),
    tsOnly: true,
  },
  stopTimeout: { ...secs(30, 'default bound for a graceful stop'), tsOnly: true },
  policyUpdatesAllowedQueues: {
    ...anyStr(
      'queues the policy update worker accepts besides those of its topology: comma-separated names, `prefix*`, or `*` for all',
    ),
    tsOnly: true,
  },
  redisSentinels: {
    type: 'serverList',
    default: [],
    description:
      'Redis Sentinels (comma-separated `host:port`) asked for the master; win over `redis_server` when set',
    tsOnly: true,
  },
  redisSentinelMasterName: {
    ...str('mymaster', 'name of the master the Redis Sentinels monitor'),
    tsOnly: true,
  },
  redisSentinelPassword: { ...optStr('AUTH password of the Redis Sentinels'), tsOnly: true },
  redisWaitReplicas: {
    ...int(
      0,
      0,
      undefined,
      'replicas that must confirm the claim, mutex, completion and failure writes before the store answers (Redis `WAIT`; 0 = off)',
    ),
    tsOnly: true,
  },
  redisWaitTimeout: {
    ...secs(1, 'how long one Redis `WAIT` may take; a shortfall is retried until `redis_failover_timeout`'),
    tsOnly: true,
  },
};

const snakeCase = (name: string): string => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

function expectedText(spec: OptionSpec<unknown>): string {
  const text = typeText(spec);
  return spec.unit === undefined ? text : `${text} (${spec.unit})`;
}

function typeText(spec: OptionSpec<unknown>): string {
  switch (spec.type) {
    case 'string':
      return spec.nonEmpty ? 'a non-empty string' : 'a string';
    case 'boolean':
      return 'a boolean';
    case 'integer':
    case 'number': {
      const kind = spec.type === 'integer' ? 'integer' : 'number';
      const { min, max, positive } = spec;
      if (positive) return max === undefined ? `a positive ${kind}` : `a positive ${kind} up to ${max}`;
      if (max !== undefined)
        return `${kind === 'integer' ? 'an' : 'a'} ${kind} between ${min ?? 0} and ${max}`;
      if (min === 0) return `a non-negative ${kind}`;
      if (min === 1 && kind === 'integer') return 'a positive integer';
      return `${kind === 'integer' ? 'an' : 'a'} ${kind} of at least ${min}`;
    }
    case 'serverList':
      return 'a comma-separated string or an array of "host:port" servers';
    case 'heartbeat':
      return '"server" or an integer between 0 and 65535';
    case 'object':
      return 'an object';
    case 'serverConnectionOptions':
      return 'an object mapping "host:port" to connection options';
  }
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}

/** All options, in the order of Ruby's configuration table followed by the TS-only ones. */
export const configOptions: readonly ConfigOptionInfo[] = deepFreeze(
  (Object.keys(specs) as OptionName[]).map((name) => {
    const rubyName = snakeCase(name);
    // Built per option; the mapped type ties `name` to its spec, which TS cannot follow through `map`.
    return {
      ...specs[name],
      name,
      rubyName,
      envName: `BEETLE_${rubyName.toUpperCase()}`,
      expected: expectedText(specs[name]),
    } as ConfigOptionInfo;
  }),
);

export const optionInfo: ReadonlyMap<string, ConfigOptionInfo> = new Map(
  configOptions.map((o) => [o.name, o]),
);

/** Ruby's defaults (and ours for the TS-only options). Deeply frozen: `createConfig` hands out copies. */
export const defaultConfig: Readonly<BeetleConfig> = deepFreeze(
  Object.fromEntries(configOptions.map((o) => [o.name, o.default])) as unknown as BeetleConfig,
);

/** A key that a configuration source contained but that means nothing here, reported so the caller can log it. */
export interface IgnoredConfigKey {
  /** The key as written: a file key or an environment variable name. */
  readonly key: string;
  /** File path (or the `source` given to `parseConfigFile`), or `environment`. */
  readonly source: string;
  /** Why it is ignored. */
  readonly reason: string;
}

export interface ConfigReadOptions {
  /** Called once per ignored key; without it, ignored keys are dropped silently. */
  readonly onIgnoredKey?: (ignored: IgnoredConfigKey) => void;
}
