import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { Redis, ReplyError as UntypedReplyError } from 'ioredis';
import { NoRedisMasterError, type BeetleConfig } from '@beetle/core';
import { isRedisAddress, parseRedisAddress, parseRedisMasterFile } from '@beetle/dedup-redis';
import { errorMessage } from './output.js';

/**
 * The maintenance commands (gc, dump-expiries, delete-keys, copy-keys, status) need plain commands on arbitrary
 * databases (SCAN, MGET, DEL, EXISTS, MSET, DBSIZE, db 0's `beetle:lastgc`) and a second server, which the
 * dedup store's API does not offer: a thin wrapper around one ioredis connection that never reconnects or
 * queues by itself (a failure goes to `withRestarts`), with replies as Buffers (values are binary-safe).
 */

/** ioredis' error reply class, from the untyped redis-errors package. */
const ReplyError = UntypedReplyError as unknown as new (...args: never[]) => Error;

export type RespValue = string | number | Buffer | null | RespValue[] | RedisReplyError;
export type RespArg = string | number | Buffer;

/** An error reply (`-ERR ...`). */
export class RedisReplyError extends Error {
  override readonly name = 'RedisReplyError';
}

/** The connection failed, closed or timed out. */
export class RedisConnectionError extends Error {
  override readonly name = 'RedisConnectionError';
  readonly reason = 'redis';
}

export interface RespClientOptions {
  readonly db?: number;
  readonly password?: string | undefined;
  readonly tls?: boolean;
  /** Verify the server's certificate (default: unless `OPENSSL_SSL_VERIFY_NONE=1`, as Ruby Beetle). */
  readonly rejectUnauthorized?: boolean;
  /** Milliseconds. */
  readonly connectTimeoutMs?: number;
  /** Milliseconds a command may wait for its reply. */
  readonly commandTimeoutMs?: number;
}

function describe(value: RespValue): string {
  if (value instanceof RedisReplyError) return `error ${value.message}`;
  if (Buffer.isBuffer(value)) return `bulk ${JSON.stringify(value.toString('utf8').slice(0, 40))}`;
  return JSON.stringify(value);
}

export const asString = (value: RespValue): string | null => {
  if (value === null) return null;
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  if (typeof value === 'string') return value;
  if (typeof value === 'number') return String(value);
  throw new RedisConnectionError(`unexpected reply ${describe(value)}`);
};

const asNumber = (value: RespValue): number => {
  if (typeof value === 'number') return value;
  throw new RedisConnectionError(`expected an integer reply, got ${describe(value)}`);
};

const asArray = (value: RespValue): RespValue[] => {
  if (Array.isArray(value)) return value;
  throw new RedisConnectionError(`expected an array reply, got ${describe(value)}`);
};

/** Ruby Beetle's switch: `OPENSSL_SSL_VERIFY_NONE=1` turns certificate verification off for Redis TLS. */
export const verifiesTls = (env: NodeJS.ProcessEnv): boolean => env['OPENSSL_SSL_VERIFY_NONE'] !== '1';

export class RespClient {
  private constructor(
    readonly address: string,
    private readonly redis: Redis,
  ) {}

  /** Connects, authenticates and selects `db`. */
  static async connect(address: string, options: RespClientOptions = {}): Promise<RespClient> {
    const { host, port } = parseRedisAddress(address);
    const redis = new Redis({
      host,
      port,
      db: options.db ?? 0,
      ...(options.password !== undefined && options.password !== '' ? { password: options.password } : {}),
      ...(options.tls
        ? {
            tls: {
              servername: net.isIP(host) === 0 ? host : undefined,
              rejectUnauthorized: options.rejectUnauthorized ?? verifiesTls(process.env),
            },
          }
        : {}),
      connectTimeout: options.connectTimeoutMs ?? 5000,
      commandTimeout: options.commandTimeoutMs ?? 10_000,
      lazyConnect: true,
      enableReadyCheck: false,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      disableClientInfo: true,
      protocol: 2, // RESP2, like the store (see dedup-redis' connection)
    });
    // Failures reach the caller through the pending command; the event only needs a listener.
    let lastError: Error | undefined;
    redis.on('error', (error: Error) => (lastError = error));
    const client = new RespClient(address, redis);
    try {
      await redis.connect();
      // AUTH and SELECT went out on connect; a PING proves they were accepted (ioredis only emits their
      // errors), so a wrong password fails here rather than at the first command.
      await client.call('PING');
    } catch (error) {
      client.close();
      const cause = lastError ?? error;
      if (cause instanceof RedisReplyError) throw cause;
      if (cause instanceof ReplyError) throw new RedisReplyError(cause.message, { cause });
      throw new RedisConnectionError(`cannot connect to Redis ${address}: ${errorMessage(cause)}`, { cause });
    }
    return client;
  }

  /** Sends one command; an error reply rejects with `RedisReplyError`. */
  async call(...args: RespArg[]): Promise<RespValue> {
    const [name, ...rest] = args;
    try {
      return ((await this.redis.callBuffer(String(name), ...rest)) as RespValue | undefined) ?? null;
    } catch (error) {
      throw this.translate(error);
    }
  }

  /** Sends the commands in one write; error replies are returned in place, not thrown. */
  async pipeline(commands: readonly (readonly RespArg[])[]): Promise<RespValue[]> {
    if (commands.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const [name, ...rest] of commands) pipeline.callBuffer(String(name), ...rest);
    let results: [Error | null, unknown][] | null;
    try {
      results = await pipeline.exec();
    } catch (error) {
      throw this.translate(error);
    }
    if (results === null) throw new RedisConnectionError(`${this.address}: the pipeline was not executed`);
    return results.map(([error, value]) => {
      if (error === null) return (value as RespValue | undefined) ?? null;
      const translated = this.translate(error);
      if (translated instanceof RedisReplyError) return translated;
      throw translated;
    });
  }

  async get(key: string): Promise<string | null> {
    return asString(await this.call('GET', key));
  }

  async set(key: string, value: RespArg): Promise<void> {
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

  async scan(cursor: string, match: string, count: number): Promise<[string, string[]]> {
    const [next, keys] = asArray(await this.call('SCAN', cursor, 'MATCH', match, 'COUNT', count));
    return [asString(next ?? null) ?? '0', asArray(keys ?? []).map((k) => asString(k) ?? '')];
  }

  /** Closes the connection; pending commands reject. */
  close(): void {
    this.redis.disconnect();
  }

  private translate(error: unknown): Error {
    if (error instanceof ReplyError) return new RedisReplyError(error.message, { cause: error });
    if (error instanceof RedisConnectionError) return error;
    return new RedisConnectionError(`${this.address}: ${errorMessage(error)}`, { cause: error });
  }
}

/** The Redis settings of the configuration the maintenance commands use. */
export type RedisSettings = Pick<
  BeetleConfig,
  'redisServer' | 'systemName' | 'redisPassword' | 'redisTls' | 'redisConnectTimeout' | 'redisReadTimeout'
>;

/**
 * The current master: `redisServer` itself when it is `host:port`, else the line of the Redis master file for
 * `systemName` (reference §4.8). Rejects with `NoRedisMasterError` when there is none.
 */
export async function resolveRedisMaster(settings: RedisSettings): Promise<string> {
  const server = settings.redisServer.trim();
  if (isRedisAddress(server)) return server;
  let content: string;
  try {
    content = await readFile(server, 'utf8');
  } catch (error) {
    throw new NoRedisMasterError(`cannot read the Redis master file ${server}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const master = parseRedisMasterFile(content, settings.systemName);
  if (master === undefined || !isRedisAddress(master)) {
    throw new NoRedisMasterError(
      `the Redis master file ${server} names no valid master for system ${JSON.stringify(settings.systemName)}`,
    );
  }
  return master;
}

/** Connects to `address` with the configured password, TLS and timeouts. */
export function connectRedis(
  settings: RedisSettings,
  address: string,
  db: number,
  overrides: RespClientOptions = {},
): Promise<RespClient> {
  return RespClient.connect(address, {
    db,
    password: settings.redisPassword,
    tls: settings.redisTls,
    connectTimeoutMs: settings.redisConnectTimeout * 1000,
    commandTimeoutMs: Math.max(10_000, settings.redisReadTimeout * 1000),
    ...overrides,
  });
}
