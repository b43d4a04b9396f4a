import { sleep } from '@beetle/core/kit';
import { ScanInterruptedError } from './errors.js';

/** Escapes the characters with a meaning in Redis glob patterns, so that `text` matches literally. */
export const escapeGlob = (text: string): string => text.replace(/[*?[\]\\^-]/g, (char) => `\\${char}`);

/** One SCAN call: the next cursor and the keys of this batch. */
export type ScanPage = (cursor: string) => Promise<readonly [string, string[]]>;

export interface ScanLoopOptions {
  /** Milliseconds to wait between two batches (spares a busy Redis). Default 0. */
  readonly pauseMs?: number;
  /** Aborting it ends the scan before the next batch with `ScanInterruptedError`. */
  readonly signal?: AbortSignal;
  /** Runs before each batch, e.g. a look at the master file (rejecting ends the scan). */
  readonly beforeBatch?: () => Promise<void>;
}

/**
 * The batches of a full SCAN, one `page` call each, until the cursor is back at 0. Keys may come more than
 * once (SCAN semantics). The store's and the maintenance tools' scans both run on this loop.
 */
export async function* scanBatches(page: ScanPage, options: ScanLoopOptions = {}): AsyncGenerator<string[]> {
  const { pauseMs = 0, signal, beforeBatch } = options;
  let cursor = '0';
  do {
    if (signal?.aborted === true) throw new ScanInterruptedError();
    if (beforeBatch !== undefined) await beforeBatch();
    const [next, keys] = await page(cursor);
    cursor = next;
    yield keys;
    // A timer that keeps the process alive: the scan is all a maintenance run is waiting for.
    if (cursor !== '0' && pauseMs > 0) await sleep(pauseMs, true);
  } while (cursor !== '0');
}
