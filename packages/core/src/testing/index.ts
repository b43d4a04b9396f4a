/**
 * Test helpers for third-party implementations of Beetle's extension points (`@beetle/core/testing`). Needs
 * vitest (an optional peer dependency of `@beetle/core`).
 */
export {
  describeDedupStoreContract,
  type DedupStoreFactory,
  type DedupStoreFactoryOptions,
  type DedupStoreUnderTest,
} from './dedup-store-contract.js';
