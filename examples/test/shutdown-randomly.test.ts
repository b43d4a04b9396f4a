import { describe, expect, it } from 'vitest';
import { main } from '../src/consume-many-messages-and-shutdown-randomly.js';
import { testOptions } from './env.js';

describe('consume-many-messages-and-shutdown-randomly', () => {
  it('stops and kills consumer processes at random: no message completes twice, none is lost', async () => {
    const summary = await main({
      ...testOptions(),
      count: 200,
      workers: 2,
      chaosMs: 5000,
      shutdownEveryMs: [700, 1500],
      killRatio: 0.5,
      handlerTimeout: 1,
    });
    expect(summary.duplicates).toEqual([]);
    expect(summary.lost).toEqual([]);
    expect(summary.failed).toBe(0);
    expect(summary.queuesEmpty).toBe(true);
    expect(summary.completed + summary.completedButUnrecorded.length).toBe(200);
    expect(summary.workersStarted).toBeGreaterThan(2);
    expect(summary.ok).toBe(true);
  }, 120_000);
});
