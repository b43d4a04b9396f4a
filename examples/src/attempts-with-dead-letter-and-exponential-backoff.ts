/**
 * Exponential backoff with dead lettering (Ruby `examples/attempts_with_dead_letter_and_exponential_backoff.rb`):
 * as `attempts-with-exponential-backoff`, but the queue has a dead letter queue (`<queue>_dead_letter`,
 * message TTL 1000 ms, set up as policies through the management API). A rejected delivery waits there for
 * the TTL and returns to the tail of the queue with an `x-death` header, instead of being requeued.
 *
 *   npx tsx examples/src/attempts-with-dead-letter-and-exponential-backoff.ts
 */
import { runBackoff, type BackoffOptions, type BackoffSummary } from './attempts-with-exponential-backoff.js';
import { runIfScript } from './support.js';

export type { BackoffOptions, BackoffSummary };

export function main(options: BackoffOptions = {}): Promise<BackoffSummary> {
  return runBackoff('attempts-with-dead-letter-and-exponential-backoff', options, true);
}

runIfScript(import.meta.url, () => main());
