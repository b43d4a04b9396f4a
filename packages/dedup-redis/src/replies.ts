import { randomBytes } from 'node:crypto';

/**
 * Reply keys are deleted in groups of at least this many, by one DEL in a later call: each write in a script
 * costs Redis a few microseconds (it is also replicated), and one DEL per call would double the cost of the
 * replies. Beyond the keys of the calls in flight, fewer than this many wait for their group.
 */
const FORGET_BATCH = 16;

/** Most reply keys one call deletes (bounds the call's size; the rest go with later calls). */
const MAX_FORGOTTEN_PER_CALL = 100;

/** Most reply keys waiting to be deleted; beyond that they are left to expire (bounds the memory). */
const MAX_FORGOTTEN = 10_000;

/**
 * The reply keys of the store's non-idempotent script calls (see `luaReply` in the scripts): one key per
 * call, generated before the call is first sent and sent unchanged with every resend, so that a script which
 * already ran answers a resend with its stored reply instead of acting twice.
 *
 * A key is needed only while its call may still be resent. Once the reply has arrived (or the call gave up)
 * the key is handed to a later call, which deletes it (with others, see FORGET_BATCH) in the same script run:
 * no extra round trip, and the keys in Redis stay about as many as the calls in flight. The TTL (a bit over
 * the failover timeout, the longest a call is resent) removes the keys of calls that never came back, or of
 * a process that died.
 */
export class ReplyKeys {
  /** Unique per store instance: the keys of different processes never meet. */
  private readonly prefix = `beetle:reply:${randomBytes(9).toString('base64url')}:`;
  private counter = 0;
  private forgotten: string[] = [];
  private readonly ttl: string;

  /** @param ttlSeconds how long Redis keeps a stored reply. */
  constructor(ttlSeconds: number) {
    this.ttl = String(Math.max(1, Math.ceil(ttlSeconds)));
  }

  /** The reply key of a new call. */
  next(): string {
    return this.prefix + (this.counter++).toString(36);
  }

  /**
   * The arguments of a script call: `before` (the number of keys and the keys, for a script over several
   * messages; else the message id), the reply key ('' for a call that is harmless to repeat) and TTL, the
   * script's own arguments, and reply keys to delete. Built once per call: a resend sends the same.
   */
  call(before: readonly string[], key: string, own: readonly string[]): OnceCall {
    const args = [...before, key, this.ttl, ...own];
    if (this.forgotten.length >= FORGET_BATCH) {
      if (this.forgotten.length <= MAX_FORGOTTEN_PER_CALL) {
        for (const forgotten of this.forgotten) args.push(forgotten);
        this.forgotten = [];
      } else {
        args.push(...this.forgotten.splice(0, MAX_FORGOTTEN_PER_CALL));
      }
    }
    return new OnceCall(args, before.length + 1);
  }

  /**
   * The call of `key` is over (replied or given up): no resend will look for its reply any more. (A call
   * known to have stored no reply need not say so.)
   */
  done(key: string): void {
    if (this.forgotten.length < MAX_FORGOTTEN) this.forgotten.push(key);
  }
}

/**
 * The arguments of one script call, sent once or more by `RedisConnection.run`: from the second send on the
 * TTL is negative, which tells the script that this is a resend, to look for its stored reply (a first send
 * has none to look for).
 */
export class OnceCall {
  private sent = false;

  /** @param ttlAt where the reply TTL sits in `args`. */
  constructor(
    private readonly args: string[],
    private readonly ttlAt: number,
  ) {}

  /** The arguments for this send. */
  next(): string[] {
    if (this.sent) {
      const ttl = this.args[this.ttlAt] ?? '';
      if (!ttl.startsWith('-')) this.args[this.ttlAt] = `-${ttl}`;
    }
    this.sent = true;
    return this.args;
  }
}
