import { readFile } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import { NoRedisMasterError, type BeetleConfig } from '@beetle/core';
import { isRedisAddress, parseRedisAddress, parseRedisMasterFile } from '@beetle/dedup-redis';

/**
 * A small RESP2 client for the maintenance commands (gc, dump-expiries, delete-keys, copy-keys, status): they
 * need plain commands on arbitrary databases (SCAN, MGET, DEL, EXISTS, MSET, DBSIZE, db 0's `beetle:lastgc`)
 * and a second server, which the dedup store's API does not offer. Commands are pipelined on one socket; a
 * command without a reply within the timeout destroys the connection (replies could no longer be matched).
 */

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
  /** Milliseconds. */
  readonly connectTimeoutMs?: number;
  /** Milliseconds a command may wait for its reply. */
  readonly commandTimeoutMs?: number;
}

interface Pending {
  resolve(value: RespValue): void;
  reject(error: Error): void;
}

const CRLF = Buffer.from('\r\n');

function encodeCommand(args: readonly RespArg[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const data = Buffer.isBuffer(arg) ? arg : Buffer.from(String(arg), 'utf8');
    parts.push(Buffer.from(`$${data.length}\r\n`), data, CRLF);
  }
  return Buffer.concat(parts);
}

/** Parses one reply at `pos`; `undefined` when the buffer does not hold all of it yet. */
function parseReply(buf: Buffer, pos: number): { value: RespValue; next: number } | undefined {
  if (pos >= buf.length) return undefined;
  const end = buf.indexOf(CRLF, pos);
  if (end === -1) return undefined;
  const type = String.fromCharCode(buf[pos]!);
  const line = buf.toString('utf8', pos + 1, end);
  const next = end + 2;
  switch (type) {
    case '+':
      return { value: line, next };
    case '-':
      return { value: new RedisReplyError(line), next };
    case ':':
      return { value: Number(line), next };
    case '$': {
      const length = Number(line);
      if (length < 0) return { value: null, next };
      if (buf.length < next + length + 2) return undefined;
      return { value: buf.subarray(next, next + length), next: next + length + 2 };
    }
    case '*': {
      const count = Number(line);
      if (count < 0) return { value: null, next };
      const items: RespValue[] = [];
      let at = next;
      for (let i = 0; i < count; i++) {
        const item = parseReply(buf, at);
        if (item === undefined) return undefined;
        items.push(item.value);
        at = item.next;
      }
      return { value: items, next: at };
    }
    default:
      throw new RedisConnectionError(`unexpected RESP reply type ${JSON.stringify(type)}`);
  }
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

function describe(value: RespValue): string {
  if (value instanceof RedisReplyError) return `error ${value.message}`;
  if (Buffer.isBuffer(value)) return `bulk ${JSON.stringify(value.toString('utf8').slice(0, 40))}`;
  return JSON.stringify(value);
}

export class RespClient {
  private buffer: Buffer = Buffer.alloc(0);
  private readonly pending: Pending[] = [];
  private failure: Error | undefined;
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    readonly address: string,
    private readonly socket: net.Socket,
    private readonly commandTimeoutMs: number,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (error: Error) => this.fail(new RedisConnectionError(`${address}: ${error.message}`)));
    socket.on('close', () => this.fail(new RedisConnectionError(`${address}: connection closed`)));
  }

  /** Connects, authenticates and selects `db`. */
  static async connect(address: string, options: RespClientOptions = {}): Promise<RespClient> {
    const { host, port } = parseRedisAddress(address);
    const connectTimeoutMs = options.connectTimeoutMs ?? 5000;
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const onConnect = (): void => {
        clearTimeout(timer);
        socket.off('error', onError);
        resolve(socket);
      };
      const onError = (error: Error): void => {
        clearTimeout(timer);
        socket.destroy();
        reject(new RedisConnectionError(`cannot connect to Redis ${address}: ${error.message}`));
      };
      const socket: net.Socket = options.tls
        ? tls.connect({
            host,
            port,
            servername: net.isIP(host) === 0 ? host : undefined,
            rejectUnauthorized: process.env['OPENSSL_SSL_VERIFY_NONE'] !== '1',
          })
        : net.connect({ host, port });
      const timer = setTimeout(
        () => onError(new Error(`no connection within ${connectTimeoutMs} ms`)),
        connectTimeoutMs,
      );
      socket.once(options.tls ? 'secureConnect' : 'connect', onConnect);
      socket.once('error', onError);
    });
    socket.setNoDelay(true);
    const client = new RespClient(address, socket, options.commandTimeoutMs ?? 10_000);
    try {
      if (options.password !== undefined && options.password !== '')
        await client.call('AUTH', options.password);
      if (options.db !== undefined && options.db !== 0) await client.call('SELECT', options.db);
    } catch (error) {
      client.close();
      throw error;
    }
    return client;
  }

  /** Sends one command; an error reply rejects with `RedisReplyError`. */
  async call(...args: RespArg[]): Promise<RespValue> {
    const [reply] = await this.pipeline([args]);
    if (reply instanceof RedisReplyError) throw reply;
    return reply ?? null;
  }

  /** Sends the commands in one write; error replies are returned in place, not thrown. */
  pipeline(commands: readonly (readonly RespArg[])[]): Promise<RespValue[]> {
    if (commands.length === 0) return Promise.resolve([]);
    if (this.failure) return Promise.reject(this.failure);
    const replies = commands.map(
      () =>
        new Promise<RespValue>((resolve, reject) => {
          this.pending.push({ resolve, reject });
        }),
    );
    this.socket.write(Buffer.concat(commands.map(encodeCommand)));
    this.armTimer();
    return Promise.all(replies);
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
    this.fail(new RedisConnectionError(`${this.address}: connection closed by the client`));
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    let pos = 0;
    try {
      while (this.pending.length > 0) {
        const reply = parseReply(this.buffer, pos);
        if (reply === undefined) break;
        pos = reply.next;
        this.pending.shift()?.resolve(reply.value);
      }
    } catch (error) {
      this.fail(error as Error);
      return;
    }
    this.buffer = this.buffer.subarray(pos);
    if (this.buffer.length === 0) this.buffer = Buffer.alloc(0);
    this.armTimer();
  }

  private armTimer(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length === 0) return;
    this.timer = setTimeout(() => {
      this.fail(
        new RedisConnectionError(`${this.address}: no reply within ${this.commandTimeoutMs / 1000}s`),
      );
    }, this.commandTimeoutMs);
  }

  private fail(error: Error): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.failure ??= error;
    for (const pending of this.pending.splice(0)) pending.reject(this.failure);
    if (!this.socket.destroyed) this.socket.destroy();
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
