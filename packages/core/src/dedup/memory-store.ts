import { toError } from '../kit/timing.js';
import { timeoutAt } from '../retry-policy.js';
import { decideFailure, retryAt } from './decide.js';
import { KEY_SUFFIXES, allKeysOf, keyOf, rubyToI, type KeySuffix, type MessageRef } from './keys.js';
import {
  acksOf,
  type AcknowledgedParams,
  type AcquireParams,
  type AcquireResult,
  type ClaimParams,
  type ClaimResult,
  type CompleteParams,
  type DedupStore,
  type FailParams,
  type FailResult,
  type ReleaseParams,
} from './store.js';

export interface MemoryDedupStoreOptions {
  /** Seconds the `status` key outlives a processed message (Ruby `redis_status_key_expiry_interval`). */
  statusKeyExpiryInterval?: number;
  /**
   * Seconds `status=completed` and `expires` outlive the last ack of a message on the full path, at most until
   * its `expires` + 60 s, at least `statusKeyExpiryInterval`; 0 deletes every key (Ruby). Default 600, as
   * the Redis store's `completedStatusTtl`.
   */
  completedStatusTtl?: number;
  /**
   * Milliseconds clock, injectable for tests of key expiry; also the store's clock for calls that ask for it
   * (`ClaimParams.timeout`, `AcquireParams.timeout`, `FailParams.storeClock`).
   */
  now?: () => number;
}

interface Entry {
  value: string;
  expiresAtMs: number | undefined;
}

/**
 * An in-process store with the same keys and string values as the Redis store. For unit tests and single
 * process setups: it deduplicates only within one process, so it never replaces Redis across consumers.
 */
export class MemoryDedupStore implements DedupStore {
  private readonly entries = new Map<string, Entry>();
  private readonly statusKeyExpiryInterval: number;
  private readonly completedStatusTtl: number;
  private readonly clock: () => number;

  constructor(options: MemoryDedupStoreOptions = {}) {
    this.statusKeyExpiryInterval = options.statusKeyExpiryInterval ?? 0;
    this.completedStatusTtl = options.completedStatusTtl ?? 600;
    this.clock = options.now ?? Date.now;
  }

  /** Number of live keys, for tests and metrics. */
  get size(): number {
    for (const key of [...this.entries.keys()]) this.read(key);
    return this.entries.size;
  }

  markCompletedIfNew(ref: MessageRef): Promise<boolean> {
    if (this.statusKeyExpiryInterval <= 0) return Promise.resolve(true);
    const key = keyOf(ref, 'status');
    if (this.read(key) !== undefined) return Promise.resolve(false);
    this.write(key, 'completed', this.statusKeyExpiryInterval);
    return Promise.resolve(true);
  }

  claim(ref: MessageRef, params: ClaimParams): Promise<ClaimResult> {
    const fresh = (['status', 'expires', 'timeout'] as const).every(
      (s) => this.read(keyOf(ref, s)) === undefined,
    );
    const now = params.timeout === undefined ? undefined : this.storeNow();
    if (fresh) {
      this.write(keyOf(ref, 'status'), 'incomplete');
      this.write(keyOf(ref, 'expires'), String(params.expiresAt));
      const timeout =
        now === undefined || params.timeout === undefined
          ? params.timeoutAt
          : timeoutAt(now, { timeout: params.timeout });
      this.write(keyOf(ref, 'timeout'), String(timeout));
      return Promise.resolve({ first: true, attempts: this.incr(keyOf(ref, 'attempts')) });
    }
    const optionalInt = (suffix: KeySuffix): number | undefined => {
      const value = this.read(keyOf(ref, suffix));
      return value === undefined ? undefined : rubyToI(value);
    };
    return Promise.resolve({
      first: false,
      state: {
        status: this.read(keyOf(ref, 'status')),
        delay: optionalInt('delay'),
        timeout: optionalInt('timeout'),
        attempts: rubyToI(this.read(keyOf(ref, 'attempts'))),
        exceptions: rubyToI(this.read(keyOf(ref, 'exceptions'))),
      },
      ...(now === undefined ? {} : { now }),
    });
  }

  acquire(ref: MessageRef, params: AcquireParams): Promise<AcquireResult> {
    const now = params.timeout === undefined ? params.now : this.storeNow();
    const timeout =
      params.timeout === undefined ? params.timeoutAt : timeoutAt(now, { timeout: params.timeout });
    const mutexKey = keyOf(ref, 'mutex');
    const held = this.read(mutexKey);
    if (held !== undefined && rubyToI(held) + params.staleAfter >= now) {
      return Promise.resolve({ acquired: false });
    }
    this.write(mutexKey, String(now));
    this.write(keyOf(ref, 'timeout'), String(timeout));
    return Promise.resolve({ acquired: true, attempts: this.incr(keyOf(ref, 'attempts')) });
  }

  complete(ref: MessageRef, params: CompleteParams = {}): Promise<void> {
    this.completed(ref, params.expiresAt);
    return Promise.resolve();
  }

  fail(ref: MessageRef, params: FailParams): Promise<FailResult> {
    const exceptions = this.incr(keyOf(ref, 'exceptions'));
    const attempts = rubyToI(this.read(keyOf(ref, 'attempts')));
    const outcome = decideFailure({ attempts, exceptions }, params);
    if (outcome !== 'HandlerCrash') {
      this.completed(ref, params.expiresAt);
      return Promise.resolve({ outcome, attempts, exceptions, delayUntil: undefined });
    }
    const now = params.storeClock === true ? this.storeNow() : params.now;
    const delayUntil = retryAt({ ...params, now }, attempts);
    this.entries.delete(keyOf(ref, 'mutex'));
    this.write(keyOf(ref, 'timeout'), '0');
    this.write(keyOf(ref, 'delay'), String(delayUntil));
    return Promise.resolve({ outcome, attempts, exceptions, delayUntil });
  }

  acknowledged(ref: MessageRef, params: AcknowledgedParams): Promise<void> {
    let acks: number;
    try {
      acks = acksOf(params);
    } catch (error) {
      return Promise.reject(toError(error));
    }
    // No `timeout`: cleaned up already (or never claimed): nothing to count, nothing recreated.
    if (this.read(keyOf(ref, 'timeout')) === undefined) return Promise.resolve();
    // ">= 2 because increments are retried and the counter could exceed two" (Ruby).
    if (params.redundant && this.incr(keyOf(ref, 'ack_count'), acks) < 2) return Promise.resolve();
    this.forget(ref);
    return Promise.resolve();
  }

  /** The cleanup after the last ack (the Redis store's `forget`): every key, or all but the tombstone. */
  private forget(ref: MessageRef): void {
    let ttl = this.statusKeyExpiryInterval;
    const tombstone = this.completedStatusTtl > 0;
    if (tombstone) {
      const expires = this.read(keyOf(ref, 'expires'));
      const kept =
        expires === undefined
          ? this.completedStatusTtl
          : Math.min(this.completedStatusTtl, rubyToI(expires) + 60 - this.storeNow());
      ttl = Math.max(ttl, kept);
    }
    const keep = new Set<string>();
    if (ttl > 0) {
      keep.add(keyOf(ref, 'status'));
      if (tombstone) keep.add(keyOf(ref, 'expires'));
    }
    for (const key of allKeysOf(ref)) if (!keep.has(key)) this.entries.delete(key);
    // Ruby: DEL the other keys, then EXPIRE (a no-op on a key already gone).
    for (const key of keep) {
      const value = this.read(key);
      if (value !== undefined) this.write(key, value, ttl);
    }
  }

  release(ref: MessageRef, params: ReleaseParams): Promise<boolean> {
    const attemptsKey = keyOf(ref, 'attempts');
    if (
      this.read(keyOf(ref, 'status')) !== 'incomplete' ||
      rubyToI(this.read(attemptsKey)) !== params.attempts
    ) {
      return Promise.resolve(false);
    }
    this.incr(attemptsKey, -1);
    this.write(keyOf(ref, 'timeout'), '0');
    this.entries.delete(keyOf(ref, 'mutex'));
    return Promise.resolve(true);
  }

  inspect(ref: MessageRef): Promise<Partial<Record<KeySuffix, string>>> {
    const result: Partial<Record<KeySuffix, string>> = {};
    for (const suffix of KEY_SUFFIXES) {
      const value = this.read(keyOf(ref, suffix));
      if (value !== undefined) result[suffix] = value;
    }
    return Promise.resolve(result);
  }

  /** Seconds to live of a key, -1 without expiry, -2 when missing (Redis `TTL` semantics). */
  ttl(ref: MessageRef, suffix: KeySuffix): number {
    const key = keyOf(ref, suffix);
    if (this.read(key) === undefined) return -2;
    const entry = this.entries.get(key);
    if (entry?.expiresAtMs === undefined) return -1;
    return Math.ceil((entry.expiresAtMs - this.clock()) / 1000);
  }

  /** Always ready: the store is in this process. */
  ping(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.entries.clear();
    return Promise.resolve();
  }

  /** The store's clock in unix seconds. */
  private storeNow(): number {
    return Math.floor(this.clock() / 1000);
  }

  /** `status=completed`, `timeout=0`, and the message's `expires` when known. */
  private completed(ref: MessageRef, expiresAt: number | undefined): void {
    this.write(keyOf(ref, 'status'), 'completed');
    this.write(keyOf(ref, 'timeout'), '0');
    if (expiresAt !== undefined) this.write(keyOf(ref, 'expires'), String(expiresAt));
  }

  private read(key: string): string | undefined {
    const entry = this.entries.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAtMs !== undefined && entry.expiresAtMs <= this.clock()) {
      this.entries.delete(key);
      return undefined;
    }
    return entry.value;
  }

  private write(key: string, value: string, ttlSeconds?: number): void {
    const expiresAtMs = ttlSeconds === undefined ? undefined : this.clock() + ttlSeconds * 1000;
    this.entries.set(key, { value, expiresAtMs });
  }

  private incr(key: string, by = 1): number {
    const entry = this.entries.get(key);
    const next = rubyToI(this.read(key)) + by;
    this.entries.set(key, { value: String(next), expiresAtMs: entry?.expiresAtMs });
    return next;
  }
}
