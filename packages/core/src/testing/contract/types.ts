import type { KeySuffix, MessageRef } from '../../dedup/keys.js';
import type { DedupStore } from '../../dedup/store.js';

/** What the contract suite asks a factory for. */
export interface DedupStoreFactoryOptions {
  /** Seconds the `status` key outlives a processed message (Ruby `redis_status_key_expiry_interval`). */
  readonly statusKeyExpiryInterval: number;
  /**
   * Seconds `status=completed` and `expires` outlive the last ack of a message on the full path, at most until
   * its `expires` + 60 s, at least `statusKeyExpiryInterval` (`redisCompletedStatusTtl`); 0 deletes every key.
   */
  readonly completedStatusTtl: number;
}

/**
 * A store under test plus optional hooks that read (or write) its keys behind its back. Stores that keep Ruby
 * Beetle's keys should provide them so the suite can check exact key names, values and TTLs.
 */
export interface DedupStoreUnderTest {
  readonly store: DedupStore;
  /** Every stored key of the message (`msgid:<queue>:<uuid>:*`), full key name → raw value. */
  rawKeys?(ref: MessageRef): Promise<Record<string, string>> | Record<string, string>;
  /** Seconds to live of one key with Redis `TTL` semantics: -1 without expiry, -2 when missing. */
  ttl?(ref: MessageRef, suffix: KeySuffix): Promise<number> | number;
  /** Writes raw values (as Ruby would: plain strings, no TTL), for states the interface cannot reach. */
  seed?(ref: MessageRef, values: Partial<Record<KeySuffix, string>>): Promise<void> | void;
  /**
   * The store's own clock in unix seconds, for a store that decides with a clock shared by its consumers when
   * asked to (`ClaimParams.timeout`, `AcquireParams.timeout`, `FailParams.storeClock`; Redis: `TIME`). The
   * tests of that run only with this hook.
   */
  storeClock?(): Promise<number> | number;
  /** Releases the store after each test; defaults to `store.close()`. */
  dispose?(): Promise<void> | void;
}

/** Creates a fresh store for each test; may return the bare store when it has no hooks. */
export type DedupStoreFactory = (
  options: DedupStoreFactoryOptions,
) => DedupStore | DedupStoreUnderTest | Promise<DedupStore | DedupStoreUnderTest>;
