import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from '@beetle/core';
import { coalesceWrites } from '@beetle/core/kit';
import { parseRedisAddress } from './address.js';
import { SCRIPTS, type ScriptCommands } from './scripts.js';
import type { SentinelTarget } from './sentinel.js';

/** A client with the store's scripts defined on it. */
export type ScriptedRedis = Redis & ScriptCommands;

/**
 * Ruby Beetle's TLS rule for Redis: `true` means Node's defaults, options are taken as they are, and
 * `OPENSSL_SSL_VERIFY_NONE=1` in `env` turns certificate verification off unless the options set it.
 */
export function redisTlsOptions(
  tls: boolean | ConnectionOptions | undefined,
  env: NodeJS.ProcessEnv = process.env,
): ConnectionOptions | undefined {
  if (tls === undefined || tls === false) return undefined;
  const options: ConnectionOptions = tls === true ? {} : { ...tls };
  if (env['OPENSSL_SSL_VERIFY_NONE'] === '1' && options.rejectUnauthorized === undefined) {
    options.rejectUnauthorized = false;
  }
  return options;
}

/** Where and how a connection logs in. */
export interface RedisEndpoint {
  readonly host: string;
  readonly port: number;
  readonly db?: number;
  /** `undefined` or '' for none. */
  readonly password: string | undefined;
  readonly tls: ConnectionOptions | undefined;
  /** Milliseconds. */
  readonly connectTimeoutMs: number;
}

/**
 * What every connection of this package shares. RESP2, as redis-rb speaks to the same Redis: the scripts'
 * replies keep their shapes, and a connect is the TCP handshake alone (ioredis 6 defaults to RESP3, whose
 * HELLO a stalled server never answers; nor is ioredis 6's MAINT_NOTIFICATIONS handshake sent, so no
 * connection handoffs hold commands back). `maxRetriesPerRequest: 0`: ioredis rejects the commands in flight
 * when their connection drops (else they wait for the reconnect), so the caller decides about each of them.
 */
const commonOptions = (endpoint: RedisEndpoint): RedisOptions => ({
  host: endpoint.host,
  port: endpoint.port,
  ...(endpoint.db === undefined ? {} : { db: endpoint.db }),
  ...(endpoint.password === undefined || endpoint.password === '' ? {} : { password: endpoint.password }),
  ...(endpoint.tls === undefined ? {} : { tls: endpoint.tls }),
  connectTimeout: endpoint.connectTimeoutMs,
  maxRetriesPerRequest: 0,
  disableClientInfo: true,
  protocol: 2,
});

/**
 * A connection that is used once and never reconnects (the stall probe, the maintenance tools): connected
 * by the caller (`lazyConnect`), ready as soon as connected, and every command bounded by `commandTimeoutMs`.
 */
export function oneShotRedis(endpoint: RedisEndpoint, commandTimeoutMs: number): Redis {
  return new Redis({
    ...commonOptions(endpoint),
    commandTimeout: commandTimeoutMs,
    lazyConnect: true,
    enableReadyCheck: false,
    enableOfflineQueue: false,
    retryStrategy: () => null,
  });
}

/** `endpoint` of `address` with the TLS server name (SNI) set to its host, unless that is an IP address. */
export function endpointOf(
  address: string,
  settings: Omit<RedisEndpoint, 'host' | 'port'>,
  { sni }: { readonly sni: boolean },
): RedisEndpoint {
  const { host, port } = parseRedisAddress(address);
  const tls =
    sni && settings.tls !== undefined
      ? { servername: isIP(host) === 0 ? host : undefined, ...settings.tls }
      : settings.tls;
  return { ...settings, host, port, tls };
}

/** Drops a connection now: `end()` alone waits for the peer's FIN, which a frozen server never sends. */
export function destroy(client: Redis): void {
  client.disconnect();
  (client.stream as Redis['stream'] | undefined)?.destroy();
}

export interface StoreClientSettings extends Omit<RedisEndpoint, 'host' | 'port'> {
  /** Milliseconds a probe's PING may take (the store's read timeout). */
  readonly readTimeoutMs: number;
  /** Milliseconds between reconnects, at most; also how long a polite `quit` may take. */
  readonly retryIntervalMs: number;
  readonly logger: Logger;
}

/** Where a store client connects: one server, or the master the Sentinels name (at every connect). */
export type StoreTarget = { readonly address: string } | { readonly sentinel: SentinelTarget };

/**
 * ioredis' own Sentinel support: every connect asks the Sentinels for the master and checks its role (the
 * ready check's INFO), `failoverDetector` drops the connection when a Sentinel announces `+switch-master`,
 * and a READONLY reply (a master demoted under us) reconnects without resending: the command's rejection
 * reaches `RedisConnection`, which sends it again once connected to the new master.
 */
const sentinelOptions = (target: SentinelTarget, settings: StoreClientSettings): RedisOptions => ({
  sentinels: target.sentinels.map(({ host, port }) => ({ host, port })),
  name: target.masterName,
  role: 'master',
  ...(target.password === undefined ? {} : { sentinelPassword: target.password }),
  sentinelCommandTimeout: settings.readTimeoutMs,
  sentinelRetryStrategy: (times: number) => Math.min(times * 100, settings.retryIntervalMs),
  enableTLSForSentinelMode: settings.tls !== undefined,
  failoverDetector: true,
  reconnectOnError: (error: Error) => (/^READONLY\b/.test(error.message) ? 1 : false),
});

/**
 * The store's connection to one server: an ioredis client with the store's scripts that reconnects by
 * itself but neither queues, times out nor resends commands (that is `RedisConnection`'s job, see there),
 * when it last received data, a shared signal for its next 'ready', a probe of its server, and its end.
 */
export class StoreClient {
  readonly redis: ScriptedRedis;
  /** When the connection last received data (epoch ms), to tell a stalled server from a dead connection. */
  lastDataAt = 0;
  /** `host:port` of the server the connection reached last (with Sentinel: the master it was told). */
  connectedAddress: string | undefined;
  private readySignal: Promise<void> | undefined;
  private probing: Promise<boolean> | undefined;

  constructor(
    readonly target: StoreTarget,
    private readonly settings: StoreClientSettings,
    onError: (error: Error) => void,
  ) {
    const sentinel = 'sentinel' in target ? target.sentinel : undefined;
    if (sentinel === undefined) this.connectedAddress = (target as { address: string }).address;
    const endpoint =
      sentinel === undefined
        ? endpointOf((target as { address: string }).address, settings, { sni: false })
        : { ...settings, host: '', port: 0 };
    const base = commonOptions(endpoint);
    if (sentinel !== undefined) {
      // The master's address comes from the Sentinels at each connect.
      delete base.host;
      delete base.port;
    }
    // ioredis 6 would, by default: queue commands while disconnected without bound (`enableOfflineQueue`),
    // resend the commands in flight after a reconnect unmarked (`autoResendUnfulfilledCommands`: a resent
    // claim would find its own first sighting), and with `commandTimeout` give up on a command a stalled
    // server still runs, with a timer per command. RedisConnection waits, bounds and resends instead.
    // Auto-pipelining is off: the commands of one tick leave in one write anyway (coalesceWrites below), and
    // it costs more per call (a pipeline, and two more promises per command).
    const redis = new Redis({
      ...base,
      ...(sentinel === undefined ? {} : sentinelOptions(sentinel, settings)),
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      enableAutoPipelining: false,
      retryStrategy: (times: number) => Math.min(times * 100, settings.retryIntervalMs),
    }) as ScriptedRedis;
    for (const [name, script] of Object.entries(SCRIPTS)) {
      // Without numberOfKeys, ioredis takes the number of keys as the call's first argument.
      redis.defineCommand(
        name,
        script.numberOfKeys < 0
          ? { lua: script.lua }
          : { numberOfKeys: script.numberOfKeys, lua: script.lua },
      );
    }
    const received = (): void => {
      this.lastDataAt = Date.now();
    };
    redis.on('connect', () => {
      this.lastDataAt = Date.now();
      const { remoteAddress, remotePort } = redis.stream;
      if (sentinel !== undefined && remoteAddress !== undefined && remotePort !== undefined) {
        this.connectedAddress = `${remoteAddress}:${remotePort}`;
      }
      redis.stream.on('data', received);
      // Flushed in the check phase (setImmediate), as ioredis' auto-pipelining did: the store's batches,
      // sent at the end of a tick, leave in the same write. The store itself holds back calls that may delete
      // keys until the broker acks are written (its `AckFlush`).
      coalesceWrites(redis.stream, setImmediate);
    });
    redis.on('error', (error: Error) => {
      onError(error);
      settings.logger.debug({ err: error, server: this.server }, 'Redis dedup store: connection error');
    });
    this.redis = redis;
  }

  /** ioredis' connection status, read fresh (TypeScript would keep a narrowed value across awaits). */
  get status(): string {
    return this.redis.status;
  }

  /** `host:port` as the client connects to it (for messages). */
  get server(): string {
    return this.connectedAddress ?? 'the master named by the Sentinels';
  }

  /** Resolves at the next 'ready' event: one listener however many calls wait for it. */
  ready(): Promise<void> {
    this.readySignal ??= new Promise<void>((resolve) => {
      this.redis.once('ready', () => {
        this.readySignal = undefined;
        resolve();
      });
    });
    return this.readySignal;
  }

  /** Whether the server answers PING on a fresh connection (one probe at a time). */
  probe(): Promise<boolean> {
    if (this.probing !== undefined) return this.probing;
    if (this.connectedAddress === undefined) return Promise.resolve(false);
    const { host, port } = parseRedisAddress(this.connectedAddress);
    const { settings } = this;
    const probe = oneShotRedis(
      {
        host,
        port,
        password: settings.password,
        tls: settings.tls,
        connectTimeoutMs: settings.connectTimeoutMs,
      },
      settings.readTimeoutMs,
    );
    probe.on('error', () => undefined); // the outcome is the PING's
    this.probing = probe
      .connect()
      .then(() => probe.ping())
      .then(
        (pong) => pong === 'PONG',
        () => false,
      )
      .finally(() => {
        destroy(probe);
        this.probing = undefined;
      });
    return this.probing;
  }

  /** Quits politely (pending replies first), or drops the connection when that takes too long. */
  async retire(): Promise<void> {
    const { redis } = this;
    if (redis.status === 'ready') {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, this.settings.retryIntervalMs);
      });
      await Promise.race([redis.quit().catch(() => undefined), timeout]);
      clearTimeout(timer);
    }
    if (this.status === 'end') return;
    // ioredis rejects what is still pending ("Connection is closed").
    destroy(redis);
  }
}
