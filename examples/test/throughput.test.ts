import { describe, expect, it } from 'vitest';
import { main as publishMany } from '../src/publish-many-messages.js';
import { main as throttling } from '../src/throttling.js';
import { testOptions } from './env.js';

describe.concurrent('throughput examples', () => {
  it('publish-many-messages: publishes and consumes all, reports rates', async () => {
    const summary = await publishMany({ ...testOptions(), count: 300 });
    expect(summary.copiesConfirmed).toBe(300);
    expect(summary.handled).toBe(300);
    expect(summary.publishedPerSecond).toBeGreaterThan(0);
    expect(summary.ok).toBe(true);
  });

  it('throttling: the publisher becomes throttled behind a slow consumer, and unthrottled again', async () => {
    const summary = await throttling({
      ...testOptions(),
      count: 150,
      limit: 30,
      handlerMs: 40,
      publishIntervalMs: 2,
    });
    expect(summary.handled).toBe(150);
    expect(summary.becameThrottled).toBe(true);
    expect(summary.transitions.at(-1)?.state).toBe('unthrottled');
    expect(summary.unthrottledAtEnd).toBe(true);
    expect(summary.ok).toBe(true);
  });
});
