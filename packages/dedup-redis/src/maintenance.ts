// Over 400 lines: every maintenance command (gc, scans, key dumps, copy-keys) over one restartable connection.
import { randomUUID } from 'node:crypto';
import type { ConnectionOptions } from 'node:tls';
import type { Redis } from 'ioredis';
import { NoRedisMasterError, type BeetleConfig } from '@beetle/core';
import { errorMessage, KEY_SUFFIXES, parseKey, rubyToI, sleep } from '@beetle/core/kit';
import { endpointOf, oneShotRedis, redisTlsOptions } from './client.js';
import { isErrorReply, MasterChangedError, RedisReplyError, RedisUnavailableError } from './errors.js';
import { MasterWatcher } from './master.js';
import { scanBatches, type ScanLoopOptions } from './scan.js';

/*
 * The maintenance tools' side of Redis (the `beetle` command's gc, dump-expiries, delete-keys, copy-keys and
 * status, or a script of your own): plain commands on any database and on a second server, which the store's
 * API does not offer, on one ioredis connection per database that never reconnects or queues by itself (a
 * failure ends the run, and `withRestarts` starts it over), with replies as Buffers (values are binary-safe).
 */

/** A reply: an error reply of a pipeline comes back in place, as a `RedisReplyError`. */
export type RedisReply = string | number | Buffer | null | RedisReply[] | RedisReplyError;
export type RedisArg = string | number | Buffer;

export interface MaintenanceClientOptions {
  readonly db?: number;
  /** AUTH password (none when undefined or ''). */
  readonly password?: string | undefined;
  /** TLS: `true` for Node's defaults, or options (see `env`). */
  readonly tls?: boolean | ConnectionOptions;
  /** Where `OPENSSL_SSL_VERIFY_NONE=1` is looked for (Ruby Beetle's switch); default `process.env`. */
  readonly env?: NodeJS.ProcessEnv;
  /** Milliseconds. Default 5000. */
  readonly connectTimeoutMs?: number;
  /** Milliseconds a command may wait for its reply. Default 10 000. */
  readonly commandTimeoutMs?: number;
}

/** The configuration fields the maintenance tools read (Ruby names, seconds), as the store's. */
export type RedisMaintenanceConfig = Pick<
  BeetleConfig,
  | 'redisServer'
  | 'systemName'
  | 'redisPassword'
  | 'redisTls'
  | 'redisConnectTimeout'
  | 'redisReadTimeout'
  | 'redisFailoverTimeout'
> &
  Partial<Pick<BeetleConfig, 'redisSentinels' | 'redisSentinelMasterName' | 'redisSentinelPassword'>>;

function describe(value: RedisReply): string {
  if (value instanceof RedisReplyError) return `error ${value.message}`;
  if (Buffer.isBuffer(value)) return `bulk ${JSON.stringify(value.toString('utf8').slice(0, 40))}`;
  return JSON.stringify(value);
}

export const asString = (value: RedisReply): string | null => {
  if (value === null) return null;
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  if (typeof value === 'string') return value;
  if (typeof value === 'number') return String(value);
  throw new RedisReplyError(`unexpected reply ${describe(value)}`);
};

const asNumber = (value: RedisReply): number => {
  if (typeof value === 'number') return value;
  throw new RedisReplyError(`expected an integer reply, got ${describe(value)}`);
};

const asArray = (value: RedisReply): RedisReply[] => {
  if (Array.isArray(value)) return value;
  throw new RedisReplyError(`expected an array reply, got ${describe(value)}`);
};

/** The 8 keys of a message id `msgid:<queue>:<uuid>`. */
export const messageKeysOf = (msgId: string): string[] => KEY_SUFFIXES.map((suffix) => `${msgId}:${suffix}`);

/** A message's `expires` key with its value, as read by {@link RedisMaintenanceClient.expiries}. */
export interface ExpiryEntry {
  readonly key: string;
  readonly msgId: string;
  readonly queue: string;
  /** The stored value read with Ruby's `to_i` (unix seconds). */
  readonly expiresAt: number;
  /** The stored value as it is. */
  readonly raw: string;
}

/** What {@link RedisMaintenanceClient.copyMessages} wrote. */
export interface CopyCount {
  /** Messages with at least one key copied. */
  readonly messages: number;
  readonly keys: number;
  /** Keys copied with their TTL (SET PX). */
  readonly withTtl: number;
}

/**
 * The commands writing one message's keys to a target: MSET for keys without a TTL, SET PX for keys with one
 * (e.g. a `:status` key kept for `redisStatusKeyExpiryInterval`), so they expire there as on the source. Keys
 * gone meanwhile (no value, or PTTL -2/0) are left out.
 */
function copyCommands(
  msgId: string,
  values: RedisReply,
  ttls: readonly RedisReply[],
): { commands: RedisArg[][]; keys: number; withTtl: number } {
  if (!Array.isArray(values)) {
    throw values instanceof Error ? values : new RedisReplyError(`MGET of ${msgId} failed`);
  }
  const persistent: RedisArg[] = [];
  const expiring: RedisArg[][] = [];
  messageKeysOf(msgId).forEach((name, j) => {
    const value = values[j];
    const ttl = ttls[j];
    if (!Buffer.isBuffer(value)) return;
    if (ttl instanceof Error) throw ttl;
    if (ttl === -1) persistent.push(name, value);
    else if (typeof ttl === 'number' && ttl > 0) expiring.push(['SET', name, value, 'PX', ttl]);
  });
  const commands = persistent.length > 0 ? [['MSET', ...persistent], ...expiring] : expiring;
  return { commands, keys: persistent.length / 2 + expiring.length, withTtl: expiring.length };
}

/**
 * One connection for maintenance work on one database: commands by name, pipelines, the SCAN loop, and the
 * dedup store's key operations (expiries, deleting and copying messages' keys). Failures reject with
 * `RedisUnavailableError` (connection, timeout) or `RedisReplyError` (an error reply).
 */
export class RedisMaintenanceClient {
  private constructor(
    /** `host:port`. */
    readonly address: string,
    private readonly redis: Redis,
  ) {}

  /** Connects, authenticates and selects `db`. */
  static async connect(
    address: string,
    options: MaintenanceClientOptions = {},
  ): Promise<RedisMaintenanceClient> {
    const endpoint = endpointOf(
      address,
      {
        db: options.db ?? 0,
        password: options.password,
        tls: redisTlsOptions(options.tls, options.env),
        connectTimeoutMs: options.connectTimeoutMs ?? 5000,
      },
      { sni: true },
    );
    const redis = oneShotRedis(endpoint, options.commandTimeoutMs ?? 10_000);
    // Failures reach the caller through the pending command; the event only needs a listener.
    let lastError: Error | undefined;
    redis.on('error', (error: Error) => (lastError = error));
    const client = new RedisMaintenanceClient(address, redis);
    try {
      await redis.connect();
      // AUTH and SELECT went out on connect; a PING proves they were accepted (ioredis only emits their
      // errors), so a wrong password fails here rather than at the first command.
      await client.call('PING');
    } catch (error) {
      client.close();
      const cause = lastError ?? error;
      if (cause instanceof RedisReplyError) throw cause;
      if (isErrorReply(cause)) throw new RedisReplyError(errorMessage(cause), { cause });
      throw new RedisUnavailableError(`cannot connect to Redis ${address}: ${errorMessage(cause)}`, {
        cause,
      });
    }
    return client;
  }

  /**
   * Connects to `address` with the configuration's password, TLS and timeouts (`overrides` win): the
   * connection of a maintenance run.
   */
  static open(
    config: RedisMaintenanceConfig,
    address: string,
    db: number,
    overrides: MaintenanceClientOptions = {},
  ): Promise<RedisMaintenanceClient> {
    return RedisMaintenanceClient.connect(address, {
      db,
      password: config.redisPassword,
      tls: config.redisTls,
      connectTimeoutMs: config.redisConnectTimeout * 1000,
      commandTimeoutMs: Math.max(10_000, config.redisReadTimeout * 1000),
      ...overrides,
    });
  }

  /** Sends one command; an error reply rejects with `RedisReplyError`. */
  async call(...args: RedisArg[]): Promise<RedisReply> {
    const [name, ...rest] = args;
    try {
      return ((await this.redis.callBuffer(String(name), ...rest)) as RedisReply | undefined) ?? null;
    } catch (error) {
      throw this.translate(error);
    }
  }

  /** Sends the commands in one write; error replies are returned in place, not thrown. */
  async pipeline(commands: readonly (readonly RedisArg[])[]): Promise<RedisReply[]> {
    if (commands.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const [name, ...rest] of commands) pipeline.callBuffer(String(name), ...rest);
    let results: [Error | null, unknown][] | null;
    try {
      results = await pipeline.exec();
    } catch (error) {
      throw this.translate(error);
    }
    if (results === null) throw new RedisUnavailableError(`${this.address}: the pipeline was not executed`);
    return results.map(([error, value]) => {
      if (error === null) return (value as RedisReply | undefined) ?? null;
      const translated = this.translate(error);
      if (translated instanceof RedisReplyError) return translated;
      throw translated;
    });
  }

  async get(key: string): Promise<string | null> {
    return asString(await this.call('GET', key));
  }

  async set(key: string, value: RedisArg): Promise<void> {
    await this.call('SET', key, value);
  }

  async mget(keys: readonly string[]): Promise<(string | null)[]> {
    if (keys.length === 0) return [];
    return asArray(await this.call('MGET', ...keys)).map(asString);
  }

  /** MGET with binary-safe values. */
  async mgetBuffers(keys: readonly string[]): Promise<(Buffer | null)[]> {
    if (keys.length === 0) return [];
    return asArray(await this.call('MGET', ...keys)).map((v) =>
      v === null ? null : Buffer.isBuffer(v) ? v : Buffer.from(asString(v) ?? ''),
    );
  }

  async del(keys: readonly string[]): Promise<number> {
    if (keys.length === 0) return 0;
    return asNumber(await this.call('DEL', ...keys));
  }

  async dbsize(): Promise<number> {
    return asNumber(await this.call('DBSIZE'));
  }

  /** One SCAN call. */
  async scan(cursor: string, match: string, count: number): Promise<[string, string[]]> {
    const [next, keys] = asArray(await this.call('SCAN', cursor, 'MATCH', match, 'COUNT', count));
    return [asString(next ?? null) ?? '0', asArray(keys ?? []).map((k) => asString(k) ?? '')];
  }

  /** The batches of a full SCAN for `match`, `count` keys per call (see `scanBatches`). */
  scanKeys(match: string, count: number, options: ScanLoopOptions = {}): AsyncIterable<string[]> {
    return scanBatches((cursor) => this.scan(cursor, match, count), options);
  }

  /** The `expires` keys among `keys` with their values (one MGET; keys deleted meanwhile are left out). */
  async expiries(keys: readonly string[]): Promise<ExpiryEntry[]> {
    const entries = keys.flatMap((key) => {
      const parts = parseKey(key);
      return parts?.suffix === 'expires' ? [{ key, msgId: parts.msgId, queue: parts.queue }] : [];
    });
    const values = await this.mget(entries.map((e) => e.key));
    return entries.flatMap((entry, i) => {
      const raw = values[i];
      return raw === null || raw === undefined ? [] : [{ ...entry, raw, expiresAt: rubyToI(raw) }];
    });
  }

  /** Which of `msgIds` still have an `expires` key (one EXISTS each, in one pipeline). */
  async withExpiry(msgIds: readonly string[]): Promise<Set<string>> {
    const exists = await this.pipeline(msgIds.map((id) => ['EXISTS', `${id}:expires`]));
    return new Set(msgIds.filter((_, i) => exists[i] === 1));
  }

  /** Deletes all 8 keys of each message (one DEL per message, in one pipeline). */
  async deleteMessages(msgIds: readonly string[]): Promise<void> {
    if (msgIds.length > 0) await this.pipeline(msgIds.map((id) => ['DEL', ...messageKeysOf(id)]));
  }

  /** Deletes each key on its own; for each, whether it existed. */
  async deleteEach(keys: readonly string[]): Promise<boolean[]> {
    const deleted = await this.pipeline(keys.map((key) => ['DEL', key]));
    return keys.map((_, i) => deleted[i] === 1);
  }

  /**
   * Whether `other` reads the keyspace this connection writes (same server and database), however it was
   * named (`localhost` vs `127.0.0.1`, a DNS alias, a proxy): a random probe key written here is visible
   * through `other`. It expires by itself should the DEL not get through.
   */
  async sameKeyspaceAs(other: RedisMaintenanceClient): Promise<boolean> {
    const probe = `beetle:copy-keys:probe:${randomUUID()}`;
    await this.call('SET', probe, '1', 'PX', 60_000);
    try {
      return (await other.call('EXISTS', probe)) === 1;
    } finally {
      await this.call('DEL', probe);
    }
  }

  /**
   * Copies the existing keys of each message to `destination`, keys with a TTL keeping it (PTTL here, SET PX
   * there). An error reply of the target rejects.
   */
  async copyMessages(destination: RedisMaintenanceClient, msgIds: readonly string[]): Promise<CopyCount> {
    const stride = 1 + KEY_SUFFIXES.length;
    const fetched = await this.pipeline(
      msgIds.flatMap((id) => {
        const names = messageKeysOf(id);
        return [['MGET', ...names], ...names.map((name) => ['PTTL', name])];
      }),
    );
    const commands: RedisArg[][] = [];
    let messages = 0;
    let keys = 0;
    let withTtl = 0;
    msgIds.forEach((id, i) => {
      const at = i * stride;
      const copy = copyCommands(id, fetched[at] ?? null, fetched.slice(at + 1, at + stride));
      if (copy.keys === 0) return;
      commands.push(...copy.commands);
      messages++;
      keys += copy.keys;
      withTtl += copy.withTtl;
    });
    const replies = await destination.pipeline(commands);
    const failed = replies.find((r) => r instanceof Error);
    if (failed instanceof Error) throw failed;
    return { messages, keys, withTtl };
  }

  /** Closes the connection; pending commands reject. */
  close(): void {
    this.redis.disconnect();
  }

  private translate(error: unknown): Error {
    // A master demoted under the run (a Sentinel failover): start over on the new one.
    if (isErrorReply(error) && /^READONLY\b/.test(errorMessage(error))) {
      return new RedisUnavailableError(`${this.address}: ${errorMessage(error)}`, { cause: error });
    }
    if (isErrorReply(error)) return new RedisReplyError(errorMessage(error), { cause: error });
    if (error instanceof RedisUnavailableError || error instanceof RedisReplyError) return error;
    return new RedisUnavailableError(`${this.address}: ${errorMessage(error)}`, { cause: error });
  }
}

/** Opens the run's connection to database `db` of the current master (closed when the run ends). */
export type MaintenanceConnect = (db: number) => Promise<RedisMaintenanceClient>;

export interface RestartOptions {
  /** Where `OPENSSL_SSL_VERIFY_NONE` is looked for; default `process.env`. */
  readonly env?: NodeJS.ProcessEnv;
  /** Told about each start-over, with the error that caused it. */
  readonly onRestart?: (error: unknown) => void;
}

/**
 * Runs `run` against the current master; when the master changes, starts over (after a second); when there
 * is no master or the connection fails, starts over every second until `redisFailoverTimeout` has passed
 * since the first of these failures in a row, then rejects with the last one. Connections `connect` opened
 * are closed after each attempt.
 */
export async function withRestarts<T>(
  config: RedisMaintenanceConfig,
  run: (watcher: MasterWatcher, connect: MaintenanceConnect) => Promise<T>,
  options: RestartOptions = {},
): Promise<T> {
  let failingSince: number | undefined;
  for (;;) {
    const clients: RedisMaintenanceClient[] = [];
    try {
      const watcher = await MasterWatcher.create(config);
      const connect = async (db: number): Promise<RedisMaintenanceClient> => {
        const client = await RedisMaintenanceClient.open(config, watcher.master, db, { env: options.env });
        clients.push(client);
        return client;
      };
      return await run(watcher, connect);
    } catch (error) {
      // NoRedisMasterError: e.g. the Go daemons rewrite the master file non-atomically (briefly empty).
      // MasterChangedError is a RedisUnavailableError.
      const retriable = error instanceof RedisUnavailableError || error instanceof NoRedisMasterError;
      if (!retriable) throw error;
      // A master change is progress (a failover happened); only consecutive connection failures count.
      if (error instanceof MasterChangedError) failingSince = undefined;
      else failingSince ??= Date.now();
      if (failingSince !== undefined && Date.now() - failingSince >= config.redisFailoverTimeout * 1000)
        throw error;
      options.onRestart?.(error);
      await sleep(1000, true);
    } finally {
      for (const client of clients) client.close();
    }
  }
}
