import { describe, expect, it } from 'vitest';
import { main as handlerClass } from '../src/handler-class.js';
import { main as handlingExceptions } from '../src/handling-exceptions.js';
import { main as headers } from '../src/headers.js';
import { main as multipleExchanges } from '../src/multiple-exchanges.js';
import { main as multipleQueues } from '../src/multiple-queues.js';
import { main as nonexistentServer } from '../src/nonexistent-server.js';
import { main as pauseAndResume } from '../src/pause-and-resume.js';
import { main as redundant, formatRedundantSummary } from '../src/redundant.js';
import { main as simple } from '../src/simple.js';
import { testOptions } from './env.js';

describe.concurrent('examples against the real services', () => {
  it('simple: publishes one message and handles it', async () => {
    const summary = await simple({ ...testOptions(), text: 'hi there' });
    expect(summary.received).toEqual(['hi there']);
    expect(summary.brokersConfirmed).toBe(1);
    expect(summary.ok).toBe(true);
  });

  it('handler-class: a handler object sums 10 messages, hooks called per message', async () => {
    const summary = await handlerClass(testOptions());
    expect(summary).toMatchObject({
      sum: 55,
      expectedSum: 55,
      completedHooks: 10,
      postProcessHooks: 10,
      ok: true,
    });
  });

  it('handling-exceptions: fails once, error hook once, succeeds on the retry', async () => {
    const summary = await handlingExceptions({ ...testOptions(), config: { rejectRequeueDelay: 0.1 } });
    expect(summary.runs).toBe(2);
    expect(summary.errorHooks).toBe(1);
    expect(summary.failureHooks).toBe(0);
    expect(summary.outcomes).toEqual(['HandlerCrash', 'OK']);
    expect(summary.ok).toBe(true);
  });

  it('headers: string, integer and float arrive, null is dropped', async () => {
    const summary = await headers(testOptions());
    expect(summary.received).toMatchObject({ sender: 'headers-example', count: 42, ratio: 3.25, flags: '0' });
    expect(summary.received).not.toHaveProperty('nothing');
    expect(summary.ok).toBe(true);
  });

  it('multiple-exchanges: one queue receives through both of its bindings', async () => {
    const summary = await multipleExchanges(testOptions());
    expect(summary.bindings).toHaveLength(2);
    expect(summary.received.map((r) => r.key).sort()).toEqual(['first.key', 'second.key']);
    expect(summary.ok).toBe(true);
  });

  it('multiple-queues: both handlers get the message once, from two copies each', async () => {
    const summary = await multipleQueues(testOptions());
    expect(summary.brokersConfirmed).toBe(2);
    expect(Object.values(summary.runs)).toEqual([1, 1]);
    expect(Object.values(summary.deliveries)).toEqual([2, 2]);
    expect(summary.ok).toBe(true);
  });

  it('nonexistent-server: publishing and consuming go on, reconnect attempts are logged', async () => {
    const options = testOptions();
    const summary = await nonexistentServer({ ...options, count: 5, linger: 1500 });
    expect(summary.handled).toBe(5);
    expect(summary.reconnectAttempts).toBeGreaterThanOrEqual(1);
    expect(summary.deadServersOfPublisher).toEqual([summary.deadServer]);
    expect(options.lines.some((l) => l.includes('subscriber could not connect'))).toBe(true);
    expect(summary.ok).toBe(true);
  });

  it('pause-and-resume: nothing new is consumed while paused, everything after the resume', async () => {
    const summary = await pauseAndResume({ ...testOptions(), count: 8, offlineAt: 2, pauseMs: 1000 });
    expect(summary.handled).toBe(8);
    expect(summary.paused && summary.resumed).toBe(true);
    expect(summary.pausedForMs).toBeGreaterThanOrEqual(900);
    expect(summary.handledAfterResume).toBeGreaterThan(0);
    expect(summary.ok).toBe(true);
  });

  it('redundant (the demo): 2 copies per message, each message handled once, no keys left', async () => {
    const summary = await redundant({ ...testOptions(), count: 50 });
    expect(summary.published).toBe(50);
    expect(Object.values(summary.confirmedPerBroker)).toEqual([50, 50]);
    expect(summary.handlerRuns).toBe(50);
    expect(summary.handledOnce).toBe(50);
    expect(summary.handledTwice).toBe(0);
    expect(summary.duplicatesSuppressed).toBe(50);
    expect(summary.redisKeysLeft).toBe(0);
    expect(summary.ok).toBe(true);
    expect(formatRedundantSummary(summary)).toContain('every message was handled exactly once');
  });
});
