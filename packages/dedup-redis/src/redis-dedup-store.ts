import type { ConnectionOptions } from 'node:tls';
import {
  ConfigurationError,
  silentLogger,
  type AcknowledgedParams,
  type AcquireParams,
  type AcquireResult,
  type ClaimParams,
  type ClaimResult,
  type CompleteParams,
  type DedupStore,
  type FailOutcome,
  type FailParams,
  type FailResult,
  type BeetleConfig,
  type Logger,
  type MessageRef,
  type ReleaseParams,
} from '@beetle/core';
import {
  acksOf,
  allKeysOf,
  Batcher,
  KEY_SUFFIXES,
  type KeySuffix,
  msgId,
  parseKey,
  rubyToI,
  type Schedule,
} from '@beetle/core/kit';
import { RedisConnection, type ScriptedRedis } from './connection.js';
import { ReplyKeys, type OnceCall } from './replies.js';
import type { ScriptName } from './scripts.js';

/** Options of {@link RedisDedupStore}. Durations are in seconds, like Ruby Beetle's configuration. */
export interface RedisDedupStoreOptions {
  /** `host:port`, or the path of a Redis master file (reference §4.8). Default `localhost:6379`. */
  readonly redisServer?: string;
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
  /** Seconds the `status` key outlives a processed message; 0 (default) deletes it with the others. */
  readonly statusKeyExpiryInterval?: number;
  /** Silent by default. */
  readonly logger?: Logger;
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
  >
>;

/** A message with an `expires` key, as found by {@link RedisDedupStore.scanExpiries}. */
export interface MessageExpiry {
  readonly msgId: string;
  readonly queue: string;
  readonly uuid: string;
  /** The stored `expires` value (unix seconds). */
  readonly expiresAt: number;
}

const seconds = (name: string, value: number | undefined, fallback: number): number => {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new ConfigurationError(`${name} must be a non-negative number of seconds, got ${String(value)}`, {
      key: name,
    });
  }
  return value;
};

const tlsOptions = (tls: boolean | ConnectionOptions | undefined): ConnectionOptions | undefined => {
  if (tls === undefined || tls === false) return undefined;
  const options: ConnectionOptions = tls === true ? {} : { ...tls };
  if (process.env['OPENSSL_SSL_VERIFY_NONE'] === '1' && options.rejectUnauthorized === undefined) {
    options.rejectUnauthorized = false;
  }
  return options;
};

/** Characters with a meaning in Redis glob patterns. */
const escapeGlob = (text: string): string => text.replace(/[*?[\]\\^-]/g, (char) => `\\${char}`);

const FAIL_OUTCOMES: ReadonlySet<string> = new Set<FailOutcome>([
  'AttemptsLimitReached',
  'ExceptionsLimitReached',
  'ExceptionNotAccepted',
  'HandlerCrash',
]);

const unexpected = (script: string, reply: unknown): Error =>
  new Error(`unexpected reply from the ${script} script: ${JSON.stringify(reply)}`);

/** A value of Ruby's MGET: a string read with `to_i`, or nil. */
const optionalInt = (value: unknown): number | undefined => {
  if (typeof value === 'string') return rubyToI(value);
  if (typeof value === 'number') return value;
  return undefined;
};

/** Calls made in this tick are sent at its end (then written with the connection's next flush). */
const thisTick: Schedule = (flush) => process.nextTick(flush);

/**
 * When a call that may delete a message's keys is sent: after the caller's broker ack has been written. The
 * ack must leave first: a process killed in between would lose the ack after the keys were gone, and the
 * message would run again. amqplib hands a tick's frames to the socket in the check phase, from an immediate
 * its muxer schedules in a later tick of the ack (the stream's 'readable'); an immediate scheduled from a
 * later tick still runs after it. The write then waits for the next flush of the connection's corked socket.
 */
const afterAcks: Schedule = (flush) => process.nextTick(() => setImmediate(flush));

/** Most messages per batched command: bounds a script's run time on the server and the size of a command. */
const MAX_BATCH = 100;

/** The replies a script does not store (see the scripts): their reply keys need no deletion. */
const NO_STORED_REPLY: Partial<Record<ScriptName, unknown>> = { beetleAcknowledged: 1 };

/** Seconds a stored reply outlives the failover timeout (after which its call is no longer resent). */
const REPLY_TTL_MARGIN = 60;

interface ClaimItem {
  readonly ref: MessageRef;
  readonly params: ClaimParams;
}

/**
 * The timeout argument of a claim or acquire: absolute unix seconds, or `+<seconds>` for Redis' now + seconds
 * when the caller asks for the store's clock.
 */
const timeoutArg = (timeoutAt: number, timeout: number | undefined): string =>
  timeout === undefined ? String(timeoutAt) : `+${Math.ceil(timeout)}`;

/** The claim script call of a batch (built once: a resend sends the same, marked as a resend). */
const claimCall = (replies: ReplyKeys, key: string, items: readonly ClaimItem[]): OnceCall => {
  const before: string[] = [String(items.length)];
  for (const { ref } of items) before.push(msgId(ref));
  const own: string[] = [];
  for (const { params } of items) {
    own.push(String(params.expiresAt), timeoutArg(params.timeoutAt, params.timeout));
  }
  return replies.call(before, key, own);
};

const sendClaim = (redis: ScriptedRedis, call: OnceCall): Promise<unknown> =>
  redis.beetleClaim(...call.next());

/** A script call with its message id first, then its reply header and arguments. */
const sendScript = (redis: ScriptedRedis, script: ScriptName, call: OnceCall): Promise<unknown> =>
  redis[script](...call.next());

interface CompleteItem {
  readonly ref: MessageRef;
  readonly expiresAt: number | undefined;
}

/** Ruby's `completed!` (MSET status timeout) of each message, with its `expires` when known (CompleteParams). */
const completeBatch = (redis: ScriptedRedis, items: readonly CompleteItem[]): Promise<'OK'> => {
  const args: string[] = [];
  for (const { ref, expiresAt } of items) {
    const id = msgId(ref);
    args.push(`${id}:status`, 'completed', `${id}:timeout`, '0');
    if (expiresAt !== undefined) args.push(`${id}:expires`, String(expiresAt));
  }
  return redis.mset(args);
};

/** All 8 keys of each message deleted with one plain DEL (Ruby's cleanup, without a script around it). */
const deleteAllBatch = (redis: ScriptedRedis, refs: readonly MessageRef[]): Promise<number> => {
  const keys: string[] = [];
  for (const ref of refs) keys.push(...allKeysOf(ref));
  return redis.del(keys);
};

/** Batches of a plain command whose reply answers every message in it. */
const commandBatcher = <I>(
  connection: RedisConnection,
  operation: string,
  call: (redis: ScriptedRedis, items: readonly I[]) => Promise<unknown>,
  schedule: Schedule,
): Batcher<I, undefined> =>
  new Batcher(
    async (items) => {
      await connection.run(operation, call, items);
      return new Array<undefined>(items.length).fill(undefined);
    },
    MAX_BATCH,
    schedule,
  );

/** The result of one message of a claim batch (see the CLAIM script). */
const claimResult = (entry: unknown): ClaimResult | Error => {
  if (!Array.isArray(entry)) return unexpected('claim', entry);
  if (entry[0] === 1 && typeof entry[1] === 'number') return { first: true, attempts: entry[1] };
  if (entry[0] === -1) return new Error(`claim failed: ${String(entry[1])}`);
  if (entry[0] !== 0 || (entry.length !== 6 && entry.length !== 7)) return unexpected('claim', entry);
  const [, status, delay, timeout, attempts, exceptions, now] = entry as unknown[];
  const state = {
    status: typeof status === 'string' ? status : undefined,
    delay: optionalInt(delay),
    timeout: optionalInt(timeout),
    attempts: optionalInt(attempts) ?? 0,
    exceptions: optionalInt(exceptions) ?? 0,
  };
  if (entry.length === 6) return { first: false, state };
  if (typeof now !== 'number') return unexpected('claim', entry);
  return { first: false, state, now };
};

/**
 * Ruby Beetle's deduplication store on Redis (reference §4), compatible with Ruby consumers sharing the same
 * Redis: same keys (`msgid:<queue>:<uuid>:<suffix>`), values and database (4). Each step is one round trip
 * (a Lua script or a single command), and all messages share one connection: the claims, completions and
 * cleanups of one tick go in one command each (see `Batcher`). The scripts get the message ids and build the
 * keys themselves; no call has a timer of its own (see `RedisConnection`).
 *
 * A redundant message handled on the happy path costs 5 round trips (claim, complete, acknowledged for the
 * first copy; claim, acknowledged for the second) where Ruby needs 8; 3 when both copies reach one
 * subscriber (claim, complete, one acknowledged for both acks: see `acks`).
 */
export class RedisDedupStore implements DedupStore {
  readonly statusKeyExpiryInterval: number;
  /** `statusKeyExpiryInterval` as the acknowledged script takes it. */
  private readonly intervalArg: string;
  private readonly connection: RedisConnection;
  private readonly replies: ReplyKeys;
  private readonly claims: Batcher<ClaimItem, ClaimResult>;
  private readonly completions: Batcher<CompleteItem, undefined>;
  private readonly deletions: Batcher<MessageRef, undefined>;

  constructor(options: RedisDedupStoreOptions = {}) {
    const interval = seconds('statusKeyExpiryInterval', options.statusKeyExpiryInterval, 0);
    if (!Number.isInteger(interval)) {
      throw new ConfigurationError(`statusKeyExpiryInterval must be whole seconds, got ${interval}`, {
        key: 'statusKeyExpiryInterval',
      });
    }
    this.statusKeyExpiryInterval = interval;
    this.intervalArg = String(interval);
    const db = options.db ?? 4;
    if (!Number.isInteger(db) || db < 0) {
      throw new ConfigurationError(`db must be a non-negative integer, got ${String(db)}`, { key: 'db' });
    }
    const redisServer = (options.redisServer ?? 'localhost:6379').trim();
    if (redisServer === '')
      throw new ConfigurationError('redisServer must not be empty', { key: 'redisServer' });
    this.connection = new RedisConnection({
      redisServer,
      systemName: options.systemName ?? 'system',
      db,
      password: options.password === '' ? undefined : options.password,
      tls: tlsOptions(options.tls),
      connectTimeoutMs: seconds('connectTimeout', options.connectTimeout, 5) * 1000,
      readTimeoutMs: seconds('readTimeout', options.readTimeout, 5) * 1000,
      failoverTimeoutMs: seconds('failoverTimeout', options.failoverTimeout, 180) * 1000,
      retryIntervalMs: seconds('retryInterval', options.retryInterval, 1) * 1000,
      masterFileCheckIntervalMs:
        seconds('masterFileCheckInterval', options.masterFileCheckInterval, 1) * 1000,
      logger: options.logger ?? silentLogger,
    });
    // A stored reply must outlive every resend of its call: resends stop at the failover timeout.
    const failoverTimeout = seconds('failoverTimeout', options.failoverTimeout, 180);
    const replies = new ReplyKeys(failoverTimeout + REPLY_TTL_MARGIN);
    this.replies = replies;
    const connection = this.connection;
    this.claims = new Batcher(
      async (items) => {
        // One reply key for the batch: a resend of the whole batch is answered from it.
        const key = replies.next();
        let reply: unknown;
        try {
          reply = await connection.run('claim', sendClaim, claimCall(replies, key, items));
        } finally {
          replies.done(key);
        }
        if (!Array.isArray(reply) || reply.length !== items.length) throw unexpected('claim', reply);
        return reply.map(claimResult);
      },
      MAX_BATCH,
      thisTick,
    );
    this.completions = commandBatcher(connection, 'complete', completeBatch, thisTick);
    this.deletions = commandBatcher(connection, 'acknowledged', deleteAllBatch, afterAcks);
  }

  /** A store configured from core's configuration fields (Ruby names and units). */
  static fromConfig(
    config: RedisDedupStoreConfig,
    extra: { readonly logger?: Logger } = {},
  ): RedisDedupStore {
    return new RedisDedupStore({
      redisServer: config.redisServer,
      systemName: config.systemName,
      db: config.redisDb,
      password: config.redisPassword ?? undefined,
      tls: config.redisTls,
      connectTimeout: config.redisConnectTimeout,
      readTimeout: config.redisReadTimeout,
      failoverTimeout: config.redisFailoverTimeout,
      statusKeyExpiryInterval: config.redisStatusKeyExpiryInterval,
      logger: extra.logger,
    });
  }

  /** The `host:port` the store is connected (or connecting) to, if any. */
  get currentServer(): string | undefined {
    return this.connection.currentAddress;
  }

  async markCompletedIfNew(ref: MessageRef): Promise<boolean> {
    const interval = this.statusKeyExpiryInterval;
    if (interval <= 0) return true;
    const reply = await this.runOnce('markCompletedIfNew', 'beetleMarkCompleted', ref, [String(interval)]);
    if (reply !== 0 && reply !== 1) throw unexpected('markCompletedIfNew', reply);
    return reply === 1;
  }

  claim(ref: MessageRef, params: ClaimParams): Promise<ClaimResult> {
    return this.claims.add({ ref, params });
  }

  async acquire(ref: MessageRef, params: AcquireParams): Promise<AcquireResult> {
    const reply = await this.runOnce('acquire', 'beetleAcquire', ref, [
      String(params.now),
      timeoutArg(params.timeoutAt, params.timeout),
      String(params.staleAfter),
    ]);
    if (typeof reply !== 'number') throw unexpected('acquire', reply);
    return reply > 0 ? { acquired: true, attempts: reply } : { acquired: false };
  }

  complete(ref: MessageRef, params: CompleteParams = {}): Promise<void> {
    // Ruby's `completed!`, a single command (shared with the other completions of the tick). Harmless to
    // resend: it writes the same values again.
    return this.completions.add({ ref, expiresAt: params.expiresAt });
  }

  async fail(ref: MessageRef, params: FailParams): Promise<FailResult> {
    const reply = await this.runOnce('fail', 'beetleFail', ref, [
      String(params.attemptsLimit),
      String(params.exceptionsLimit),
      params.accepted ? '1' : '0',
      params.storeClock === true ? '' : String(params.now),
      String(params.delay),
      params.maxDelay === undefined ? '' : String(params.maxDelay),
      params.expiresAt === undefined ? '' : String(params.expiresAt),
    ]);
    if (!Array.isArray(reply) || reply.length !== 4) throw unexpected('fail', reply);
    const [outcome, attempts, exceptions, delayUntil] = reply as unknown[];
    if (
      typeof outcome !== 'string' ||
      !FAIL_OUTCOMES.has(outcome) ||
      typeof attempts !== 'number' ||
      typeof exceptions !== 'number' ||
      typeof delayUntil !== 'string'
    ) {
      throw unexpected('fail', reply);
    }
    return {
      outcome: outcome as FailOutcome,
      attempts,
      exceptions,
      delayUntil: outcome === 'HandlerCrash' ? Number(delayUntil) : undefined,
    };
  }

  async acknowledged(ref: MessageRef, params: AcknowledgedParams): Promise<void> {
    const acks = acksOf(params);
    // Nothing to count: a non-redundant message, or both acks of a redundant one at once (the count reaches 2
    // whatever it was). Without a status-key expiry that is Ruby's DEL of all keys, no script needed.
    if ((!params.redundant || acks >= 2) && this.statusKeyExpiryInterval <= 0) {
      await this.deletions.add(ref);
      return;
    }
    const interval = this.intervalArg;
    await new Promise<void>((resolve) => afterAcks(resolve));
    if (params.redundant) {
      // A count: a resend is answered from the stored reply (counted twice, one ack would delete the keys).
      await this.runOnce('acknowledged', 'beetleAcknowledged', ref, ['1', interval, String(acks)]);
    } else {
      // DEL + EXPIRE: harmless to repeat, so no reply key (it still deletes those of earlier calls).
      const call = this.replies.call([msgId(ref)], '', ['0', interval, '1']);
      await this.connection.run('acknowledged', sendScript, 'beetleAcknowledged', call);
    }
  }

  /**
   * Gives back a run abandoned without a result: the attempt uncounted, `timeout` 0 and the mutex deleted,
   * if the message is still incomplete with the run's `attempts` (see `DedupStore.release`).
   */
  async release(ref: MessageRef, params: ReleaseParams): Promise<boolean> {
    const reply = await this.runOnce('release', 'beetleRelease', ref, [String(params.attempts)]);
    if (reply !== 0 && reply !== 1) throw unexpected('release', reply);
    return reply === 1;
  }

  async inspect(ref: MessageRef): Promise<Partial<Record<KeySuffix, string>>> {
    const values = await this.run('inspect', (redis) => redis.mget(allKeysOf(ref)));
    const result: Partial<Record<KeySuffix, string>> = {};
    KEY_SUFFIXES.forEach((suffix, i) => {
      const value = values[i];
      if (typeof value === 'string') result[suffix] = value;
    });
    return result;
  }

  /** Round trip to the current master (Ruby `ping`): resolves once Redis answers, within the failover timeout. */
  async ping(): Promise<void> {
    await this.run('ping', (redis) => redis.ping());
  }

  /**
   * All keys matching `match` (a Redis glob, default `msgid:*`), by SCAN. Keys may be returned more than once
   * (SCAN semantics); after a master change the scan continues on the new master with a meaningless cursor,
   * so a garbage collector should restart its run when `currentServer` changes.
   */
  async *scanKeys(options: { readonly match?: string; readonly count?: number } = {}): AsyncIterable<string> {
    for await (const keys of this.scanBatches(options.match ?? 'msgid:*', options.count ?? 1000)) yield* keys;
  }

  /** The batches of a full SCAN for `match`. */
  private async *scanBatches(match: string, count: number): AsyncIterable<string[]> {
    let cursor = '0';
    do {
      const from = cursor;
      const [next, keys] = await this.run('scan', (redis) =>
        redis.scan(from, 'MATCH', match, 'COUNT', count),
      );
      cursor = next;
      yield keys;
    } while (cursor !== '0');
  }

  /**
   * Every message that has an `expires` key, with its value (what Beetle's garbage collector looks at),
   * optionally only for queues whose names start with `queuePrefix`. One MGET per SCAN batch.
   */
  async *scanExpiries(
    options: { readonly queuePrefix?: string; readonly count?: number } = {},
  ): AsyncIterable<MessageExpiry> {
    const match = `msgid:${escapeGlob(options.queuePrefix ?? '')}*:expires`;
    for await (const keys of this.scanBatches(match, options.count ?? 1000)) {
      const parsed = keys.flatMap((key) => {
        const parts = parseKey(key);
        return parts?.suffix === 'expires' ? [{ key, parts }] : [];
      });
      if (parsed.length === 0) continue;
      const values = await this.run('scanExpiries', (redis) => redis.mget(parsed.map(({ key }) => key)));
      for (const [i, { parts }] of parsed.entries()) {
        const value = values[i];
        if (typeof value !== 'string') continue; // deleted meanwhile
        yield { msgId: parts.msgId, queue: parts.queue, uuid: parts.uuid, expiresAt: rubyToI(value) };
      }
    }
  }

  /** Deletes all 8 keys of a message (`msgid:<queue>:<uuid>`); returns how many existed. */
  async deleteMessageKeys(msgId: string): Promise<number> {
    const parts = parseKey(`${msgId}:status`);
    if (parts?.msgId !== msgId) throw new TypeError(`not a Beetle message id: ${JSON.stringify(msgId)}`);
    return this.run('deleteMessageKeys', (redis) =>
      redis.del(...allKeysOf({ queue: parts.queue, uuid: parts.uuid })),
    );
  }

  /** Quits the connection; pending and later calls reject with `ClosedError`. */
  async close(): Promise<void> {
    await this.connection.close();
  }

  private run<T>(operation: string, call: (redis: ScriptedRedis) => Promise<T>): Promise<T> {
    return this.connection.run(operation, call);
  }

  /**
   * A script call that must not act twice: it gets a reply key of its own, and every resend of it the same
   * arguments, so that a resend after a lost reply gets the stored reply of the run that happened.
   */
  private async runOnce(
    operation: string,
    script: ScriptName,
    ref: MessageRef,
    args: readonly string[],
  ): Promise<unknown> {
    const key = this.replies.next();
    const call = this.replies.call([msgId(ref)], key, args);
    let reply: unknown;
    try {
      reply = await this.connection.run(operation, sendScript, script, call);
    } catch (error) {
      this.replies.done(key);
      throw error;
    }
    if (reply !== NO_STORED_REPLY[script]) this.replies.done(key);
    return reply;
  }
}
