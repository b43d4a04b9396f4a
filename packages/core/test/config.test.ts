import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ConfigurationError } from '../src/errors.js';
import {
  brokerAddress,
  configFromEnv,
  configOptions,
  createConfig,
  defaultConfig,
  loadConfigFile,
  parseConfigFile,
  parseServerList,
  type BeetleConfigInput,
  type IgnoredConfigKey,
} from '../src/config/index.js';

const fixture = (name: string): string =>
  fileURLToPath(new URL(`./fixtures/config/${name}`, import.meta.url));

/** Runs `fn`, expects a ConfigurationError and returns it. */
function configError(fn: () => unknown): ConfigurationError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigurationError);
    return error as ConfigurationError;
  }
  throw new Error('expected a ConfigurationError');
}

describe('defaults', () => {
  it("equal Ruby Beetle 6.x's table, except publisherConfirms, plus the TS-only options", () => {
    expect(defaultConfig).toEqual({
      systemName: 'system',
      beetlePolicyExchangeName: 'beetle-policies',
      beetlePolicyUpdatesQueueName: 'beetle-policy-updates',
      beetlePolicyUpdatesRoutingKey: 'beetle.policy.update',
      beetlePolicyPriority: 1,
      brokerDefaultPolicy: {},
      gcThreshold: 3600,
      redisServer: 'localhost:6379',
      redisServers: '',
      redisDb: 4,
      redisConnectTimeout: 5,
      redisReadTimeout: 5,
      redisWriteTimeout: 5,
      redisPassword: undefined,
      redisTls: false,
      redisFailoverTimeout: 180,
      redisStatusKeyExpiryInterval: 0,
      redisCompletedStatusTtl: 600, // TS only (Ruby deletes every key: 0)
      redisConfigurationMasterRetries: 3,
      redisConfigurationMasterRetryInterval: 10,
      redisConfigurationClientTimeout: 5,
      redisConfigurationClientIds: '',
      servers: ['localhost:5672'],
      additionalSubscriptionServers: [],
      serverConnectionOptions: {},
      vhost: '/',
      user: 'guest',
      password: 'guest',
      frameMax: 131072,
      channelMax: 2047,
      heartbeat: 'server',
      lazyQueuesEnabled: false,
      deadLetteringEnabled: false,
      deadLetteringMsgTtl: 1000,
      updateQueuePropertiesSynchronously: false,
      rabbitmqApiReadTimeout: 60,
      rabbitmqApiWriteTimeout: 60,
      publisherConnectTimeout: 5,
      publisherReadTimeout: 5,
      publisherWriteTimeout: 5,
      publisherReadResponseTimeout: 5,
      subscriberConnectTimeout: 5,
      subscriberReconnectDelay: 10,
      subscriberHeartbeat: 'server', // Ruby: 0 = off (project decision: notice dead connections)
      prefetchCount: 100, // Ruby: 1 (project decision: one broker round trip per message is slow)
      throttlingRefreshInterval: 60,
      publisherConfirms: true, // Ruby: false (project decision)
      publisherLazyQueueSetup: true,
      connectionName: undefined,
      deadServerRetryInterval: 10,
      publisherMaxInFlight: 1000,
      publishTimeout: 30,
      subscriberConcurrency: 100, // follows prefetchCount
      requeueRefreshDeliveryCount: 10,
      subscriberReconnectMaxDelay: 60,
      rejectRequeueDelay: 1,
      rejectRequeueMaxDelay: 10,
      stopTimeout: 30,
      policyUpdatesAllowedQueues: '',
      redisSentinels: [],
      redisSentinelMasterName: 'mymaster',
      redisSentinelPassword: undefined,
      redisWaitReplicas: 0,
      redisWaitTimeout: 1,
    });
  });

  it('are deeply frozen, and createConfig() returns an equal copy sharing nothing', () => {
    expect(Object.isFrozen(defaultConfig)).toBe(true);
    expect(Object.isFrozen(defaultConfig.servers)).toBe(true);
    const config = createConfig();
    expect(config).toEqual(defaultConfig);
    expect(config).not.toBe(defaultConfig);
    expect(config.servers).not.toBe(defaultConfig.servers);
    expect(config.serverConnectionOptions).not.toBe(defaultConfig.serverConnectionOptions);
    config.servers.push('other:5672');
    expect(defaultConfig.servers).toEqual(['localhost:5672']);
    expect(Object.isFrozen(config)).toBe(true);
  });
});

describe('option table', () => {
  it('describes every option, with Ruby names and BEETLE_ env names', () => {
    expect(configOptions.map((o) => o.name)).toEqual(Object.keys(defaultConfig));
    for (const option of configOptions) {
      expect(option.default).toEqual(defaultConfig[option.name]);
      expect(option.envName).toBe(`BEETLE_${option.rubyName.toUpperCase()}`);
      expect(option.description).not.toBe('');
      expect(option.expected).not.toBe('');
    }
  });

  it("uses Ruby's exact names for Ruby's options", () => {
    const rubyNames = new Set(configOptions.filter((o) => o.tsOnly !== true).map((o) => o.rubyName));
    for (const name of [
      'system_name',
      'beetle_policy_exchange_name',
      'broker_default_policy',
      'gc_threshold',
      'redis_server',
      'redis_db',
      'redis_status_key_expiry_interval',
      'redis_configuration_client_ids',
      'servers',
      'additional_subscription_servers',
      'server_connection_options',
      'frame_max',
      'channel_max',
      'heartbeat',
      'dead_lettering_msg_ttl',
      'update_queue_properties_synchronously',
      'rabbitmq_api_read_timeout',
      'publisher_read_response_timeout',
      'subscriber_reconnect_delay',
      'prefetch_count',
      'throttling_refresh_interval',
      'publisher_confirms',
      'publisher_lazy_queue_setup',
      'connection_name',
    ]) {
      expect(rubyNames).toContain(name);
    }
    expect(configOptions.filter((o) => o.tsOnly === true).map((o) => o.name)).toEqual([
      'redisCompletedStatusTtl',
      'deadServerRetryInterval',
      'publisherMaxInFlight',
      'publishTimeout',
      'subscriberConcurrency',
      'requeueRefreshDeliveryCount',
      'subscriberReconnectMaxDelay',
      'rejectRequeueDelay',
      'rejectRequeueMaxDelay',
      'stopTimeout',
      'policyUpdatesAllowedQueues',
      'redisSentinels',
      'redisSentinelMasterName',
      'redisSentinelPassword',
      'redisWaitReplicas',
      'redisWaitTimeout',
    ]);
  });

  it('records units and where the default differs from Ruby', () => {
    const byName = new Map(configOptions.map((o) => [o.name, o]));
    expect(byName.get('deadLetteringMsgTtl')?.unit).toBe('milliseconds');
    expect(byName.get('redisFailoverTimeout')?.unit).toBe('seconds');
    expect(byName.get('publisherConfirms')?.rubyDefault).toBe(false);
  });
});

describe('createConfig', () => {
  it('merges inputs left to right over the defaults, skipping undefined', () => {
    const config = createConfig(
      { redisDb: 5, user: 'a', prefetchCount: 2 },
      undefined,
      { user: 'b', prefetchCount: undefined },
      { heartbeat: 15 },
    );
    expect(config.redisDb).toBe(5);
    expect(config.user).toBe('b');
    expect(config.prefetchCount).toBe(2);
    expect(config.heartbeat).toBe(15);
    expect(config.password).toBe('guest');
  });

  it('accepts a full config as the base of another', () => {
    const base = createConfig({ servers: 'a:5672,b:5672' });
    expect(createConfig(base, { redisDb: 1 })).toMatchObject({ servers: ['a:5672', 'b:5672'], redisDb: 1 });
  });

  it('replaces object options rather than merging them', () => {
    const config = createConfig(
      { serverConnectionOptions: { 'a:5672': { user: 'x' } } },
      { serverConnectionOptions: { 'b:5672': { user: 'y' } } },
    );
    expect(config.serverConnectionOptions).toEqual({ 'b:5672': { user: 'y' } });
  });

  it('does not share arrays or objects with its inputs', () => {
    const servers = ['a:5672'];
    const policy = { 'queue-mode': 'lazy' };
    const config = createConfig({ servers, brokerDefaultPolicy: policy });
    servers.push('b:5672');
    policy['queue-mode'] = 'default';
    expect(config.servers).toEqual(['a:5672']);
    expect(config.brokerDefaultPolicy).toEqual({ 'queue-mode': 'lazy' });
  });

  it('rejects unknown keys, naming them and suggesting the closest option', () => {
    const typo = configError(() => createConfig({ redisServr: 'x' } as BeetleConfigInput));
    expect(typo.message).toBe('unknown option `redisServr`; did you mean `redisServer`?');
    expect(typo.key).toBe('redisServr');
    const ruby = configError(() => createConfig({ dead_lettering_msg_ttl: 5 } as BeetleConfigInput));
    expect(ruby.message).toContain('did you mean `deadLetteringMsgTtl`?');
    const unrelated = configError(() => createConfig({ flux: 1 } as BeetleConfigInput));
    expect(unrelated.message).toBe('unknown option `flux`');
  });

  it('rejects wrong types, naming the key and the expected type', () => {
    const error = configError(() => createConfig({ redisDb: 'x' } as unknown as BeetleConfigInput));
    expect(error.message).toBe('option `redisDb` must be a non-negative integer, got string "x"');
    expect(error.key).toBe('redisDb');
    expect(error.reason).toBe('configuration');
    const bool = configError(() =>
      createConfig({ publisherConfirms: 'yes' } as unknown as BeetleConfigInput),
    );
    expect(bool.message).toBe('option `publisherConfirms` must be a boolean, got string "yes"');
  });

  it.each<[BeetleConfigInput, string]>([
    [{ redisDb: -1 }, 'redisDb'],
    [{ redisDb: 1.5 }, 'redisDb'],
    [{ prefetchCount: 0 }, 'prefetchCount'],
    [{ prefetchCount: 65536 }, 'prefetchCount'],
    [{ channelMax: 0 }, 'channelMax'],
    [{ publisherConnectTimeout: 0 }, 'publisherConnectTimeout'],
    [{ publishTimeout: Number.NaN }, 'publishTimeout'],
    [{ redisReadTimeout: Number.POSITIVE_INFINITY }, 'redisReadTimeout'],
    [{ stopTimeout: 3e6 }, 'stopTimeout'], // beyond setTimeout's range
    [{ heartbeat: -1 }, 'heartbeat'],
    [{ heartbeat: 'client' as 'server' }, 'heartbeat'],
    [{ vhost: '' }, 'vhost'],
    [{ systemName: '' }, 'systemName'],
    [{ publisherMaxInFlight: 0 }, 'publisherMaxInFlight'],
    [{ subscriberConcurrency: 0 }, 'subscriberConcurrency'],
    [{ brokerDefaultPolicy: [] as unknown as Record<string, unknown> }, 'brokerDefaultPolicy'],
    [{ servers: 'a:70000' }, 'servers'],
    [{ servers: 'a b:5672' }, 'servers'],
    [{ servers: ',, ' }, 'servers'],
    [{ servers: [1] as unknown as string[] }, 'servers'],
    [{ serverConnectionOptions: { 'a:5672': { port: 0 } } }, 'serverConnectionOptions.a:5672.port'],
    [{ serverConnectionOptions: { 'a:5672': { ssl: 'yes' } } }, 'serverConnectionOptions.a:5672.ssl'],
    [
      { serverConnectionOptions: { 'a:5672': { pass: 'x', password: 'y' } } },
      'serverConnectionOptions.a:5672',
    ],
    [{ subscriberReconnectDelay: 30, subscriberReconnectMaxDelay: 20 }, 'subscriberReconnectMaxDelay'],
  ])('rejects %o with an error naming %s', (input, key) => {
    const error = configError(() => createConfig(input));
    expect(error.key).toBe(key);
    expect(error.message).toContain(key.split('.')[0]);
  });

  it('accepts zero where it means something', () => {
    const config = createConfig({
      redisFailoverTimeout: 0,
      rejectRequeueDelay: 0,
      deadServerRetryInterval: 0,
      deadLetteringMsgTtl: 0,
      subscriberHeartbeat: 0,
      heartbeat: 0,
      frameMax: 0,
    });
    expect(config.heartbeat).toBe(0);
  });

  it('normalizes Ruby connection option aliases', () => {
    const config = createConfig({
      serverConnectionOptions: { 'a:5671': { pass: 'p', ssl: true, verify_peer: false } },
    });
    expect(config.serverConnectionOptions).toEqual({
      'a:5671': { password: 'p', tls: true, verify_peer: false },
    });
  });
});

describe('server lists', () => {
  it("follows Ruby's split(/ *, */).uniq.reject(&:blank?)", () => {
    expect(parseServerList('a:5672 , b:5673,,a:5672')).toEqual(['a:5672', 'b:5673']);
    expect(parseServerList(['a:5672', ' ', 'a:5672', 'c'])).toEqual(['a:5672', 'c']);
    expect(parseServerList('')).toEqual([]);
  });

  it('removes servers from the additional subscription servers', () => {
    const config = createConfig({
      servers: 'a:5672 , b:5673,,a:5672',
      additionalSubscriptionServers: 'b:5673, c:5672, c:5672',
    });
    expect(config.servers).toEqual(['a:5672', 'b:5673']);
    expect(config.additionalSubscriptionServers).toEqual(['c:5672']);
  });
});

describe('subscriberConcurrency follows prefetchCount unless set', () => {
  it('runs one handler at a time for a Ruby file that sets prefetch_count: 1', () => {
    const fromFile = createConfig(parseConfigFile('servers: a:5672\nprefetch_count: 1\n', 'yaml', 'r.yml'));
    expect([fromFile.prefetchCount, fromFile.subscriberConcurrency]).toEqual([1, 1]);
    const fromEnv = createConfig(configFromEnv({ BEETLE_PREFETCH_COUNT: '7' }));
    expect([fromEnv.prefetchCount, fromEnv.subscriberConcurrency]).toEqual([7, 7]);
  });

  it('takes the last prefetchCount of the merged inputs, and an explicit subscriberConcurrency wins', () => {
    const merged = createConfig({ prefetchCount: 5 }, { prefetchCount: 20 });
    expect(merged.subscriberConcurrency).toBe(20);
    const explicit = createConfig({ prefetchCount: 1, subscriberConcurrency: 8 }, { prefetchCount: 50 });
    expect([explicit.prefetchCount, explicit.subscriberConcurrency]).toEqual([50, 8]);
    expect(createConfig({ subscriberConcurrency: undefined, prefetchCount: 3 }).subscriberConcurrency).toBe(
      3,
    );
  });
});

describe('parseConfigFile / loadConfigFile', () => {
  it('reads a Ruby deployment YAML file with Ruby keys', async () => {
    const ignored: IgnoredConfigKey[] = [];
    const path = fixture('beetle.yml');
    const input = await loadConfigFile(path, { onIgnoredKey: (i) => ignored.push(i) });
    expect(input).toEqual({
      systemName: 'orders',
      servers: ['rabbit1.example.com:5672', 'rabbit2.example.com:5672'],
      additionalSubscriptionServers: ['rabbit3.example.com:5671'],
      user: 'beetle',
      password: 's3cret',
      vhost: '/orders',
      serverConnectionOptions: {
        'rabbit2.example.com:5672': { user: 'beetle2', password: 's3cret2' },
        'rabbit3.example.com:5671': { vhost: '/legacy', tls: true },
      },
      redisServer: '/etc/beetle/redis-master',
      redisServers: 'redis1.example.com:6379,redis2.example.com:6379',
      redisDb: 4,
      redisFailoverTimeout: 300,
      redisStatusKeyExpiryInterval: 300,
      redisConfigurationClientIds: 'worker1.example.com,worker2.example.com',
      redisConfigurationMasterRetries: 5,
      deadLetteringEnabled: true,
      deadLetteringMsgTtl: 5000,
      lazyQueuesEnabled: false,
      heartbeat: 'server',
      publisherConnectTimeout: 2.5,
      prefetchCount: 10,
      brokerDefaultPolicy: { 'queue-mode': 'lazy' },
    });
    expect(ignored.map((i) => i.key)).toEqual(['log_file', 'tmpdir', 'api_port']);
    expect(ignored[0]).toMatchObject({ source: path });
    expect(ignored[2]?.reason).toContain('"1" + the AMQP port');

    const config = createConfig(input);
    expect(config.deadLetteringMsgTtl).toBe(5000);
    expect(brokerAddress(config, 'rabbit2.example.com:5672')).toMatchObject({
      user: 'beetle2',
      vhost: '/orders',
    });
  });

  it('reads JSON files (by extension), with snake_case and camelCase keys', async () => {
    const ignored: string[] = [];
    const input = await loadConfigFile(fixture('beetle.json'), { onIgnoredKey: (i) => ignored.push(i.key) });
    expect(input).toEqual({
      servers: ['rabbit1:5672', 'rabbit2:5672'],
      redisServer: 'redis1:6379',
      redisDb: 7,
      publisherConfirms: false,
      heartbeat: 30,
      connectionName: 'orders-api',
    });
    expect(ignored).toEqual(['logger']);
  });

  it('treats publisher_heartbeat as an alias of heartbeat, but not both at once', () => {
    expect(parseConfigFile('publisher_heartbeat: 10', 'yaml')).toEqual({ heartbeat: 10 });
    const error = configError(() =>
      parseConfigFile('heartbeat: 5\npublisher_heartbeat: 10', 'yaml', 'b.yml'),
    );
    expect(error.message).toBe(
      'b.yml sets option `heartbeat` twice: as `heartbeat` and `publisher_heartbeat`',
    );
    const twice = configError(() => parseConfigFile('{"redis_db": 1, "redisDb": 2}', 'json', 'b.json'));
    expect(twice.key).toBe('redisDb');
  });

  it('rejects ERB templates', async () => {
    const error = await loadConfigFile(fixture('erb.yml')).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigurationError);
    expect((error as Error).message).toMatch(/erb\.yml contains an ERB template .* render the file first/);
  });

  it('rejects unknown keys, naming key, file and the closest key', () => {
    const error = configError(() =>
      parseConfigFile('servers: a:5672\nredis_sever: r:6379\n', 'yaml', 'x.yml'),
    );
    expect(error.message).toBe('unknown option `redis_sever` in x.yml; did you mean `redis_server`?');
    expect(error.key).toBe('redis_sever');
  });

  it('rejects wrong types, naming key as written, file and expected type', () => {
    const error = configError(() => parseConfigFile('redis_db: four', 'yaml', 'x.yml'));
    expect(error.message).toBe(
      'option `redis_db` in x.yml must be a non-negative integer, got string "four"',
    );
    expect(error.key).toBe('redisDb');
    const nested = configError(() =>
      parseConfigFile('server_connection_options:\n  "a:5672":\n    ssl: maybe\n', 'yaml', 'x.yml'),
    );
    expect(nested.message).toContain('server_connection_options');
    expect(nested.message).toContain('a:5672.ssl');
    expect(nested.message).toContain('must be a boolean');
  });

  it('requires a mapping at the top level and valid syntax', () => {
    expect(configError(() => parseConfigFile('- a\n- b\n', 'yaml', 'x.yml')).message).toBe(
      'x.yml must contain a mapping at the top level, got an array',
    );
    expect(configError(() => parseConfigFile('', 'yaml', 'x.yml')).message).toContain('got null');
    const syntax = configError(() => parseConfigFile('{"servers": ', 'json', 'x.json'));
    expect(syntax.message).toMatch(/^cannot parse x\.json as JSON: /);
    expect(syntax.cause).toBeInstanceOf(SyntaxError);
    expect(configError(() => parseConfigFile('a: [', 'yaml', 'x.yml')).message).toMatch(
      /^cannot parse x\.yml/,
    );
  });

  it('reports unreadable files with the cause', async () => {
    const error = await loadConfigFile(fixture('missing.yml')).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigurationError);
    expect((error as Error).message).toContain('cannot read configuration file');
    expect((error as Error).message).toContain('missing.yml');
    expect((error as ConfigurationError).cause).toMatchObject({ code: 'ENOENT' });
  });
});

describe('configFromEnv', () => {
  it('parses BEETLE_<RUBY_NAME> variables to the option types', () => {
    const input = configFromEnv({
      BEETLE_SERVERS: 'a:5672, b:5672',
      BEETLE_REDIS_SERVER: '/etc/beetle/redis-master',
      BEETLE_REDIS_DB: '6',
      BEETLE_REDIS_PASSWORD: '',
      BEETLE_PUBLISHER_CONFIRMS: 'false',
      BEETLE_DEAD_LETTERING_ENABLED: '1',
      BEETLE_REDIS_TLS: 'TRUE',
      BEETLE_HEARTBEAT: 'server',
      BEETLE_SUBSCRIBER_HEARTBEAT: '30',
      BEETLE_PUBLISH_TIMEOUT: '2.5',
      BEETLE_SERVER_CONNECTION_OPTIONS: '{"a:5672": {"pass": "x", "ssl": true}}',
      BEETLE_BROKER_DEFAULT_POLICY: '{"queue-mode": "lazy"}',
      PATH: '/usr/bin',
    });
    expect(input).toEqual({
      servers: ['a:5672', 'b:5672'],
      redisServer: '/etc/beetle/redis-master',
      redisDb: 6,
      publisherConfirms: false,
      deadLetteringEnabled: true,
      redisTls: true,
      heartbeat: 'server',
      subscriberHeartbeat: 30,
      publishTimeout: 2.5,
      serverConnectionOptions: { 'a:5672': { password: 'x', tls: true } },
      brokerDefaultPolicy: { 'queue-mode': 'lazy' },
    });
    expect(configFromEnv({ BEETLE_HEARTBEAT: '10' })).toEqual({ heartbeat: 10 });
  });

  it.each([
    ['BEETLE_REDIS_DB', 'x', 'must be a non-negative integer, got string "x"'],
    ['BEETLE_REDIS_DB', '', 'must be a non-negative integer, got string ""'],
    ['BEETLE_REDIS_DB', '0x10', 'must be a non-negative integer'],
    ['BEETLE_PREFETCH_COUNT', '0', 'must be an integer between 1 and 65535, got number 0'],
    ['BEETLE_PUBLISHER_CONFIRMS', 'yes', 'must be true, false, 1 or 0, got "yes"'],
    ['BEETLE_HEARTBEAT', 'client', '"server" or an integer'],
    ['BEETLE_SERVER_CONNECTION_OPTIONS', '{bad', 'must be JSON'],
    ['BEETLE_BROKER_DEFAULT_POLICY', '[1]', 'must be an object, got an array'],
    ['BEETLE_SERVERS', 'a:0', 'invalid port'],
  ])('rejects %s=%j, naming the variable', (name, value, problem) => {
    const error = configError(() => configFromEnv({ [name]: value }));
    expect(error.message).toContain(`environment variable ${name} (option \``);
    expect(error.message).toContain(problem);
    expect(error.key).toBe(configOptions.find((o) => o.envName === name)?.name);
  });

  it('ignores other BEETLE_ variables, reporting them when asked', () => {
    const env = { BEETLE_CONSUL_TOKEN: 't', BEETLE_SERVRES: 'a:5672', BEETLE_SERVERS: 'b:5672' };
    expect(configFromEnv(env)).toEqual({ servers: ['b:5672'] });
    const ignored: IgnoredConfigKey[] = [];
    configFromEnv(env, { onIgnoredKey: (i) => ignored.push(i) });
    expect(ignored).toEqual([
      { key: 'BEETLE_CONSUL_TOKEN', source: 'environment', reason: 'not a Beetle client option' },
      {
        key: 'BEETLE_SERVRES',
        source: 'environment',
        reason: 'not a Beetle client option; did you mean BEETLE_SERVERS?',
      },
    ]);
  });

  it('defaults to process.env', () => {
    expect(configFromEnv()).toEqual(configFromEnv(process.env));
  });
});

describe('brokerAddress', () => {
  const config = createConfig({
    servers: 'rabbit1:5672, rabbit2:5671, rabbit3',
    user: 'app',
    password: 'pw',
    vhost: '/app',
    serverConnectionOptions: {
      'rabbit2:5671': { user: 'tls-user', pass: 'tls-pw', vhost: '/tls', ssl: true },
    },
  });

  it('uses the global credentials and port 5672 by default', () => {
    expect(brokerAddress(config, 'rabbit1:5672')).toEqual({
      server: 'rabbit1:5672',
      host: 'rabbit1',
      port: 5672,
      user: 'app',
      password: 'pw',
      vhost: '/app',
      tls: false,
      managementPort: 15672,
    });
    expect(brokerAddress(config, 'rabbit3')).toMatchObject({
      host: 'rabbit3',
      port: 5672,
      managementPort: 15672,
    });
  });

  it('applies per-server overrides (keyed by the exact server string)', () => {
    expect(brokerAddress(config, 'rabbit2:5671')).toEqual({
      server: 'rabbit2:5671',
      host: 'rabbit2',
      port: 5671,
      user: 'tls-user',
      password: 'tls-pw',
      vhost: '/tls',
      tls: true,
      managementPort: 15671,
    });
  });

  it('carries TLS settings of a server with tls (CA as a list), Bunny names as fallbacks', () => {
    const tlsConfig = createConfig({
      servers: 'r1:5671, r2:5671, r3:5671',
      serverConnectionOptions: {
        'r1:5671': {
          ssl: true,
          ca: '/etc/ca.pem',
          cert: '/etc/client.pem',
          key: '/etc/client-key.pem',
          passphrase: 'pw',
          servername: 'rabbit.internal',
          rejectUnauthorized: true,
        },
        'r2:5671': {
          ssl: true,
          tls_ca_certificates: ['/etc/a.pem', '/etc/b.pem'],
          tls_cert: '/etc/c.pem',
          tls_key: '/etc/k.pem',
          verify_peer: false,
        },
        'r3:5671': { ssl: true },
      },
    });
    expect(brokerAddress(tlsConfig, 'r1:5671').tlsOptions).toEqual({
      ca: ['/etc/ca.pem'],
      cert: '/etc/client.pem',
      key: '/etc/client-key.pem',
      passphrase: 'pw',
      servername: 'rabbit.internal',
      rejectUnauthorized: true,
    });
    expect(brokerAddress(tlsConfig, 'r2:5671').tlsOptions).toEqual({
      ca: ['/etc/a.pem', '/etc/b.pem'],
      cert: '/etc/c.pem',
      key: '/etc/k.pem',
      rejectUnauthorized: false,
    });
    expect(brokerAddress(tlsConfig, 'r3:5671')).not.toHaveProperty('tlsOptions');
  });

  it.each([
    [
      { tls: true, ca: [] },
      'serverConnectionOptions.a:5671.ca',
      'PEM text, a file path or a non-empty array',
    ],
    [{ tls: true, cert: 1 }, 'serverConnectionOptions.a:5671.cert', 'PEM text or a file path'],
    [
      { tls: true, rejectUnauthorized: 'no' },
      'serverConnectionOptions.a:5671.rejectUnauthorized',
      'a boolean',
    ],
    [{ tls: true, ca: 'x', tls_ca_certificates: ['y'] }, 'serverConnectionOptions.a:5671', 'both `ca` and'],
    // TLS material on a plain connection would be ignored: refused instead.
    [{ ca: '/etc/ca.pem' }, 'serverConnectionOptions.a:5671', 'sets TLS options (`ca`) but not `tls: true`'],
    [
      { ssl: false, tls_key: 'k', passphrase: 'p' },
      'serverConnectionOptions.a:5671',
      '(`tls_key`, `passphrase`)',
    ],
  ])('rejects the TLS settings %o', (options, key, problem) => {
    const input = { serverConnectionOptions: { 'a:5671': options } } as BeetleConfigInput;
    const error = configError(() => createConfig(input));
    expect(error.key).toBe(key);
    expect(error.message).toContain(problem);
  });

  it('does not echo the password of a URL given as a server', () => {
    const error = configError(() => createConfig({ servers: 'amqps://beetle:s3cret@rabbit:5671' }));
    expect(error.key).toBe('servers');
    expect(error.message).not.toContain('s3cret');
    expect(error.message).toContain('amqps://beetle:********@rabbit:5671');
    expect(error.message).toContain('credentials and TLS go into server_connection_options');
  });

  it('accepts bracketed IPv6 addresses and rejects invalid servers', () => {
    expect(brokerAddress(config, '[::1]:5673')).toMatchObject({
      host: '::1',
      port: 5673,
      managementPort: 15673,
    });
    expect(configError(() => brokerAddress(config, 'a:b:c')).key).toBe('servers');
  });
});
