import { readFile, stat } from 'node:fs/promises';
import type { ConnectionOptions } from 'node:tls';
import { Redis } from 'ioredis';
import { ClosedError, NoRedisMasterError, type Logger } from '@beetle/core';
import { coalesceWrites } from '@beetle/core/kit';
import { isRedisAddress, parseRedisAddress, parseRedisMasterFile } from './master-file.js';
import { SCRIPTS, type ScriptCommands } from './scripts.js';

/** A client with the store's scripts defined on it. */
export type ScriptedRedis = Redis & ScriptCommands;

export interface RedisConnectionSettings {
  /** `host:port`, or the path of a Redis master file. */
  readonly redisServer: string;
  readonly systemName: string;
  readonly db: number;
  readonly password: string | undefined;
  readonly tls: ConnectionOptions | undefined;
  /** Milliseconds. */
  readonly connectTimeoutMs: number;
  /**
   * Milliseconds without a reply after which a call counts as stalled: the outage is logged, the master file
   * looked at, and the connection probed (see `RedisConnection.awaitStalled`). Checked by one sweeper per
   * connection every 250 ms (a quarter of the read timeout if that is shorter), so up to that much later.
   */
  readonly readTimeoutMs: number;
  /**
   * Milliseconds every call keeps retrying before it rejects with `NoRedisMasterError` (a call waiting for
   * a reply: checked by the sweeper, see `readTimeoutMs`).
   */
  readonly failoverTimeoutMs: number;
  /** Milliseconds between two attempts of one call. */
  readonly retryIntervalMs: number;
  /** Milliseconds between two looks at the master file on the hot path. */
  readonly masterFileCheckIntervalMs: number;
  readonly logger: Logger;
}

/** Redis cannot be used right now, for a reason that may go away (no master, not connected yet). */
export class RedisUnavailableError extends Error {
  override readonly name = 'RedisUnavailableError';
}

const RETRIABLE_REPLIES = /^(READONLY|LOADING|MASTERDOWN|BUSY|TRYAGAIN|CLUSTERDOWN|NOREPLICAS)\b/;
const RETRIABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
]);
const RETRIABLE_MESSAGES =
  /Connection is closed|Stream isn't writeable|Command timed out|Socket closed unexpectedly/;

/**
 * Whether a failed call may succeed when retried: connection-level failures and the replies of a server that
 * is not (yet) a usable master. Replies such as script errors or WRONGTYPE are bugs and are not retried.
 */
export function isRetriableRedisError(error: unknown): boolean {
  if (error instanceof RedisUnavailableError) return true;
  if (!(error instanceof Error)) return false;
  if (error.name === 'ReplyError') return RETRIABLE_REPLIES.test(error.message);
  if (error.name === 'MaxRetriesPerRequestError') return true;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && RETRIABLE_CODES.has(code)) return true;
  return RETRIABLE_MESSAGES.test(error.message);
}

/** Why a wait for a reply ended without the reply: its time was up, or it was woken (close, master change). */
const TIMED_OUT = Symbol('timed out');
const WOKEN = Symbol('woken');
type Interrupt = typeof TIMED_OUT | typeof WOKEN;

/**
 * A call waiting for its reply until `until` (epoch ms). No timer of its own: the connection's sweeper (one
 * interval timer for all calls) interrupts the waits whose time is up, so a call costs one promise, not a
 * timer, a race and their closures.
 */
class ReplyWait<T> {
  readonly outcome: Promise<T | Interrupt>;
  private interruptWith!: (why: Interrupt) => void;

  constructor(
    reply: Promise<T>,
    readonly until: number,
  ) {
    this.outcome = new Promise<T | Interrupt>((resolve, reject) => {
      this.interruptWith = resolve;
      reply.then(resolve, reject);
    });
  }

  /** Ends the wait (a no-op once the reply has come). */
  interrupt(why: Interrupt): void {
    this.interruptWith(why);
  }
}

/** What a call does on the client, with up to two arguments (so that hot callers need no closure). */
type Call<T, A, B> = (client: ScriptedRedis, a: A, b: B) => Promise<T>;

/** How long a connection must stay silent after a probe of its server answered to count as dead (ms). */
const PROBE_GRACE_MS = 100;

/** How often, at most, the sweeper looks for stalled calls (ms); more often with a short `readTimeout`. */
const SWEEP_INTERVAL_MS = 250;

/** ioredis' connection status, read fresh (TypeScript would keep a narrowed value across awaits). */
const statusOf = (client: Redis): string => client.status;

const messageOf = (error: unknown): string => (error instanceof Error ? error.message : String(error));

/**
 * One shared ioredis connection to the current master, and Ruby's `with_failover` around every call
 * (reference §4.5, §4.7): a call that fails for a connection-level reason is retried about once per
 * `retryInterval` (by timers, never blocking the event loop; other calls proceed independently) until
 * `failoverTimeout`, then rejects with `NoRedisMasterError`. With a master file, the file is looked at at most
 * once per `masterFileCheckInterval` on the hot path and right after every failure; when the master changes
 * the old client is closed and a new one is created.
 *
 * ioredis is configured not to queue or resend anything by itself (`enableOfflineQueue: false`,
 * `maxRetriesPerRequest: 0`): calls wait here instead, so nothing piles up unboundedly while Redis is down,
 * and every retry is visible to this loop.
 */
export class RedisConnection {
  private client: ScriptedRedis | undefined;
  /** `host:port` of `client`. */
  private address: string | undefined;
  private readonly masterFile: string | undefined;
  private masterSignature: string | undefined;
  /** Why there is no master right now (file missing or naming none), while that lasts. */
  private masterProblem: Error | undefined;
  private lastMasterCheck = Number.NEGATIVE_INFINITY;
  private masterCheck: Promise<void> | undefined;
  private lastClientError: Error | undefined;
  private outageSince: number | undefined;
  private outageGaveUp = false;
  private closed = false;
  /** Waits outside calls' replies (sleeps between attempts, waits for a connection), woken by `wakeAll`. */
  private readonly wakeups = new Set<() => void>();
  /** Calls waiting for their replies, watched by the sweeper. */
  private readonly waiting = new Set<ReplyWait<unknown>>();
  private sweeper: NodeJS.Timeout | undefined;
  private readonly sweepIntervalMs: number;
  private readonly readySignals = new WeakMap<Redis, Promise<void>>();
  private readonly probes = new WeakMap<Redis, Promise<boolean>>();
  /** When each client last received data (replies), to tell a stalled server from a dead connection. */
  private readonly lastData = new WeakMap<Redis, { at: number }>();

  constructor(private readonly settings: RedisConnectionSettings) {
    this.masterFile = isRedisAddress(settings.redisServer) ? undefined : settings.redisServer;
    this.sweepIntervalMs = Math.max(10, Math.min(SWEEP_INTERVAL_MS, settings.readTimeoutMs / 4));
  }

  /** The `host:port` currently connected to (or being connected to), if any. */
  get currentAddress(): string | undefined {
    return this.address;
  }

  /**
   * Runs `operation` on the current master, retrying connection-level failures until the failover timeout.
   * `call` gets the client and `a`, `b`.
   *
   * A command is resent only when its connection dropped, the connection was found dead, or the master
   * changed; the server may have executed it all the same (only the reply was lost). `call` is invoked again
   * with the same `a` and `b`: a non-idempotent script call must therefore carry everything it needs to
   * recognise its own resend in them (the store's reply keys, see `ReplyKeys`), or it would act twice (an
   * `INCR` counted twice, a claim finding its own first sighting). Ruby resends blindly and accepts this
   * (hence `ack_count >= 2`). We also never resend to a server that is merely slow (see `awaitStalled`).
   */
  run<T>(operation: string, call: Call<T, undefined, undefined>): Promise<T>;
  run<T, A, B = undefined>(operation: string, call: Call<T, A, B>, a: A, b?: B): Promise<T>;
  async run<T, A, B>(operation: string, call: Call<T, A, B>, a?: A, b?: B): Promise<T> {
    const deadline = Date.now() + this.settings.failoverTimeoutMs;
    for (;;) {
      this.assertOpen();
      const started = Date.now();
      try {
        let client = this.readyClientNow(started);
        let sentAt = started;
        if (client === undefined) {
          client = await this.readyClient(deadline);
          sentAt = Date.now();
        }
        const reply = call(client, a as A, b as B);
        // The hot path: one wait, which the reply normally ends. awaitStalled takes over when it does not.
        const wait = new ReplyWait(reply, Math.min(sentAt + this.settings.readTimeoutMs, deadline));
        this.watch(wait);
        let outcome: T | Interrupt;
        try {
          outcome = await wait.outcome;
        } finally {
          this.waiting.delete(wait);
        }
        this.assertOpen();
        if (outcome === TIMED_OUT || outcome === WOKEN) {
          outcome = await this.awaitStalled(client, reply, deadline, outcome as Interrupt);
        }
        if (this.outageSince !== undefined) this.recovered();
        return outcome;
      } catch (error) {
        this.assertOpen();
        if (!isRetriableRedisError(error)) throw error;
        this.lastMasterCheck = Number.NEGATIVE_INFINITY; // look at the master file again right away
        this.outage(error);
        const remaining = deadline - Date.now();
        if (remaining <= 0) {
          if (!this.outageGaveUp) {
            this.outageGaveUp = true;
            this.settings.logger.error(
              { err: error, operation, server: this.describeServer() },
              'Redis dedup store: no master reachable, giving up',
            );
          }
          throw new NoRedisMasterError(
            `no Redis master reachable for ${this.settings.failoverTimeoutMs / 1000}s (${this.describeServer()}): ${messageOf(error)}`,
            { cause: error },
          );
        }
        // A client that is (re)connecting is waited for in readyClient (woken by its 'ready' event). Otherwise
        // make at most one attempt per retry interval (Ruby: sleep 1).
        if (this.client?.status === 'ready' || this.client === undefined) {
          const pause = Math.min(remaining, this.settings.retryIntervalMs - (Date.now() - started));
          if (pause > 0) await this.sleep(pause);
        }
      }
    }
  }

  /**
   * Keeps waiting for the reply of a command sent once, after a first wait ended without it (`interrupt`). A
   * command is never resent while its connection is up and the master unchanged: a stalled server (paused,
   * swapping, forking, busy) will still execute it, and a resent claim would then find its own first
   * sighting. After each `readTimeout` without a reply the outage is logged, the master file looked at (a new
   * master: resend there), and, when the connection received nothing at all meanwhile, a fresh connection
   * PINGs the same server: if that answers, our connection is dead (e.g. a network path that silently
   * dropped it) and is dropped, which rejects its commands so that `run` resends them on a new connection.
   * Past the deadline the caller gives up (`NoRedisMasterError`).
   */
  private async awaitStalled<T>(
    client: ScriptedRedis,
    reply: Promise<T>,
    deadline: number,
    interrupt: Interrupt,
  ): Promise<T> {
    const server = `${client.options.host ?? ''}:${client.options.port ?? ''}`;
    let outcome: T | Interrupt = interrupt;
    for (;;) {
      if (outcome !== TIMED_OUT && outcome !== WOKEN) return outcome;
      if (this.client !== client)
        throw new RedisUnavailableError(`the Redis master moved away from ${server}`);
      // Woken with the master unchanged (for another call's reason): just wait again. Timed out: a stall.
      if (outcome === TIMED_OUT) {
        const stalled = new RedisUnavailableError(
          `no reply from Redis ${server} within ${this.settings.readTimeoutMs / 1000}s`,
        );
        if (Date.now() >= deadline) throw stalled;
        this.outage(stalled);
        this.lastMasterCheck = Number.NEGATIVE_INFINITY;
        await this.refreshMaster().catch(() => undefined);
        if (this.client !== client) throw stalled; // the master moved: resend there
        const lastData = this.lastData.get(client)?.at ?? 0;
        if (
          statusOf(client) === 'ready' &&
          Date.now() - lastData >= this.settings.readTimeoutMs &&
          (await this.probe(client)) &&
          (await this.silentAfterProbe(client, lastData))
        ) {
          this.settings.logger.warn(
            { server: this.address },
            'Redis dedup store: connection silent while the server answers; reconnecting',
          );
          client.stream.destroy(); // not end(): a dead peer would never complete the close
        }
      }
      const wait = new ReplyWait(reply, Math.min(Date.now() + this.settings.readTimeoutMs, deadline));
      this.watch(wait);
      try {
        outcome = await wait.outcome;
      } finally {
        this.waiting.delete(wait);
      }
      this.assertOpen();
    }
  }

  /**
   * Whether our connection still received nothing since `lastData` a moment after a probe found its server
   * answering. A server that was frozen and resumes during the probe answers the probe and our pending
   * commands alike, but not necessarily the probe last: the connection is only dead if it stays silent.
   */
  private async silentAfterProbe(client: ScriptedRedis, lastData: number): Promise<boolean> {
    await this.sleep(PROBE_GRACE_MS);
    return (
      !this.closed &&
      this.client === client &&
      statusOf(client) === 'ready' &&
      (this.lastData.get(client)?.at ?? 0) === lastData
    );
  }

  /** Has the sweeper watch `wait` (until the caller deletes it from `waiting`). */
  private watch(wait: ReplyWait<unknown>): void {
    this.waiting.add(wait);
    if (this.sweeper === undefined) {
      this.sweeper = setInterval(() => this.sweep(), this.sweepIntervalMs);
      this.sweeper.unref(); // a call waiting for a reply has a socket open anyway
    }
  }

  /** Interrupts the waits whose time is up; stops when nothing waits any more. */
  private sweep(): void {
    if (this.waiting.size === 0) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
      return;
    }
    const now = Date.now();
    for (const wait of this.waiting) {
      if (now >= wait.until) {
        this.waiting.delete(wait);
        wait.interrupt(TIMED_OUT);
      }
    }
  }

  /** Wakes every wait (calls' replies, sleeps, connection waits) early, for a close or a master change. */
  private wakeAll(): void {
    for (const wait of this.waiting) wait.interrupt(WOKEN);
    this.waiting.clear();
    for (const wake of [...this.wakeups]) wake();
  }

  /** Whether the client's server answers PING on a fresh connection (one probe per client at a time). */
  private probe(client: ScriptedRedis): Promise<boolean> {
    let probing = this.probes.get(client);
    if (probing === undefined) {
      const { host, port } = client.options;
      const probe = new Redis({
        host,
        port,
        password: this.settings.password,
        tls: this.settings.tls,
        connectTimeout: this.settings.connectTimeoutMs,
        commandTimeout: this.settings.readTimeoutMs,
        lazyConnect: true,
        enableReadyCheck: false,
        maxRetriesPerRequest: 0,
        retryStrategy: () => null,
        disableClientInfo: true,
        protocol: 2, // no HELLO: the probe is bounded by its PING's commandTimeout alone
      });
      probe.on('error', () => undefined);
      probing = probe
        .connect()
        .then(() => probe.ping())
        .then(
          (pong) => pong === 'PONG',
          () => false,
        )
        .finally(() => {
          probe.disconnect();
          (probe.stream as Redis['stream'] | undefined)?.destroy();
          this.probes.delete(client);
        });
      this.probes.set(client, probing);
    }
    return probing;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.wakeAll();
    clearInterval(this.sweeper);
    this.sweeper = undefined;
    const client = this.client;
    this.client = undefined;
    this.address = undefined;
    if (client) await this.retire(client);
  }

  private assertOpen(): void {
    if (this.closed) throw new ClosedError('the Redis dedup store is closed');
  }

  private describeServer(): string {
    const at = this.address ?? 'no master';
    return this.masterFile === undefined ? at : `${at} from ${this.masterFile}`;
  }

  /**
   * The client of the current master if it can be used right away: ready, and no look at the master file
   * due (else `readyClient`, which looks and waits).
   */
  private readyClientNow(now: number): ScriptedRedis | undefined {
    const client = this.client;
    if (client?.status !== 'ready') return undefined;
    if (
      this.masterFile !== undefined &&
      (this.masterProblem !== undefined ||
        now - this.lastMasterCheck >= this.settings.masterFileCheckIntervalMs)
    ) {
      return undefined;
    }
    return client;
  }

  /** The client of the current master once it is ready, waiting up to one retry interval for it. */
  private async readyClient(deadline: number): Promise<ScriptedRedis> {
    await this.refreshMaster();
    let client = this.client;
    if (client === undefined || client.status === 'end') {
      const address = this.address ?? this.settings.redisServer;
      client = this.connect(address);
    }
    if (client.status === 'ready') return client;
    const wait = Math.max(0, Math.min(this.settings.retryIntervalMs, deadline - Date.now()));
    await this.waitForReady(client, wait);
    this.assertOpen();
    if (statusOf(client) === 'ready' && client === this.client) return client;
    throw new RedisUnavailableError(
      `Redis ${this.address ?? '(no master)'} is not connected (${client.status})` +
        (this.lastClientError ? `: ${this.lastClientError.message}` : ''),
      { cause: this.lastClientError },
    );
  }

  /** Follows the master file (if any): at most once per check interval, and right after a failure. */
  private async refreshMaster(): Promise<void> {
    if (this.masterFile === undefined) return;
    if (Date.now() - this.lastMasterCheck >= this.settings.masterFileCheckIntervalMs) {
      this.masterCheck ??= this.checkMasterFile(this.masterFile).finally(() => {
        this.masterCheck = undefined;
      });
      await this.masterCheck;
    }
    if (this.masterProblem) throw this.masterProblem;
  }

  private async checkMasterFile(path: string): Promise<void> {
    this.lastMasterCheck = Date.now();
    let content: string;
    try {
      const stats = await stat(path);
      // Size is part of the signature: the Go daemons truncate, then write, possibly within one mtime tick.
      const signature = `${stats.mtimeMs}:${stats.size}:${stats.ino}`;
      if (signature === this.masterSignature) return;
      content = await readFile(path, 'utf8');
      this.masterSignature = signature;
    } catch (error) {
      this.masterSignature = undefined;
      this.masterProblem = new RedisUnavailableError(
        `cannot read the Redis master file ${path}: ${messageOf(error)}`,
        {
          cause: error,
        },
      );
      this.switchTo(undefined);
      return;
    }
    const master = parseRedisMasterFile(content, this.settings.systemName);
    if (master === undefined) {
      this.masterProblem = new RedisUnavailableError(
        `the Redis master file ${path} names no master for system ${JSON.stringify(this.settings.systemName)}`,
      );
    } else if (!isRedisAddress(master)) {
      this.masterProblem = new RedisUnavailableError(
        `the Redis master file ${path} names an invalid master ${JSON.stringify(master)}`,
      );
    } else {
      this.masterProblem = undefined;
    }
    this.switchTo(this.masterProblem ? undefined : master);
  }

  /** Points the store at another master (or at none), closing the old client. */
  private switchTo(address: string | undefined): void {
    if (address === this.address) return;
    const old = this.client;
    if (this.address !== undefined || address !== undefined) {
      this.settings.logger.info(
        { from: this.address ?? null, to: address ?? null, file: this.masterFile },
        'Redis dedup store: master changed',
      );
    }
    this.client = undefined;
    this.address = address;
    if (old) void this.retire(old);
    if (address !== undefined) this.connect(address);
    this.wakeAll();
  }

  private connect(address: string): ScriptedRedis {
    const { host, port } = parseRedisAddress(address);
    const { settings } = this;
    const client = new Redis({
      host,
      port,
      db: settings.db,
      password: settings.password,
      tls: settings.tls,
      connectTimeout: settings.connectTimeoutMs,
      // No commandTimeout: a timed-out command would still run on a stalled server; awaitReply waits instead.
      // Calls wait in RedisConnection.run instead of ioredis' unbounded offline queue, and are not resent by
      // ioredis after a reconnect (in-flight ones are rejected at the disconnect and retried by run()).
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      // Independent messages' calls share this one connection; the commands of one tick leave in one writev
      // (coalesceWrites below). ioredis' auto-pipelining batches too, but costs ~6 us more per call
      // (a pipeline, and two more promises per command).
      enableAutoPipelining: false,
      retryStrategy: (times: number) => Math.min(times * 100, settings.retryIntervalMs),
      disableClientInfo: true,
      // RESP2, as redis-rb speaks to the same Redis: the scripts' replies keep their shapes, and a connect is
      // the TCP handshake alone (ioredis 6 defaults to RESP3, whose HELLO a stalled server never answers).
      protocol: 2,
    }) as ScriptedRedis;
    for (const [name, script] of Object.entries(SCRIPTS)) {
      // Without numberOfKeys, ioredis takes the number of keys as the call's first argument.
      client.defineCommand(
        name,
        script.numberOfKeys < 0
          ? { lua: script.lua }
          : { numberOfKeys: script.numberOfKeys, lua: script.lua },
      );
    }
    const lastData = { at: 0 };
    this.lastData.set(client, lastData);
    const received = (): void => {
      lastData.at = Date.now();
    };
    client.on('connect', () => {
      lastData.at = Date.now();
      client.stream.on('data', received);
      // Flushed in the check phase (setImmediate), as ioredis' auto-pipelining did: the store's batches,
      // sent at the end of a tick, leave in the same write. The store itself holds back calls that may delete
      // keys until the broker acks are written (see `afterAcks` in the store).
      coalesceWrites(client.stream, setImmediate);
    });
    client.on('error', (error: Error) => {
      this.lastClientError = error;
      settings.logger.debug({ err: error, server: address }, 'Redis dedup store: connection error');
    });
    this.client = client;
    this.address = address;
    return client;
  }

  /** Quits politely (pending replies first), or drops the connection when that takes too long. */
  private async retire(client: Redis): Promise<void> {
    if (client.status === 'ready') {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, this.settings.retryIntervalMs);
      });
      await Promise.race([client.quit().catch(() => undefined), timeout]);
      clearTimeout(timer);
    }
    if (statusOf(client) === 'end') return;
    client.disconnect();
    // end() alone waits for the peer's FIN, which a frozen or unreachable server never sends; destroying the
    // socket closes it now, and ioredis rejects what is still pending ("Connection is closed").
    (client.stream as Redis['stream'] | undefined)?.destroy();
  }

  /** Resolves at the client's next 'ready' event, or after `ms`, or when woken (close, master change). */
  private waitForReady(client: Redis, ms: number): Promise<void> {
    return this.sleep(ms, this.readySignal(client));
  }

  /** One listener per client however many calls wait for it. */
  private readySignal(client: Redis): Promise<void> {
    let signal = this.readySignals.get(client);
    if (signal === undefined) {
      signal = new Promise<void>((resolve) => {
        client.once('ready', () => {
          this.readySignals.delete(client);
          resolve();
        });
      });
      this.readySignals.set(client, signal);
    }
    return signal;
  }

  /** Resolves after `ms`, when woken (close, master change), or when `until` resolves, whichever is first. */
  private sleep(ms: number, until?: Promise<void>): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.wakeups.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakeups.add(done);
      if (until !== undefined) void until.then(done);
    });
  }

  private outage(error: unknown): void {
    if (this.outageSince !== undefined) return;
    this.outageSince = Date.now();
    this.outageGaveUp = false;
    this.settings.logger.warn(
      { err: error, server: this.describeServer() },
      `Redis dedup store unavailable, retrying for up to ${this.settings.failoverTimeoutMs / 1000}s`,
    );
  }

  private recovered(): void {
    if (this.outageSince === undefined) return;
    const downMs = Date.now() - this.outageSince;
    this.outageSince = undefined;
    this.outageGaveUp = false;
    this.settings.logger.info({ server: this.describeServer(), downMs }, 'Redis dedup store available again');
  }
}
