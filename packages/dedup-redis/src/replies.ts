import { randomBytes } from 'node:crypto';

/** Most reply keys one call deletes (bounds the call's size; the rest go with later calls). */
const MAX_FORGOTTEN_PER_CALL = 100;

/** Most reply keys waiting to be deleted; beyond that they are left to expire (bounds the memory). */
const MAX_FORGOTTEN = 10_000;

/**
 * The reply keys of the store's non-idempotent script calls (see `LUA_REPLY` in the scripts): one key per
 * call, generated before the call is first sent and sent unchanged with every resend, so that a script which
 * already ran answers a resend with its stored reply instead of acting twice.
 *
 * A key is needed only while its call may still be resent. Once the reply has arrived (or the call gave up)
 * the key is handed to a later call, which deletes it in the same script run: no extra round trip, and the
 * keys in Redis stay about as many as the calls in flight. The TTL (a bit over the failover timeout, the
 * longest a call is resent) removes the keys of calls that never came back, or of a process that died.
 */
export class ReplyKeys {
  /** Unique per store instance: the keys of different processes never meet. */
  private readonly prefix = `beetle:reply:${randomBytes(12).toString('base64url')}:`;
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
   * The arguments that start a script call: its reply key ('' for a call that is harmless to repeat), the
   * TTL, and the reply keys to delete. Built once per call: a resend carries the same arguments.
   */
  header(key: string): string[] {
    if (this.forgotten.length === 0) return [key, this.ttl, '0'];
    const forget =
      this.forgotten.length <= MAX_FORGOTTEN_PER_CALL
        ? this.forgotten
        : this.forgotten.splice(0, MAX_FORGOTTEN_PER_CALL);
    if (forget === this.forgotten) this.forgotten = [];
    return [key, this.ttl, String(forget.length), ...forget];
  }

  /** The call of `key` is over (replied or given up): no resend will look for its reply any more. */
  done(key: string): void {
    if (this.forgotten.length < MAX_FORGOTTEN) this.forgotten.push(key);
  }
}
