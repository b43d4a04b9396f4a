import { Outcome } from '@beetle/core';
import { describe, expect, it } from 'vitest';
import { RequeuePacing, isNotReady } from '../src/requeue.js';

const notYet = { outcome: Outcome.HandlerNotYetTimedOut, readyAt: undefined };
const locked = { outcome: Outcome.MutexLocked, readyAt: undefined };

describe('RequeuePacing (the hold of copies of a message that is not ready)', () => {
  it('doubles per sighting of the same message from the base up to the cap; other messages start at the base', () => {
    const pacing = new RequeuePacing(1000, 10_000);
    const holds = Array.from({ length: 7 }, (_, i) => pacing.holdMs('m1', locked, i * 1000));
    expect(holds).toEqual([1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
    expect(pacing.holdMs('m2', locked, 7000)).toBe(1000);
  });

  it('HandlerNotYetTimedOut: the first sighting (the twin racing a running handler) is held 50 ms only', () => {
    const pacing = new RequeuePacing(1000, 10_000);
    const holds = Array.from({ length: 5 }, (_, i) => pacing.holdMs('m1', notYet, i * 1000));
    expect(holds).toEqual([50, 2000, 4000, 8000, 10_000]);
    // Never longer than the base delay.
    expect(new RequeuePacing(20, 10_000).holdMs('m2', notYet, 0)).toBe(20);
    // Dead lettering already sends the first sighting back at once.
    expect(new RequeuePacing(1000, 10_000).holdMs('m3', notYet, 0, true)).toBe(0);
  });

  it('Delayed: holds until the retry time the store gave, at least the base, at most the cap', () => {
    const pacing = new RequeuePacing(1000, 10_000);
    expect(pacing.holdMs('m', { outcome: Outcome.Delayed, readyAt: 105 }, 100_000)).toBe(5000);
    expect(pacing.holdMs('m', { outcome: Outcome.Delayed, readyAt: 100 }, 100_400)).toBe(1000);
    expect(pacing.holdMs('m', { outcome: Outcome.Delayed, readyAt: 200 }, 100_000)).toBe(10_000);
  });

  it('never holds a not-yet-timed-out copy past the time the running handler counts as timed out', () => {
    const pacing = new RequeuePacing(1000, 10_000);
    for (let i = 0; i < 4; i++) pacing.holdMs('m', notYet, 0);
    expect(pacing.holdMs('m', { ...notYet, readyAt: 3 }, 0)).toBe(3000);
  });

  it('skipFirst (dead lettering): the first sighting goes back at once, later ones back off from the base', () => {
    const pacing = new RequeuePacing(1000, 10_000);
    const holds = Array.from({ length: 4 }, () => pacing.holdMs('m', notYet, 0, true));
    expect(holds).toEqual([0, 1000, 2000, 4000]);
  });

  it('starts over after a long silence, and remembers at most maxEntries messages', () => {
    const pacing = new RequeuePacing(1000, 10_000, 3);
    pacing.holdMs('m', locked, 0);
    expect(pacing.holdMs('m', locked, 1000)).toBe(2000);
    // The horizon is 2 × cap + 60 s.
    expect(pacing.holdMs('m', locked, 1000 + 80_001)).toBe(1000);
    for (const key of ['a', 'b', 'c', 'd']) pacing.holdMs(key, locked, 90_000);
    expect(pacing.size).toBe(3);
    // "m" was the least recently seen: forgotten, back at the base.
    expect(pacing.holdMs('m', locked, 90_000)).toBe(1000);
    expect(pacing.size).toBe(3);
  });

  it('paces only not-ready outcomes', () => {
    expect(isNotReady({ outcome: Outcome.MutexLocked, readyAt: undefined })).toBe(true);
    expect(isNotReady({ outcome: Outcome.Delayed, readyAt: 5 })).toBe(true);
    expect(isNotReady({ outcome: Outcome.HandlerCrash, readyAt: undefined })).toBe(false);
    expect(isNotReady({ outcome: Outcome.InternalError, readyAt: undefined })).toBe(false);
    expect(isNotReady(undefined)).toBe(false);
  });
});
