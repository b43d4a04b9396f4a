// Over 400 lines: one connection owns both ways to the master (file-followed and Sentinel) and the resend loop.
import type { ConnectionOptions } from 'node:tls';
import { ClosedError, NoRedisMasterError, type Logger } from '@beetle/core';
import { DeadlineSweeper, errorMessage } from '@beetle/core/kit';
import { StoreClient, type ScriptedRedis } from './client.js';
import { fromErrorReply, isRetriableRedisError, RedisUnavailableError } from './errors.js';
import { isRedisAddress, MasterFile } from './master.js';
import { ReplicaWait } from './durable.js';
import { describeSentinels, type SentinelTarget } from './sentinel.js';

export interface RedisConnectionSettings {
  /** `host:port`, or the path of a Redis master file (unused with `sentinel`). */
  readonly redisServer: string;
  /** The Sentinels that name the master, if they do (then `redisServer` is not looked at). */
  readonly sentinel: SentinelTarget | undefined;
  /** Replicas a durable call waits for (`WAIT`); 0: none. */
  readonly waitReplicas: number;
  /** Milliseconds one `WAIT` may block (less than `readTimeoutMs`). */
  readonly waitTimeoutMs: number;
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

/** Why a wait for a reply ended without the reply: its time was up, or it was woken (close, master change). */
const TIMED_OUT = Symbol('timed out');
const WOKEN = Symbol('woken');
type Interrupt = typeof TIMED_OUT | typeof WOKEN;

/**
 * A call waiting for its reply. No timer of its own: the connection's sweeper (one timer for all calls)
 * interrupts the waits whose time is up, so a call costs one promise, not a timer, a race and their closures.
 */
class ReplyWait<T> {
  readonly outcome: Promise<T | Interrupt>;
  private interruptWith!: (why: Interrupt) => void;

  constructor(reply: Promise<T>) {
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
export type Call<T, A, B> = (client: ScriptedRedis, a: A, b: B) => Promise<T>;

/** How long a connection must stay silent after a probe of its server answered to count as dead (ms). */
const PROBE_GRACE_MS = 100;

/** How often, at most, the sweeper looks for stalled calls (ms); more often with a short `readTimeout`. */
const SWEEP_INTERVAL_MS = 250;

/** A status read fresh (TypeScript would keep a narrowed value across awaits). */
const statusOf = (client: StoreClient): string => client.status;

/**
 * Ruby's `with_failover` around every call of the store (reference §4.5, §4.7), on one shared connection to
 * the current master (`StoreClient`): a call that fails for a connection-level reason is retried about once
 * per `retryInterval` (by timers, never blocking the event loop; other calls proceed independently) until
 * `failoverTimeout`, then rejects with `NoRedisMasterError`. With a master file (`MasterFile`), the file is
 * looked at at most once per `masterFileCheckInterval` on the hot path and right after every failure; when it
 * names another master the old client is retired, a new one created and every wait woken.
 *
 * The client neither queues, resends nor times out commands by itself (see `StoreClient`): calls wait here
 * instead, so nothing piles up unboundedly while Redis is down, every resend is one this loop decided (and
 * marked, see `run`), and a stalled server is waited for rather than sent the command again.
 */
export class RedisConnection {
  private client: StoreClient | undefined;
  /** `host:port` of `client`. */
  private address: string | undefined;
  private readonly masterFile: MasterFile | undefined;
  private lastClientError: Error | undefined;
  private outageSince: number | undefined;
  private outageGaveUp = false;
  private closed = false;
  /** Waits outside calls' replies (sleeps between attempts, waits for a connection), woken by `wakeAll`. */
  private readonly wakeups = new Set<() => void>();
  /** Calls waiting for their replies until their read timeout (or the failover deadline). */
  private readonly waiting: DeadlineSweeper<ReplyWait<unknown>>;
  /** The replicas durable calls wait for (`waitReplicas` > 0). */
  private readonly durable: ReplicaWait | undefined;

  constructor(private readonly settings: RedisConnectionSettings) {
    this.masterFile =
      settings.sentinel !== undefined || isRedisAddress(settings.redisServer)
        ? undefined
        : new MasterFile(
            settings.redisServer,
            settings.systemName,
            settings.masterFileCheckIntervalMs,
            (master) => this.switchTo(master),
          );
    this.durable =
      settings.waitReplicas > 0
        ? new ReplicaWait(settings.waitReplicas, settings.waitTimeoutMs, settings.logger, () =>
            this.describeServer(),
          )
        : undefined;
    this.waiting = new DeadlineSweeper({
      periodMs: Math.max(10, Math.min(SWEEP_INTERVAL_MS, settings.readTimeoutMs / 4)),
      onExpired: (wait) => wait.interrupt(TIMED_OUT),
      // A busy connection always has calls waiting: one interval rather than a timeout per period.
      repeating: true,
    });
  }

  /** The `host:port` currently connected to (or being connected to), if any. */
  get currentAddress(): string | undefined {
    return this.settings.sentinel === undefined ? this.address : this.client?.connectedAddress;
  }

  /**
   * `run`, for a call whose effect the caller acts on (a claim runs a handler, a completion lets the broker
   * ack go out): with `waitReplicas` > 0 the reply is only given once that many replicas have the write
   * (`WAIT`), so a failover to one of them cannot forget it. A shortfall is retried like an outage. Only for
   * calls that are harmless to resend (idempotent, or answered from a reply key).
   */
  runDurable<T, A, B = undefined>(operation: string, call: Call<T, A, B>, a: A, b?: B): Promise<T> {
    const durable = this.durable;
    if (durable === undefined) return this.run(operation, call, a, b);
    return this.run(operation, (client) => durable.run(client, call, a, b as B));
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
        const reply = call(client.redis, a as A, b as B);
        // The hot path: one wait, which the reply normally ends. awaitStalled takes over when it does not.
        const wait = new ReplyWait(reply);
        this.waiting.add(wait, Math.min(sentAt + this.settings.readTimeoutMs, deadline));
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
        if (!isRetriableRedisError(error)) throw fromErrorReply(error);
        this.masterFile?.lookSoon(); // look at the master file again right away
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
            `no Redis master reachable for ${this.settings.failoverTimeoutMs / 1000}s (${this.describeServer()}): ${errorMessage(error)}`,
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
    client: StoreClient,
    reply: Promise<T>,
    deadline: number,
    interrupt: Interrupt,
  ): Promise<T> {
    const server = client.server;
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
        if (this.masterFile !== undefined) {
          this.masterFile.lookSoon();
          await this.masterFile.refresh().catch(() => undefined);
        }
        if (this.client !== client) throw stalled; // the master moved: resend there
        const lastData = client.lastDataAt;
        if (
          statusOf(client) === 'ready' &&
          Date.now() - lastData >= this.settings.readTimeoutMs &&
          (await client.probe()) &&
          (await this.silentAfterProbe(client, lastData))
        ) {
          this.settings.logger.warn(
            { server: this.describeServer() },
            'Redis dedup store: connection silent while the server answers; reconnecting',
          );
          client.redis.stream.destroy(); // not end(): a dead peer would never complete the close
        }
      }
      const wait = new ReplyWait(reply);
      this.waiting.add(wait, Math.min(Date.now() + this.settings.readTimeoutMs, deadline));
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
  private async silentAfterProbe(client: StoreClient, lastData: number): Promise<boolean> {
    await this.sleep(PROBE_GRACE_MS);
    return (
      !this.closed && this.client === client && statusOf(client) === 'ready' && client.lastDataAt === lastData
    );
  }

  /** Wakes every wait (calls' replies, sleeps, connection waits) early, for a close or a master change. */
  private wakeAll(): void {
    for (const wait of this.waiting.takeAll()) wait.interrupt(WOKEN);
    for (const wake of [...this.wakeups]) wake();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.wakeAll();
    this.waiting.clear();
    const client = this.client;
    this.client = undefined;
    this.address = undefined;
    if (client) await client.retire();
  }

  private assertOpen(): void {
    if (this.closed) throw new ClosedError('the Redis dedup store is closed');
  }

  private describeServer(): string {
    const { sentinel } = this.settings;
    if (sentinel !== undefined) {
      return `${this.client?.connectedAddress ?? 'no master yet'} via ${describeSentinels(sentinel)}`;
    }
    const at = this.address ?? 'no master';
    return this.masterFile === undefined ? at : `${at} from ${this.masterFile.path}`;
  }

  /**
   * The client of the current master if it can be used right away: ready, and no look at the master file
   * due (else `readyClient`, which looks and waits).
   */
  private readyClientNow(now: number): StoreClient | undefined {
    const client = this.client;
    if (client?.redis.status !== 'ready') return undefined;
    if (this.masterFile?.mustLook(now) === true) return undefined;
    return client;
  }

  /** The client of the current master once it is ready, waiting up to one retry interval for it. */
  private async readyClient(deadline: number): Promise<StoreClient> {
    await this.masterFile?.refresh();
    let client = this.client;
    if (client === undefined || client.status === 'end') {
      client = this.connect(this.address ?? this.settings.redisServer);
    }
    if (client.status === 'ready') return client;
    const wait = Math.max(0, Math.min(this.settings.retryIntervalMs, deadline - Date.now()));
    await this.sleep(wait, client.ready());
    this.assertOpen();
    if (statusOf(client) === 'ready' && client === this.client) return client;
    throw new RedisUnavailableError(
      `Redis ${this.describeServer()} is not connected (${client.status})` +
        (this.lastClientError ? `: ${this.lastClientError.message}` : ''),
      { cause: this.lastClientError },
    );
  }

  /** The master file names another master (or none): retire the old client, connect, wake every wait. */
  private switchTo(address: string | undefined): void {
    if (address === this.address) return;
    const old = this.client;
    if (this.address !== undefined || address !== undefined) {
      this.settings.logger.info(
        { from: this.address ?? null, to: address ?? null, file: this.masterFile?.path },
        'Redis dedup store: master changed',
      );
    }
    this.client = undefined;
    this.address = address;
    if (old) void old.retire();
    if (address !== undefined) this.connect(address);
    this.wakeAll();
  }

  /** A client of `address`, or with Sentinel of the master the Sentinels name (`address` is not used). */
  private connect(address: string): StoreClient {
    const { sentinel } = this.settings;
    const target = sentinel === undefined ? { address } : { sentinel };
    const client = new StoreClient(target, this.settings, (error) => {
      this.lastClientError = error;
    });
    this.client = client;
    this.address = sentinel === undefined ? address : undefined;
    return client;
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
