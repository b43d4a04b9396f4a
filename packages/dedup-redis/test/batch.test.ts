import { describe, expect, it } from 'vitest';
import { Batcher } from '@beetle/core/kit';

/** A batcher whose batches are recorded and answered by `answer`; flushes when the test calls `flush`. */
function batcher(
  answer: (items: readonly number[]) => Promise<readonly (string | Error)[]>,
  maxItems = 3,
): { batcher: Batcher<number, string>; batches: number[][]; flush: () => void } {
  const batches: number[][] = [];
  let scheduled: (() => void) | undefined;
  const b = new Batcher<number, string>(
    (items) => {
      batches.push([...items]);
      return answer(items);
    },
    maxItems,
    (flush) => {
      expect(scheduled).toBeUndefined(); // one flush scheduled at a time
      scheduled = flush;
    },
  );
  return {
    batcher: b,
    batches,
    flush: () => {
      const run = scheduled;
      scheduled = undefined;
      run?.();
    },
  };
}

const echo = (items: readonly number[]): Promise<string[]> => Promise.resolve(items.map((n) => `r${n}`));

describe('Batcher', () => {
  it('sends the items added before a flush together and gives each its own result', async () => {
    const { batcher: b, batches, flush } = batcher(echo);
    const results = [b.add(1), b.add(2)];
    expect(batches).toEqual([]); // nothing sent before the scheduled flush
    flush();
    expect(await Promise.all(results)).toEqual(['r1', 'r2']);
    expect(batches).toEqual([[1, 2]]);
    // A later item goes in a new batch.
    const later = b.add(3);
    flush();
    expect(await later).toBe('r3');
    expect(batches).toEqual([[1, 2], [3]]);
  });

  it('splits a flush into batches of at most maxItems', async () => {
    const { batcher: b, batches, flush } = batcher(echo, 3);
    const results = [1, 2, 3, 4, 5, 6, 7].map((n) => b.add(n));
    flush();
    expect(await Promise.all(results)).toEqual(['r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7']);
    expect(batches).toEqual([[1, 2, 3], [4, 5, 6], [7]]);
  });

  it('an Error result fails that item alone', async () => {
    const { batcher: b, flush } = batcher((items) =>
      Promise.resolve(items.map((n) => (n === 2 ? new Error('bad 2') : `r${n}`))),
    );
    const results = [1, 2, 3].map((n) => b.add(n));
    flush();
    expect(await Promise.allSettled(results)).toEqual([
      { status: 'fulfilled', value: 'r1' },
      { status: 'rejected', reason: new Error('bad 2') },
      { status: 'fulfilled', value: 'r3' },
    ]);
  });

  it('a failed send fails every item of that batch, and only of that batch', async () => {
    const { batcher: b, flush } = batcher(
      (items) => (items.includes(4) ? Promise.reject(new Error('down')) : echo(items)),
      3,
    );
    const results = [1, 2, 3, 4, 5].map((n) => b.add(n));
    flush();
    const settled = await Promise.allSettled(results);
    expect(settled.map((s) => s.status)).toEqual([
      'fulfilled',
      'fulfilled',
      'fulfilled',
      'rejected',
      'rejected',
    ]);
  });

  it('a reply with the wrong number of results fails the batch', async () => {
    const { batcher: b, flush } = batcher(() => Promise.resolve(['only one']));
    const results = [b.add(1), b.add(2)];
    flush();
    for (const result of results) await expect(result).rejects.toThrow('a batch of 2 got 1 results');
    for (const result of results) await expect(result).rejects.toMatchObject({ reason: 'internal' });
  });
});
