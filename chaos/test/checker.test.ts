import { describe, expect, it } from 'vitest';
import { Tally, judge, percentile } from '../src/checker.js';
import { FAULTS, planStep } from '../src/nemesis.js';
import { Prng } from '../src/prng.js';

const tallyOf = (lines: string[]): Tally => {
  const tally = new Tally();
  for (const line of lines) tally.add(line);
  return tally;
};

describe('checker', () => {
  it('classifies lost, duplicated, unexpected and indeterminate ids', () => {
    const verdict = judge(
      tallyOf([
        'A ok 1000',
        'C ok 1010 2',
        'D ok 1050 11 1 127.0.0.1:5690',
        'A lost 1000',
        'C lost 1010 2',
        'A dup 1000',
        'C dup 1020 1',
        'D dup 1100 11 1 127.0.0.1:5690',
        'D dup 1200 12 2 127.0.0.1:5691',
        'D ghost 1300 12 1 127.0.0.1:5691',
        'A maybe 1000',
        'F maybe 6000 PublishTimeoutError',
        'D maybe 1400 11 1 127.0.0.1:5690',
        'A gone 1000',
        'F gone 6000 NoMessageSentError',
        'A inflight 1000',
        '',
      ]),
    );
    expect(verdict).toMatchObject({
      attempted: 6,
      confirmed: 3,
      partial: 1,
      unconfirmed: 2,
      unsettled: 1,
      delivered: 4,
      completions: 5,
      lost: 1,
      duplicated: 1,
      unexpected: 1,
      indeterminate: 1,
      lostIds: ['lost'],
      duplicatedIds: [{ id: 'dup', times: 2, pids: [11, 12] }],
      unexpectedIds: ['ghost'],
      malformedRecords: 0,
    });
    // Latency: first completion of each confirmed, completed id (50 ms and 100 ms).
    expect(verdict.latencyMs).toEqual({ p50: 50, p95: 100, p99: 100, max: 100 });
  });

  it('tells a rerun after a kill (completed, killed before processing finished) from a duplicate', () => {
    const verdict = judge(
      tallyOf([
        // pid 11 held "held" and was SIGKILLed; "cut" had completed there, unrecorded: run again by 12.
        'H held 1000 11',
        'A cut 900',
        'C cut 910 2',
        'D cut 1001 11 1 127.0.0.1:5690',
        'D cut 5000 12 2 127.0.0.1:5691',
        'P cut 5001 12 OK 127.0.0.1:5691 acked 1',
        // "done" had also finished processing in pid 11 (P): running it again is a duplicate.
        'A done 900',
        'C done 910 2',
        'D done 950 11 1 127.0.0.1:5690',
        'P done 951 11 OK 127.0.0.1:5690 acked 0',
        'D done 5000 12 1 127.0.0.1:5691',
        // Completed by a pid never killed, then again: a duplicate.
        'A twice 900',
        'C twice 910 2',
        'D twice 5000 12 1 127.0.0.1:5691',
        'D twice 950 13 1 127.0.0.1:5690',
        'A held 900',
        'C held 910 2',
        'D held 6000 12 2 127.0.0.1:5691',
      ]),
    );
    expect(verdict).toMatchObject({ lost: 0, duplicated: 2, rerunAfterKill: 1, unexpected: 0 });
    expect(verdict.duplicatedIds.map((d) => d.id).sort()).toEqual(['done', 'twice']);
  });

  it('counts malformed lines and pending confirmed ids', () => {
    const tally = tallyOf(['A a 1', 'C a 2 2', 'A b 1', 'C b 2 2', 'D a 3 1 1 s', 'X y 1', 'garbage']);
    expect(tally.pending()).toBe(1);
    expect(tally.malformed).toBe(2);
  });

  it('computes nearest-rank percentiles', () => {
    const sorted = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(sorted, 50)).toBe(50);
    expect(percentile(sorted, 99)).toBe(99);
    expect(percentile([], 50)).toBe(0);
  });
});

describe('nemesis plan', () => {
  it('is replayable from the seed', () => {
    const plan = (seed: number) => {
      const prng = new Prng(seed);
      return Array.from({ length: 20 }, (_, n) =>
        planStep(prng, n, { faults: 'mixed', brokers: 3, consumers: 2 }),
      );
    };
    expect(plan(42)).toEqual(plan(42));
    expect(plan(42)).not.toEqual(plan(43));
    const kinds = new Set(plan(42).map((s) => s.kind));
    expect(kinds.size).toBeGreaterThan(3);
    for (const step of plan(7)) expect(FAULTS).toContain(step.kind);
  });

  it('cycles through a fault list and keeps one broker up for n-1-down', () => {
    const prng = new Prng(1);
    const steps = Array.from({ length: 6 }, (_, n) =>
      planStep(prng, n, { faults: ['n-1-down', 'kill-broker'], brokers: 3, consumers: 2 }),
    );
    expect(steps.map((s) => s.kind)).toEqual([
      'n-1-down',
      'kill-broker',
      'n-1-down',
      'kill-broker',
      'n-1-down',
      'kill-broker',
    ]);
    for (const step of steps) {
      if (step.kind === 'n-1-down') expect(new Set(step.targets).size).toBe(2);
      else expect(step.targets).toHaveLength(1);
      for (const target of step.targets) expect(target).toBeGreaterThanOrEqual(0);
      for (const target of step.targets) expect(target).toBeLessThan(3);
    }
  });
});
