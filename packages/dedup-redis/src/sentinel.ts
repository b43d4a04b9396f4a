import { ConfigurationError, NoRedisMasterError } from '@beetle/core';
import { errorMessage } from '@beetle/core/kit';
import { destroy, oneShotRedis } from './client.js';
import { isRedisAddress, parseRedisAddress } from './address.js';

/*
 * Redis Sentinel as the authority on the master: `redisServer` `sentinel://h1:26379,h2:26379/mymaster`, or the
 * `redisSentinels` / `redisSentinelMasterName` settings (which leave `redisServer` to Ruby consumers sharing
 * the configuration, e.g. a master file). The store connects through ioredis' SentinelConnector (see
 * `StoreClient`); the maintenance tools ask the Sentinels themselves (`askSentinels`).
 */

/** The Sentinels to ask and the master they know by `masterName`. */
export interface SentinelTarget {
  readonly sentinels: readonly { readonly host: string; readonly port: number }[];
  readonly masterName: string;
  /** AUTH password of the Sentinels (not of Redis). */
  readonly password: string | undefined;
}

/** Where the master is found, as the settings name it (options or configuration). */
export interface SentinelSettings {
  readonly redisServer: string;
  /** `host:port` each, or one comma-separated string. */
  readonly redisSentinels?: string | readonly string[] | undefined;
  readonly redisSentinelMasterName?: string | undefined;
  readonly redisSentinelPassword?: string | undefined;
}

const SCHEME = /^sentinel:\/\//i;

export const isSentinelUrl = (value: string): boolean => SCHEME.test(value.trim());

const sentinelList = (value: string | readonly string[]): string[] =>
  (typeof value === 'string' ? value.split(',') : [...value]).map((s) => s.trim()).filter((s) => s !== '');

function parseSentinels(key: string, list: readonly string[]): SentinelTarget['sentinels'] {
  if (list.length === 0) throw new ConfigurationError(`${key} names no Sentinel`, { key });
  return list.map((entry) => {
    if (!isRedisAddress(entry)) {
      throw new ConfigurationError(`${key}: a Sentinel must be host:port, got ${JSON.stringify(entry)}`, {
        key,
      });
    }
    return parseRedisAddress(entry);
  });
}

/** `sentinel://host1:26379,host2:26379/mymaster` (master name required). */
export function parseSentinelUrl(url: string, password?: string): SentinelTarget {
  const rest = url.trim().replace(SCHEME, '');
  const slash = rest.lastIndexOf('/');
  const masterName = slash === -1 ? '' : decodeURIComponent(rest.slice(slash + 1));
  if (slash === -1 || masterName === '') {
    throw new ConfigurationError(
      `redisServer ${JSON.stringify(url)}: expected sentinel://host:port[,host:port...]/<master name>`,
      { key: 'redisServer' },
    );
  }
  return {
    sentinels: parseSentinels('redisServer', sentinelList(rest.slice(0, slash))),
    masterName,
    password: password === '' ? undefined : password,
  };
}

/**
 * The Sentinel target of the settings, or `undefined` when the master is `redisServer` itself (`host:port`
 * or a master file). `redisSentinels` win over a `redisServer` that is not a sentinel URL; both at once is
 * ambiguous and rejected.
 */
export function sentinelTarget(settings: SentinelSettings): SentinelTarget | undefined {
  const listed = sentinelList(settings.redisSentinels ?? []);
  const password = settings.redisSentinelPassword;
  if (isSentinelUrl(settings.redisServer)) {
    if (listed.length > 0) {
      throw new ConfigurationError(
        'redisServer is a sentinel:// URL and redisSentinels is set as well: name the Sentinels once',
        { key: 'redisSentinels' },
      );
    }
    return parseSentinelUrl(settings.redisServer, password);
  }
  if (listed.length === 0) return undefined;
  const masterName = (settings.redisSentinelMasterName ?? 'mymaster').trim();
  if (masterName === '') {
    throw new ConfigurationError('redisSentinelMasterName must not be empty', {
      key: 'redisSentinelMasterName',
    });
  }
  return {
    sentinels: parseSentinels('redisSentinels', listed),
    masterName,
    password: password === '' ? undefined : password,
  };
}

/** `sentinel://h1:p1,h2:p2/name`, for messages (never with a password). */
export const describeSentinels = (target: SentinelTarget): string =>
  `sentinel://${target.sentinels.map(({ host, port }) => `${host}:${port}`).join(',')}/${target.masterName}`;

/**
 * The master's `host:port` as the first Sentinel that knows it answers (`SENTINEL get-master-addr-by-name`,
 * what ioredis' SentinelConnector asks too), trying the Sentinels in turn. Rejects with `NoRedisMasterError`
 * when none answers with an address.
 */
export async function askSentinels(
  target: SentinelTarget,
  timeouts: { readonly connectTimeoutMs: number; readonly commandTimeoutMs: number },
): Promise<string> {
  const problems: string[] = [];
  for (const { host, port } of target.sentinels) {
    const sentinel = oneShotRedis(
      { host, port, password: target.password, tls: undefined, connectTimeoutMs: timeouts.connectTimeoutMs },
      timeouts.commandTimeoutMs,
    );
    sentinel.on('error', () => undefined); // the outcome is the command's
    try {
      await sentinel.connect();
      const reply = await sentinel.call('SENTINEL', 'get-master-addr-by-name', target.masterName);
      if (Array.isArray(reply) && reply.length === 2) {
        const [masterHost, masterPort] = reply as unknown[];
        const address = `${String(masterHost)}:${String(masterPort)}`;
        if (isRedisAddress(address)) return address;
      }
      problems.push(`${host}:${port} knows no master ${JSON.stringify(target.masterName)}`);
    } catch (error) {
      problems.push(`${host}:${port}: ${errorMessage(error)}`);
    } finally {
      destroy(sentinel);
    }
  }
  throw new NoRedisMasterError(
    `no Sentinel of ${describeSentinels(target)} named a master: ${problems.join('; ')}`,
  );
}
