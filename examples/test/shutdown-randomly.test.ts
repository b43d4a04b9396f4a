import { describe, expect, it } from 'vitest';
import { main } from '../src/consume-many-messages-and-shutdown-randomly.js';
import { testOptions } from './env.js';

describe('consume-many-messages-and-shutdown-randomly', () => {
  it('stops and kills consumer processes at random: no message completes twice, none is lost', async () => {
    const options = testOptions();
    const summary = await main({
      ...options,
      count: 200,
      workers: 2,
      // Three shutdowns (SIGTERM, SIGKILL, random) as soon as workers are up; the bound is for slow machines.
      shutdowns: 3,
      chaosMs: 30_000,
      shutdownEveryMs: [700, 1500],
      killRatio: 0.5,
      handlerMs: 200,
      handlerTimeout: 1,
    });
    const context = JSON.stringify({ summary, output: options.lines.slice(-40) }, null, 1);
    expect(summary.duplicates, context).toEqual([]);
    expect(summary.lost, context).toEqual([]);
    expect(summary.failed, context).toBe(0);
    expect(summary.queuesEmpty, context).toBe(true);
    expect(summary.completed + summary.completedButUnrecorded.length, context).toBe(200);
    expect(summary.killed, context).toBeGreaterThanOrEqual(1);
    expect(summary.stoppedGracefully, context).toBeGreaterThanOrEqual(1);
    expect(summary.ok, context).toBe(true);
  }, 120_000);
});
