import { describe, expect, it } from 'vitest';
import { decideFailure, retryAt } from '../src/dedup/decide.js';
import { rubyToI, parseKey, keyOf, allKeysOf } from '../src/dedup/keys.js';
import { allOutcomes, isFailureOutcome, isRejectOutcome } from '../src/outcomes.js';
import { isSimple, nextDelay, retryPolicy, timeoutAt } from '../src/retry-policy.js';

describe('retryPolicy (Ruby Message#setup)', () => {
  it('uses Ruby defaults', () => {
    expect(retryPolicy()).toEqual({
      timeout: 600,
      delay: 10,
      maxDelay: undefined,
      attemptsLimit: 1,
      exceptionsLimit: 0,
    });
  });

  it('raises attempts to exceptions + 1', () => {
    expect(retryPolicy({ exceptions: 2 }).attemptsLimit).toBe(3);
    expect(retryPolicy({ attempts: 5, exceptions: 2 }).attemptsLimit).toBe(5);
    expect(retryPolicy({ attempts: 2, exceptions: 2 }).attemptsLimit).toBe(3);
  });

  it('enables backoff only when maxDelay >= 2 * delay, rounding up', () => {
    expect(retryPolicy({ delay: 3, maxDelay: 5 }).maxDelay).toBeUndefined();
    expect(retryPolicy({ delay: 2.2, maxDelay: 6 }).maxDelay).toBe(6);
    expect(retryPolicy({ delay: 2.2 }).delay).toBe(3);
  });

  it('computes Ruby backoff: 4, 7, 13, 25 and capped 4, 7, 11, 11 (now 1, delay 3)', () => {
    const exp = retryPolicy({ delay: 3, maxDelay: 30 });
    expect([0, 1, 2, 3].map((n) => 1 + nextDelay(exp, n))).toEqual([4, 7, 13, 25]);
    const capped = retryPolicy({ delay: 3, maxDelay: 10 });
    expect([0, 1, 2, 3].map((n) => 1 + nextDelay(capped, n))).toEqual([4, 7, 11, 11]);
    expect(nextDelay(retryPolicy({ delay: 3 }), 5)).toBe(3);
  });

  it('rejects negative or non-numeric options', () => {
    expect(() => retryPolicy({ delay: -1 })).toThrow(/delay/);
    expect(() => retryPolicy({ attempts: Number.NaN })).toThrow(/attempts/);
  });

  it('knows the simple path and timeouts', () => {
    expect(isSimple(false, retryPolicy())).toBe(true);
    expect(isSimple(true, retryPolicy())).toBe(false);
    expect(isSimple(false, retryPolicy({ attempts: 2 }))).toBe(false);
    expect(timeoutAt(100, retryPolicy({ timeout: 0.5 }))).toBe(101);
  });
});

describe('decideFailure (Ruby handler_failed! order)', () => {
  const limits = { attemptsLimit: 3, exceptionsLimit: 1, accepted: true };
  it('checks attempts, then exceptions, then retry_on', () => {
    expect(decideFailure({ attempts: 3, exceptions: 5 }, { ...limits, accepted: false })).toBe(
      'AttemptsLimitReached',
    );
    expect(decideFailure({ attempts: 2, exceptions: 2 }, { ...limits, accepted: false })).toBe(
      'ExceptionsLimitReached',
    );
    expect(decideFailure({ attempts: 1, exceptions: 1 }, { ...limits, accepted: false })).toBe(
      'ExceptionNotAccepted',
    );
    expect(decideFailure({ attempts: 1, exceptions: 1 }, limits)).toBe('HandlerCrash');
  });
  it('schedules the retry after nextDelay(attempts): Ruby worked example delay 42 at now 10 → 52', () => {
    expect(retryAt({ now: 10, delay: 42, maxDelay: undefined }, 1)).toBe(52);
  });
});

describe('keys', () => {
  it('follows msgid:<queue>:<uuid>:<suffix> with status first', () => {
    const ref = { queue: 'q', uuid: 'ab-12' };
    expect(keyOf(ref, 'ack_count')).toBe('msgid:q:ab-12:ack_count');
    expect(allKeysOf(ref)[0]).toBe('msgid:q:ab-12:status');
    expect(allKeysOf(ref)).toHaveLength(8);
    expect(parseKey('msgid:q:ab-12:expires')).toEqual({
      msgId: 'msgid:q:ab-12',
      queue: 'q',
      uuid: 'ab-12',
      suffix: 'expires',
    });
    expect(parseKey('other')).toBeUndefined();
  });
  it('reads numbers like Ruby to_i', () => {
    expect(rubyToI('12abc')).toBe(12);
    expect(rubyToI('10.5')).toBe(10);
    expect(rubyToI('x')).toBe(0);
    expect(rubyToI(null)).toBe(0);
  });
});

describe('outcomes', () => {
  it('carries Ruby RC reject/failure flags', () => {
    const rejects = allOutcomes.filter(isRejectOutcome);
    const failures = allOutcomes.filter(isFailureOutcome);
    expect(rejects.sort()).toEqual([
      'Delayed',
      'HandlerCrash',
      'HandlerNotYetTimedOut',
      'InternalError',
      'MutexLocked',
    ]);
    expect(failures.sort()).toEqual([
      'AttemptsLimitReached',
      'DecodingError',
      'ExceptionNotAccepted',
      'ExceptionsLimitReached',
      'PreprocessingError',
    ]);
  });
});
