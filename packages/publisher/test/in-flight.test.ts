import { describe, expect, it } from 'vitest';
import { PublishTimeoutError } from '@beetle/core';
import type { Clock } from '@beetle/core/kit';
import { InFlight } from '../src/in-flight.js';

/** Time moves only with `advance`, which fires the due timers in order. */
class ManualClock implements Clock {
  ms = 1_000_000;
  private timers: { at: number; fire: () => void }[] = [];
  now = (): number => Math.floor(this.ms / 1000);
  nowMs = (): number => this.ms;
  setTimeout = (fire: () => void, ms: number): unknown => {
    const timer = { at: this.ms + ms, fire };
    this.timers.push(timer);
    return timer;
  };
  clearTimeout = (handle: unknown): void => {
    this.timers = this.timers.filter((t) => t !== handle);
  };
  get pending(): number {
    return this.timers.length;
  }
  advance(ms: number): void {
    const until = this.ms + ms;
    for (;;) {
      const next = this.timers.filter((t) => t.at <= until).sort((a, b) => a.at - b.at)[0];
      if (next === undefined) break;
      this.timers = this.timers.filter((t) => t !== next);
      this.ms = next.at;
      next.fire();
    }
    this.ms = until;
  }
}

describe('InFlight', () => {
  it('rejects a publish at its deadline (one timer for all), keeping its slot until the work settles', () => {
    const clock = new ManualClock();
    const window = new InFlight(2, 5, clock);
    const rejected: { name: string; error: Error }[] = [];
    expect(window.tryAcquire()).toBe(true);
    const late = window.enter('late', window.deadline(), (error) => rejected.push({ name: 'late', error }));
    clock.advance(1000);
    expect(window.tryAcquire()).toBe(true);
    const quick = window.enter('quick', window.deadline(), (error) =>
      rejected.push({ name: 'quick', error }),
    );
    expect(clock.pending).toBe(1);
    window.leave(quick);
    clock.advance(3999);
    expect(rejected).toEqual([]);
    clock.advance(1);
    expect(rejected.map((r) => r.name)).toEqual(['late']);
    expect(rejected[0]!.error).toBeInstanceOf(PublishTimeoutError);
    expect(rejected[0]!.error.message).toBe('publish of late did not complete within 5s (outcome unknown)');
    // The slot is still taken: the work goes on, bounded by the broker timeouts.
    expect(window.inUse).toBe(1);
    window.leave(late);
    expect([window.inUse, clock.pending]).toEqual([0, 0]);
  });

  it('a caller waits for a slot within the publish timeout, then gets PublishTimeoutError', async () => {
    const window = new InFlight(1, 0.05);
    expect(window.tryAcquire()).toBe(true);
    expect(window.tryAcquire()).toBe(false);
    await expect(window.acquire('m')).rejects.toThrow(
      'publish of m: no free in-flight slot (publisherMaxInFlight 1) within 0.05s',
    );
    const waiting = window.acquire('m');
    expect(window.waiting).toBe(1);
    window.leave(window.enter('m', window.deadline(), () => undefined));
    await expect(waiting).resolves.toBeUndefined();
    expect(window.inUse).toBe(1);
  });

  it('idle resolves once nothing runs, or after its timeout with the number still running', async () => {
    const window = new InFlight(2, 5);
    expect(await window.idle(10)).toBe(0);
    window.tryAcquire();
    const entry = window.enter('m', window.deadline(), () => undefined);
    expect(await window.idle(10)).toBe(1);
    const idle = window.idle(5000);
    window.leave(entry);
    expect(await idle).toBe(0);
  });
});
