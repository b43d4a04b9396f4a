import { describe } from 'vitest';
import { claimContract } from './contract/claim.js';
import { completedStatusContract } from './contract/completed-status.js';
import { completionContract, lateCompletionContract } from './contract/completion.js';
import { concurrencyContract } from './contract/concurrency.js';
import { statusExpiryContract } from './contract/expiry.js';
import { acquireContract } from './contract/mutex.js';
import { pingContract } from './contract/ping.js';
import { releaseContract } from './contract/release.js';
import { failContract } from './contract/retry.js';
import { storeClockContract } from './contract/store-clock.js';
import type { DedupStoreFactory } from './contract/types.js';

export type { DedupStoreFactory, DedupStoreFactoryOptions, DedupStoreUnderTest } from './contract/types.js';

/**
 * The behaviour every `DedupStore` must show, derived from Ruby Beetle's deduplication store: key schema and
 * value encodings, the state-machine steps, the failure decision, acknowledgement counting, status-key expiry,
 * the mutex, and atomicity under concurrent calls. One file per step in `contract/`.
 *
 * ```ts
 * import { describeDedupStoreContract } from '@beetle/core/testing';
 * describeDedupStoreContract('MyStore', (options) => new MyStore(options));
 * ```
 */
export function describeDedupStoreContract(name: string, factory: DedupStoreFactory): void {
  describe(`DedupStore contract: ${name}`, () => {
    claimContract(factory);
    completionContract(factory);
    completedStatusContract(factory);
    statusExpiryContract(factory);
    failContract(factory);
    acquireContract(factory);
    storeClockContract(factory);
    lateCompletionContract(factory);
    releaseContract(factory);
    pingContract(factory);
    concurrencyContract(factory);
  });
}
