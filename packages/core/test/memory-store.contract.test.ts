import { describeDedupStoreContract } from '../src/testing/index.js';
import { keyOf, type KeySuffix, type MessageRef } from '../src/dedup/keys.js';
import { MemoryDedupStore } from '../src/dedup/memory-store.js';

/** The store's private key map, reached only to seed states the interface cannot produce. */
interface MemoryInternals {
  entries: Map<string, { value: string; expiresAtMs: number | undefined }>;
}

describeDedupStoreContract('MemoryDedupStore', ({ statusKeyExpiryInterval, completedStatusTtl }) => {
  const store = new MemoryDedupStore({ statusKeyExpiryInterval, completedStatusTtl });
  const internals = store as unknown as MemoryInternals;
  return {
    store,
    ttl: (ref: MessageRef, suffix: KeySuffix) => store.ttl(ref, suffix),
    storeClock: () => Math.floor(Date.now() / 1000),
    seed: (ref: MessageRef, values: Partial<Record<KeySuffix, string>>) => {
      for (const [suffix, value] of Object.entries(values)) {
        internals.entries.set(keyOf(ref, suffix as KeySuffix), { value, expiresAtMs: undefined });
      }
    },
  };
});
