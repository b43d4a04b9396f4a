import type {
  AcknowledgedParams,
  AcquireParams,
  AcquireResult,
  ClaimParams,
  ClaimResult,
  CompleteParams,
  DedupStore,
  FailParams,
  FailResult,
  Logger,
  MessageRef,
  ReleaseParams,
} from '@beetle/core';
import { InvalidArgumentError } from '@beetle/core';
import {
  acksOf,
  allKeysOf,
  amqplibAckFlush,
  Batcher,
  KEY_SUFFIXES,
  msgId,
  parseKey,
  rubyToI,
  type AckFlush,
  type KeySuffix,
  type Schedule,
} from '@beetle/core/kit';
import type { ScriptedRedis } from './client.js';
import {
  claimCall,
  claimResult,
  commandBatcher,
  completeBatch,
  deleteAllBatch,
  failResult,
  forgetBatch,
  MAX_BATCH,
  sendClaim,
  sendScript,
  timeoutArg,
  unexpected,
  type ClaimItem,
  type CompleteItem,
} from './commands.js';
import { RedisConnection } from './connection.js';
import {
  optionsFromConfig,
  storeSettings,
  type RedisDedupStoreConfig,
  type RedisDedupStoreOptions,
} from './options.js';
import { ReplyKeys } from './replies.js';
import { escapeGlob, scanBatches } from './scan.js';
import type { ScriptName } from './scripts.js';

/** A message with an `expires` key, as found by {@link RedisDedupStore.scanExpiries}. */
export interface MessageExpiry {
  readonly msgId: string;
  readonly queue: string;
  readonly uuid: string;
  /** The stored `expires` value (unix seconds). */
  readonly expiresAt: number;
}

/** Calls made in this tick are sent at its end (then written with the connection's next flush). */
const thisTick: Schedule = (flush) => process.nextTick(flush);

/** The replies a script does not store (see the scripts): their reply keys need no deletion. */
const NO_STORED_REPLY: Partial<Record<ScriptName, unknown>> = { beetleAcknowledged: 1 };

/** Seconds a stored reply outlives the failover timeout (after which its call is no longer resent). */
const REPLY_TTL_MARGIN = 60;

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
  /** Seconds `status=completed` outlives the last ack on the full path (see `completedStatusTtl`). */
  readonly completedStatusTtl: number;
  /** `statusKeyExpiryInterval` as the acknowledged script takes it. */
  private readonly intervalArg: string;
  /** `completedStatusTtl` as the scripts take it. */
  private readonly completedTtlArg: string;
  private readonly connection: RedisConnection;
  private readonly replies: ReplyKeys;
  private readonly claims: Batcher<ClaimItem, ClaimResult>;
  private readonly completions: Batcher<CompleteItem, undefined>;
  private readonly deletions: Batcher<MessageRef, undefined>;
  /** Holds back the calls that may delete keys until the broker acks are written. */
  private readonly ackFlush: AckFlush;

  constructor(options: RedisDedupStoreOptions = {}) {
    const settings = storeSettings(options);
    this.statusKeyExpiryInterval = settings.statusKeyExpiryInterval;
    this.intervalArg = String(settings.statusKeyExpiryInterval);
    this.completedStatusTtl = settings.completedStatusTtl;
    this.completedTtlArg = String(settings.completedStatusTtl);
    this.connection = new RedisConnection(settings.connection);
    // A stored reply must outlive every resend of its call: resends stop at the failover timeout.
    const failoverTimeout = settings.failoverTimeout;
    const replies = new ReplyKeys(failoverTimeout + REPLY_TTL_MARGIN);
    this.replies = replies;
    const connection = this.connection;
    this.claims = new Batcher(
      async (items) => {
        // One reply key for the batch: a resend of the whole batch is answered from it.
        const key = replies.next();
        let reply: unknown;
        try {
          reply = await connection.runDurable('claim', sendClaim, claimCall(replies, key, items));
        } finally {
          replies.done(key);
        }
        if (!Array.isArray(reply) || reply.length !== items.length) throw unexpected('claim', reply);
        return reply.map(claimResult);
      },
      MAX_BATCH,
      thisTick,
    );
    this.completions = commandBatcher(connection, 'complete', completeBatch, thisTick, { durable: true });
    this.ackFlush = options.ackFlush ?? amqplibAckFlush;
    // Ruby's plain DEL when nothing outlives the cleanup, else the forget script (same single round trip).
    const keepsStatus = settings.statusKeyExpiryInterval > 0 || settings.completedStatusTtl > 0;
    // A tick's cleanups close into one batch, which waits until the acks issued before it are written: a
    // batch left open until the ack flush would take in cleanups whose acks came later.
    const gate = { gate: this.ackFlush };
    this.deletions = keepsStatus
      ? commandBatcher(
          connection,
          'acknowledged',
          forgetBatch(this.intervalArg, this.completedTtlArg),
          thisTick,
          gate,
        )
      : commandBatcher(connection, 'acknowledged', deleteAllBatch, thisTick, gate);
  }

  /** A store configured from core's configuration fields (Ruby names and units). */
  static fromConfig(
    config: RedisDedupStoreConfig,
    extra: { readonly logger?: Logger; readonly ackFlush?: AckFlush } = {},
  ): RedisDedupStore {
    return new RedisDedupStore(optionsFromConfig(config, extra));
  }

  /** The `host:port` the store is connected (or connecting) to, if any. */
  get currentServer(): string | undefined {
    return this.connection.currentAddress;
  }

  async markCompletedIfNew(ref: MessageRef): Promise<boolean> {
    const interval = this.statusKeyExpiryInterval;
    if (interval <= 0) return true;
    const reply = await this.runOnce('markCompletedIfNew', 'beetleMarkCompleted', ref, [String(interval)], {
      durable: true,
    });
    if (reply !== 0 && reply !== 1) throw unexpected('markCompletedIfNew', reply);
    return reply === 1;
  }

  claim(ref: MessageRef, params: ClaimParams): Promise<ClaimResult> {
    return this.claims.add({ ref, params });
  }

  async acquire(ref: MessageRef, params: AcquireParams): Promise<AcquireResult> {
    const reply = await this.runOnce(
      'acquire',
      'beetleAcquire',
      ref,
      [String(params.now), timeoutArg(params.timeoutAt, params.timeout), String(params.staleAfter)],
      { durable: true },
    );
    if (typeof reply !== 'number') throw unexpected('acquire', reply);
    return reply > 0 ? { acquired: true, attempts: reply } : { acquired: false };
  }

  complete(ref: MessageRef, params: CompleteParams = {}): Promise<void> {
    // Ruby's `completed!`, a single command (shared with the other completions of the tick). Harmless to
    // resend: it writes the same values again.
    return this.completions.add({ ref, expiresAt: params.expiresAt });
  }

  async fail(ref: MessageRef, params: FailParams): Promise<FailResult> {
    const reply = await this.runOnce(
      'fail',
      'beetleFail',
      ref,
      [
        String(params.attemptsLimit),
        String(params.exceptionsLimit),
        params.accepted ? '1' : '0',
        params.storeClock === true ? '' : String(params.now),
        String(params.delay),
        params.maxDelay === undefined ? '' : String(params.maxDelay),
        params.expiresAt === undefined ? '' : String(params.expiresAt),
      ],
      { durable: true },
    );
    return failResult(reply);
  }

  async acknowledged(ref: MessageRef, params: AcknowledgedParams): Promise<void> {
    const acks = acksOf(params);
    // Nothing to count: a non-redundant message, or both acks of a redundant one at once (the count reaches 2
    // whatever it was). Batched with the other cleanups of the tick: Ruby's DEL of all keys, or the tombstone.
    if (!params.redundant || acks >= 2) {
      await this.deletions.add(ref);
      return;
    }
    await new Promise<void>((resolve) => this.ackFlush(resolve));
    // A count: a resend is answered from the stored reply (counted twice, one ack would delete the keys).
    await this.runOnce('acknowledged', 'beetleAcknowledged', ref, [
      '1',
      this.intervalArg,
      String(acks),
      this.completedTtlArg,
    ]);
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

  /**
   * Round trip to the current master (Ruby `ping`, `DedupStore.ping`): resolves once Redis answers, within
   * the failover timeout, else rejects with `NoRedisMasterError`.
   */
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
  private scanBatches(match: string, count: number): AsyncIterable<string[]> {
    return scanBatches((cursor) =>
      this.run('scan', (redis) => redis.scan(cursor, 'MATCH', match, 'COUNT', count)),
    );
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
    if (parts?.msgId !== msgId)
      throw new InvalidArgumentError(`not a Beetle message id: ${JSON.stringify(msgId)}`);
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
   * arguments, so that a resend after a lost reply gets the stored reply of the run that happened. `durable`:
   * its effect is what the caller acts on (see `RedisConnection.runDurable`).
   */
  private async runOnce(
    operation: string,
    script: ScriptName,
    ref: MessageRef,
    args: readonly string[],
    { durable = false }: { readonly durable?: boolean } = {},
  ): Promise<unknown> {
    const key = this.replies.next();
    const call = this.replies.call([msgId(ref)], key, args);
    let reply: unknown;
    try {
      reply = durable
        ? await this.connection.runDurable(operation, sendScript, script, call)
        : await this.connection.run(operation, sendScript, script, call);
    } catch (error) {
      this.replies.done(key);
      throw error;
    }
    if (reply !== NO_STORED_REPLY[script]) this.replies.done(key);
    return reply;
  }
}
