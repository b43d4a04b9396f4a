import { describe, expect, it } from 'vitest';
import { main as attempts } from '../src/attempts.js';
import { main as deadLetterBackoff } from '../src/attempts-with-dead-letter-and-exponential-backoff.js';
import { main as backoff } from '../src/attempts-with-exponential-backoff.js';
import { testOptions } from './env.js';

describe.concurrent('retry examples', () => {
  it('attempts: exceptions 10 → exactly 11 runs, the failure hook once', async () => {
    const summary = await attempts({ ...testOptions(), config: { rejectRequeueDelay: 0.05 } });
    expect(summary.runs).toBe(11);
    expect(summary.errorHooks).toBe(11);
    expect(summary.failureHooks).toBe(1);
    expect(summary.finalOutcome).toBe('AttemptsLimitReached');
    expect(summary.ok).toBe(true);
  });

  it('attempts-with-exponential-backoff: runs exceptions + 1 times with growing waits', async () => {
    const summary = await backoff({ ...testOptions(), exceptions: 2, delay: 1, maxDelay: 4 });
    expect(summary.scheduledDelays).toEqual([2, 4]);
    expect(summary.runs).toBe(3);
    expect(summary.finalOutcome).toBe('AttemptsLimitReached');
    // Beetle counts whole seconds: a wait of n seconds lasts more than n - 1.
    expect(summary.gapsMs[0]).toBeGreaterThan(1000);
    expect(summary.gapsMs[1]).toBeGreaterThan(3000);
    expect(summary.ok).toBe(true);
  });

  it('attempts-with-dead-letter-and-exponential-backoff: retries come back through the dead letter queue', async () => {
    const summary = await deadLetterBackoff({ ...testOptions(), exceptions: 2, delay: 1, maxDelay: 4 });
    expect(summary.deadLettering).toBe(true);
    expect(summary.runs).toBe(3);
    expect(summary.xDeathDeliveries).toBe(2);
    expect(summary.gapsMs[1]).toBeGreaterThan(3000);
    expect(summary.ok).toBe(true);
  });
});
