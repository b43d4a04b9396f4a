import {
  MemoryDedupStore,
  MessageDecodingError,
  NoRedisMasterError,
  Outcome,
  allOutcomes,
  type DedupStore,
  type Logger,
  type Payload,
  type RawDelivery,
} from '@beetle/core';
import { type EncodeOptions } from '@beetle/core/kit';
import {
  HandlerTimeoutError,
  processDelivery,
  resolveHandler,
  type AnyMessage,
  type CopyKnowledge,
  type Handler,
  type HandlerContext,
  type HandlerMessage,
  type HandlerObject,
  type HandlerOptions,
  type ProcessResult,
} from '@beetle/subscriber';
import { beforeEach, describe, expect, it } from 'vitest';
import { OnceSettler, replyBody } from '../src/settle.js';
import { FakeClock, SettleRecorder, flush, rawDelivery, recordingStore } from './helpers.js';

const QUEUE = 'q';
const SERVER = 'rabbit1:5672';

let clock: FakeClock;
let memory: MemoryDedupStore;
let log: string[];
let store: DedupStore;
let warnings: string[];

const logger: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: (...args: unknown[]) => warnings.push(String(args.find((a) => typeof a === 'string'))),
  error: (...args: unknown[]) => warnings.push(String(args.find((a) => typeof a === 'string'))),
};

beforeEach(() => {
  clock = new FakeClock();
  // Ruby's cleanup (every key deleted), so that tests can check nothing is left; the completed status kept at
  // the defaults is tested by the store contract and completed-status.integration.test.ts.
  memory = new MemoryDedupStore({ now: () => clock.nowMs(), completedStatusTtl: 0 });
  log = [];
  store = recordingStore(memory, log);
  warnings = [];
});

function msg(payload: Payload = 'hello', options: EncodeOptions = {}): RawDelivery {
  return rawDelivery(payload, {
    now: clock.now(),
    messageId: 'a1b2c3d4-0000-4000-8000-000000000001',
    ...options,
  });
}

interface Run {
  result: ProcessResult;
  settler: SettleRecorder;
}

async function run(
  delivery: RawDelivery,
  handler: Handler,
  options: HandlerOptions = {},
  extra: {
    stopSignal?: AbortSignal;
    settler?: SettleRecorder;
    store?: DedupStore;
    copy?: CopyKnowledge;
  } = {},
): Promise<Run> {
  const settler = extra.settler ?? new SettleRecorder(log);
  const result = await processDelivery({
    delivery,
    source: { queue: QUEUE, server: SERVER },
    handler: resolveHandler(handler, options),
    store: extra.store ?? store,
    settler,
    clock,
    logger,
    ...(extra.stopSignal ? { stopSignal: extra.stopSignal } : {}),
    ...(extra.copy ? { copy: extra.copy } : {}),
  });
  return { result, settler };
}

/** A handler object recording every hook into `log`. */
function hooked(process: (message: HandlerMessage, ctx: HandlerContext) => unknown): HandlerObject & {
  seen: { error: unknown[]; failure: Outcome[]; messages: AnyMessage[] };
} {
  const seen = { error: [] as unknown[], failure: [] as Outcome[], messages: [] as AnyMessage[] };
  return {
    seen,
    preProcess: () => {
      log.push('preProcess');
    },
    process: (message, ctx) => {
      log.push('process');
      return process(message, ctx);
    },
    error: (error, message) => {
      log.push('error');
      seen.error.push(error);
      seen.messages.push(message);
    },
    failure: (outcome, message) => {
      log.push(`failure:${outcome}`);
      seen.failure.push(outcome);
      seen.messages.push(message);
    },
    completed: () => {
      log.push('completed');
    },
    postProcess: (message) => {
      log.push('postProcess');
      seen.messages.push(message);
    },
  };
}

const boom = (): never => {
  throw new Error('boom');
};

/** Keys of the message in the store. */
const keys = async (uuid = 'a1b2c3d4-0000-4000-8000-000000000001') => memory.inspect({ queue: QUEUE, uuid });

describe('processing: decode and pre-process failures', () => {
  it('DecodingError: acks, error + failure hooks get a typed undecoded message, no preProcess/completed', async () => {
    const delivery: RawDelivery = {
      content: Buffer.from('raw'),
      fields: { routingKey: 'rk', redelivered: true, exchange: 'x' },
      properties: { messageId: 'm-1' },
    };
    const handler = hooked(() => 'never');
    const { result, settler } = await run(delivery, handler);
    expect(result.outcome).toBe(Outcome.DecodingError);
    expect(log).toEqual(['ack', 'error', 'failure:DecodingError', 'postProcess']);
    expect(settler.acks).toBe(1);
    expect(handler.seen.error[0]).toBeInstanceOf(MessageDecodingError);
    const undecoded = handler.seen.messages[0];
    expect(undecoded).toMatchObject({
      decoded: false,
      uuid: 'm-1',
      queue: QUEUE,
      server: SERVER,
      routingKey: 'rk',
      redelivered: true,
      headers: undefined,
    });
    expect(undecoded?.body.toString()).toBe('raw');
    expect(result.settled).toBe('acked');
  });

  it('DecodingError for garbage headers and an empty body (function handler: errback/failback)', async () => {
    const calls: string[] = [];
    const delivery: RawDelivery = {
      content: Buffer.alloc(0),
      fields: { routingKey: 'rk', redelivered: false, exchange: 'x' },
      properties: { messageId: 'm-2', headers: { format_version: 'one', flags: {}, expires_at: [] } },
    };
    const { result } = await run(delivery, () => calls.push('handler'), {
      errback: (message, error) => calls.push(`errback:${message.decoded}:${(error as Error).name}`),
      failback: (message, outcome) => calls.push(`failback:${message.decoded}:${outcome}`),
    });
    expect(result.outcome).toBe(Outcome.DecodingError);
    expect(calls).toEqual(['errback:false:MessageDecodingError', 'failback:false:DecodingError']);
    expect(log).toEqual(['ack']);
  });

  it('PreprocessingError: acks, error + failure hooks, handler not run, no completed', async () => {
    const handler = hooked(() => 'never');
    const failing: Handler = {
      ...handler,
      preProcess: () => {
        log.push('preProcess');
        throw new Error('pre');
      },
    };
    const { result } = await run(msg(), failing);
    expect(result.outcome).toBe(Outcome.PreprocessingError);
    expect(log).toEqual(['preProcess', 'ack', 'error', 'failure:PreprocessingError', 'postProcess']);
    expect((handler.seen.error[0] as Error).message).toBe('pre');
    expect(handler.seen.messages[0]).toMatchObject({ decoded: true, attempt: 0 });
  });
});

describe('processing: Ancient', () => {
  it('acks an expired message without running it and without callbacks (postProcess still runs)', async () => {
    const handler = hooked(() => 'never');
    const { result } = await run(msg('x', { now: clock.now() - 100, ttl: 10 }), handler, { attempts: 3 });
    expect(result.outcome).toBe(Outcome.Ancient);
    expect(log).toEqual(['preProcess', 'ack', 'postProcess']);
  });

  it('expires_at equal to now is not expired (strictly less)', async () => {
    const { result } = await run(msg('x', { now: clock.now() - 10, ttl: 10 }), () => 'ok');
    expect(result.outcome).toBe(Outcome.OK);
  });
});

describe('processing: simple fast path', () => {
  it('acks FIRST, then marks, then runs; hooks in Ruby order', async () => {
    const handler = hooked((m) => `got ${m.text()} attempt ${m.attempt}`);
    const { result } = await run(msg('hello'), handler);
    expect(result.outcome).toBe(Outcome.OK);
    expect(log).toEqual([
      'preProcess',
      'ack',
      'store.markCompletedIfNew',
      'process',
      'completed',
      'postProcess',
    ]);
    expect(result.handlerResult).toBe('got hello attempt 1');
    expect(memory.size).toBe(0);
  });

  it('a crash is final: AttemptsLimitReached after the ack, error then failure hook', async () => {
    const handler = hooked(boom);
    const { result, settler } = await run(msg(), handler);
    expect(result.outcome).toBe(Outcome.AttemptsLimitReached);
    expect(log).toEqual([
      'preProcess',
      'ack',
      'store.markCompletedIfNew',
      'process',
      'error',
      'failure:AttemptsLimitReached',
      'completed',
      'postProcess',
    ]);
    expect(settler.rejects).toBe(0);
  });

  it('with a status-key expiry interval a duplicate is acked and not run (OK)', async () => {
    memory = new MemoryDedupStore({ now: () => clock.nowMs(), statusKeyExpiryInterval: 300 });
    store = recordingStore(memory, log);
    let runs = 0;
    expect((await run(msg(), () => runs++)).result.outcome).toBe(Outcome.OK);
    expect((await run(msg(), () => runs++)).result.outcome).toBe(Outcome.OK);
    expect(runs).toBe(1);
    expect(log.filter((e) => e === 'ack')).toHaveLength(2);
    expect(memory.ttl({ queue: QUEUE, uuid: 'a1b2c3d4-0000-4000-8000-000000000001' }, 'status')).toBe(300);
  });

  it('does not run the handler when the ack cannot reach the broker (it will be redelivered)', async () => {
    const settler = new SettleRecorder(log);
    settler.ackResult = false;
    let runs = 0;
    const { result } = await run(msg(), () => runs++, {}, { settler });
    expect(runs).toBe(0);
    expect(result.outcome).toBe(Outcome.InternalError);
    expect(result.settled).toBe('acked');
    expect(settler.rejects).toBe(0);
  });
});

describe('processing: full path', () => {
  it('first sighting: claim → handler → complete → ack → acknowledged; keys gone', async () => {
    const handler = hooked((m) => m.attempt);
    const { result } = await run(msg(), handler, { attempts: 2 });
    expect(result.outcome).toBe(Outcome.OK);
    expect(log).toEqual([
      'preProcess',
      'store.claim',
      'process',
      'store.complete',
      'ack',
      'store.acknowledged',
      'completed',
      'postProcess',
    ]);
    expect(result.handlerResult).toBe(1);
    expect(memory.size).toBe(0);
  });

  it('redundant: the second copy sees completed, is acked, not run; keys gone after the second ack', async () => {
    let runs = 0;
    const first = await run(msg('x', { redundant: true }), () => runs++);
    expect(first.result.outcome).toBe(Outcome.OK);
    expect(await keys()).toMatchObject({ status: 'completed', ack_count: '1' });
    log.length = 0;
    const second = await run(msg('x', { redundant: true }), () => runs++);
    expect(second.result.outcome).toBe(Outcome.OK);
    expect(log).toEqual(['store.claim', 'ack', 'store.acknowledged']);
    expect(runs).toBe(1);
    expect(memory.size).toBe(0);
  });

  /** Copy knowledge as the subscriber's line of copies gives it; records what processing does with it. */
  function copyKnowledge(knownCompleted: boolean, inherited: number, takesOver: boolean) {
    const calls: string[] = [];
    let left = inherited;
    const copy: CopyKnowledge = {
      knownCompleted,
      takeInheritedAcks: () => {
        const acks = left;
        left = 0;
        return acks;
      },
      completed: (acks) => {
        calls.push(`completed(${acks})`);
        return takesOver;
      },
    };
    return { copy, calls };
  }

  it('redundant, a copy waiting here takes the ack count over: no acknowledged call for the first copy', async () => {
    let runs = 0;
    const waiting = copyKnowledge(false, 0, true);
    const first = await run(msg('x', { redundant: true }), () => runs++, {}, { copy: waiting.copy });
    expect(first.result.outcome).toBe(Outcome.OK);
    expect(log).toEqual(['store.claim', 'store.complete', 'ack']);
    expect(waiting.calls).toEqual(['completed(1)']);
    expect(await keys()).toMatchObject({ status: 'completed' });
    expect((await keys()).ack_count).toBeUndefined();
    // The waiting copy knows the message is completed and carries the first ack: no claim, one call for both.
    log.length = 0;
    const second = copyKnowledge(true, 1, false);
    const result = await run(msg('x', { redundant: true }), () => runs++, {}, { copy: second.copy });
    expect(result.result.outcome).toBe(Outcome.OK);
    expect(log).toEqual(['ack', 'store.acknowledged']);
    expect(second.calls).toEqual(['completed(2)']);
    expect(runs).toBe(1);
    expect(memory.size).toBe(0);
  });

  it('a copy known completed but with nothing inherited counts its own ack only', async () => {
    await run(msg('x', { redundant: true }), () => undefined);
    log.length = 0;
    const late = copyKnowledge(true, 0, false);
    const result = await run(msg('x', { redundant: true }), () => undefined, {}, { copy: late.copy });
    expect(result.result.outcome).toBe(Outcome.OK);
    expect(log).toEqual(['ack', 'store.acknowledged']);
    expect(memory.size).toBe(0);
  });

  it('inherited acks are recorded even when this copy cannot be acked (channel gone)', async () => {
    await run(
      msg('x', { redundant: true }),
      () => undefined,
      {},
      { copy: copyKnowledge(false, 0, true).copy },
    );
    log.length = 0;
    const settler = new SettleRecorder(log);
    settler.ackResult = false;
    const second = copyKnowledge(true, 1, true);
    await run(msg('x', { redundant: true }), () => undefined, {}, { copy: second.copy, settler });
    // Only the inherited ack is recorded, and not handed on: this copy was not acked.
    expect(second.calls).toEqual([]);
    expect(log).toEqual(['ack', 'store.acknowledged']);
    expect(await keys()).toMatchObject({ ack_count: '1' });
  });

  it('a handler result whose then() throws counts as a handler failure, not an internal error', async () => {
    const thenable = {
      then: () => {
        throw new Error('broken thenable');
      },
    };
    const { result } = await run(msg(), () => thenable, { attempts: 2, exceptions: 1 });
    expect(result.outcome).toBe(Outcome.HandlerCrash);
    expect((result.error as Error).message).toBe('broken thenable');
  });

  it('HandlerCrash: rejected (not acked), retry delay stored, error hook but no failure hook', async () => {
    const handler = hooked(boom);
    const { result, settler } = await run(msg(), handler, { attempts: 3, exceptions: 2, delay: 7 });
    expect(result.outcome).toBe(Outcome.HandlerCrash);
    expect(settler.acks).toBe(0);
    expect(log).toEqual([
      'preProcess',
      'store.claim',
      'process',
      'store.fail',
      'error',
      'reject',
      'completed',
      'postProcess',
    ]);
    expect(await keys()).toMatchObject({
      exceptions: '1',
      attempts: '1',
      timeout: '0',
      delay: String(clock.now() + 7),
    });
  });

  it('Delayed: a redelivery before the delay elapsed is rejected without running', async () => {
    const opts = { attempts: 3, exceptions: 2, delay: 5 };
    let runs = 0;
    const crash = (): never => {
      runs++;
      throw new Error('x');
    };
    expect((await run(msg(), crash, opts)).result.outcome).toBe(Outcome.HandlerCrash);
    await clock.advanceSeconds(4);
    const delayed = await run(msg(), crash, opts);
    expect(delayed.result.outcome).toBe(Outcome.Delayed);
    expect(delayed.result.settled).toBe('rejected');
    expect(runs).toBe(1);
    await clock.advanceSeconds(1);
    expect((await run(msg(), () => 'fine', opts)).result.outcome).toBe(Outcome.OK);
    expect(memory.size).toBe(0);
  });

  it('exponential backoff: delay 1, maxDelay 10 → retries after 2, 4, 8, 10 s (recorded in the store)', async () => {
    const opts = { attempts: 6, exceptions: 5, delay: 1, maxDelay: 10 };
    const delays: number[] = [];
    const outcomes: (Outcome | undefined)[] = [];
    for (let i = 0; i < 5; i++) {
      const now = clock.now();
      const { result } = await run(msg(), boom, opts);
      outcomes.push(result.outcome);
      const stored = await keys();
      delays.push(Number(stored.delay) - now);
      await clock.advanceSeconds(Number(stored.delay) - now + 0.5);
    }
    expect(outcomes).toEqual(Array(5).fill(Outcome.HandlerCrash));
    expect(delays).toEqual([2, 4, 8, 10, 10]);
    const last = await run(msg(), boom, opts);
    expect(last.result.outcome).toBe(Outcome.AttemptsLimitReached);
    expect(last.settler.acks).toBe(1);
    expect(memory.size).toBe(0);
  });

  it('linear delays when maxDelay < 2 * delay', async () => {
    const opts = { attempts: 3, exceptions: 2, delay: 3, maxDelay: 5 };
    const now = clock.now();
    await run(msg(), boom, opts);
    expect(Number((await keys()).delay) - now).toBe(3);
  });

  it('attempts = exceptions + 1: exceptions 2 ⇒ three runs, then AttemptsLimitReached (failure hook)', async () => {
    const handler = hooked(boom);
    const outcomes: (Outcome | undefined)[] = [];
    for (let i = 0; i < 3; i++) {
      outcomes.push((await run(msg(), handler, { exceptions: 2, delay: 1 })).result.outcome);
      await clock.advanceSeconds(2);
    }
    expect(outcomes).toEqual([Outcome.HandlerCrash, Outcome.HandlerCrash, Outcome.AttemptsLimitReached]);
    expect(log.filter((e) => e === 'process')).toHaveLength(3);
    expect(handler.seen.failure).toEqual([Outcome.AttemptsLimitReached]);
    expect(memory.size).toBe(0);
  });

  it('ExceptionsLimitReached from a crash: attempts 3 with the default exceptions 0', async () => {
    const { result, settler } = await run(msg(), hooked(boom), { attempts: 3 });
    expect(result.outcome).toBe(Outcome.ExceptionsLimitReached);
    expect(settler.acks).toBe(1);
    expect(log).toContain('failure:ExceptionsLimitReached');
    expect(memory.size).toBe(0);
  });

  it('ExceptionNotAccepted: retryOn classes refuse the error; a predicate can too', async () => {
    class Retriable extends Error {}
    const first = await run(msg(), boom, { attempts: 3, exceptions: 2, retryOn: [Retriable] });
    expect(first.result.outcome).toBe(Outcome.ExceptionNotAccepted);
    expect(first.settler.acks).toBe(1);
    expect(memory.size).toBe(0);

    const accepted = await run(
      msg('y', { messageId: 'a1b2c3d4-0000-4000-8000-000000000002' }),
      () => {
        throw new Retriable('again');
      },
      { attempts: 3, exceptions: 2, retryOn: [Retriable] },
    );
    expect(accepted.result.outcome).toBe(Outcome.HandlerCrash);

    const predicate = await run(msg('z', { messageId: 'a1b2c3d4-0000-4000-8000-000000000003' }), boom, {
      attempts: 3,
      exceptions: 2,
      retryOn: (error) => (error as Error).message !== 'boom',
    });
    expect(predicate.result.outcome).toBe(Outcome.ExceptionNotAccepted);
  });

  it('HandlerNotYetTimedOut: a second copy while the first is still running is rejected', async () => {
    let release!: () => void;
    const running = new Promise<void>((resolve) => (release = resolve));
    let runs = 0;
    const slow = async (): Promise<string> => {
      runs++;
      await running;
      return 'done';
    };
    const first = run(msg('x', { redundant: true }), slow);
    await flush();
    const second = await run(msg('x', { redundant: true }), slow);
    expect(second.result.outcome).toBe(Outcome.HandlerNotYetTimedOut);
    expect(second.result.settled).toBe('rejected');
    release();
    expect((await first).result.outcome).toBe(Outcome.OK);
    expect(runs).toBe(1);
  });

  it('AttemptsLimitReached on a seen message whose consumer died (timeout + grace passed)', async () => {
    const ref = { queue: QUEUE, uuid: 'a1b2c3d4-0000-4000-8000-000000000001' };
    await memory.claim(ref, { expiresAt: clock.now() + 1000, timeoutAt: clock.now() + 5 });
    await clock.advanceSeconds(16); // timeout 5 + grace 10 < now
    const handler = hooked(() => 'never');
    const { result } = await run(msg('x', { redundant: true }), handler);
    expect(result.outcome).toBe(Outcome.AttemptsLimitReached);
    expect(log).toEqual([
      'preProcess',
      'store.claim',
      'store.complete',
      'ack',
      'store.acknowledged',
      'failure:AttemptsLimitReached',
      'postProcess',
    ]);
  });

  it('timeout + 10 == now is still "not yet timed out"', async () => {
    const ref = { queue: QUEUE, uuid: 'a1b2c3d4-0000-4000-8000-000000000001' };
    await memory.claim(ref, { expiresAt: clock.now() + 1000, timeoutAt: clock.now() + 5 });
    await clock.advanceSeconds(15);
    await memory.complete(ref); // reset to a known shape…
    await memory.acknowledged(ref, { redundant: false });
    await memory.claim(ref, { expiresAt: clock.now() + 1000, timeoutAt: clock.now() - 10 });
    expect((await run(msg('x', { redundant: true }), () => 'x')).result.outcome).toBe(
      Outcome.HandlerNotYetTimedOut,
    );
  });

  it('ExceptionsLimitReached on a seen message (state check before acquiring)', async () => {
    const ref = { queue: QUEUE, uuid: 'a1b2c3d4-0000-4000-8000-000000000001' };
    await memory.claim(ref, { expiresAt: clock.now() + 1000, timeoutAt: clock.now() + 600 });
    await memory.fail(ref, {
      now: clock.now(),
      attemptsLimit: 10,
      exceptionsLimit: 10,
      accepted: true,
      delay: 1,
      maxDelay: undefined,
    });
    await clock.advanceSeconds(2);
    const { result, settler } = await run(
      msg(),
      hooked(() => 'never'),
      { attempts: 3 },
    );
    expect(result.outcome).toBe(Outcome.ExceptionsLimitReached);
    expect(settler.acks).toBe(1);
    expect(log).not.toContain('process');
    expect(memory.size).toBe(0);
  });

  it('MutexLocked: another consumer holds a fresh mutex', async () => {
    const ref = { queue: QUEUE, uuid: 'a1b2c3d4-0000-4000-8000-000000000001' };
    await memory.claim(ref, { expiresAt: clock.now() + 1000, timeoutAt: clock.now() + 600 });
    await memory.acquire(ref, { now: clock.now(), timeoutAt: clock.now() - 100, staleAfter: 610 });
    let runs = 0;
    const { result } = await run(msg(), () => runs++, { attempts: 3, exceptions: 2 });
    expect(result.outcome).toBe(Outcome.MutexLocked);
    expect(result.settled).toBe('rejected');
    expect(runs).toBe(0);
  });

  it('a missing timeout key does not leave the message stuck (weak spot 5)', async () => {
    const stuck: DedupStore = new Proxy(store, {
      get(target, property, receiver) {
        if (property === 'claim') {
          return () =>
            Promise.resolve({
              first: false,
              state: {
                status: 'incomplete',
                delay: undefined,
                timeout: undefined,
                attempts: 0,
                exceptions: 0,
              },
            });
        }
        return Reflect.get(target, property, receiver) as unknown;
      },
    });
    const { result } = await run(msg(), () => 'ran', { attempts: 2 }, { store: stuck });
    expect(result.outcome).toBe(Outcome.OK);
    expect(result.handlerResult).toBe('ran');
  });

  it('keeps the keys when the ack cannot reach the broker, so the redelivery is recognized', async () => {
    const settler = new SettleRecorder(log);
    settler.ackResult = false;
    let runs = 0;
    const first = await run(msg(), () => runs++, { attempts: 2 }, { settler });
    expect(first.result.outcome).toBe(Outcome.OK);
    expect(log).not.toContain('store.acknowledged');
    expect(await keys()).toMatchObject({ status: 'completed' });
    const again = await run(msg(), () => runs++, { attempts: 2 });
    expect(again.result.outcome).toBe(Outcome.OK);
    expect(runs).toBe(1);
    expect(memory.size).toBe(0);
  });
});

describe('processing: timeouts', () => {
  it('at the timeout the signal aborts, the attempt crashes, and a late result is ignored', async () => {
    let ctx!: HandlerContext;
    let finish!: (value: string) => void;
    const handler = hooked(
      (_m, context) =>
        new Promise<string>((resolve) => {
          ctx = context;
          finish = resolve;
        }),
    );
    const pending = run(msg(), handler, { attempts: 2, exceptions: 1, timeout: 5, delay: 1 });
    await flush();
    expect(ctx.signal.aborted).toBe(false);
    await clock.advanceSeconds(4.9);
    expect(ctx.signal.aborted).toBe(false);
    await clock.advanceSeconds(0.1);
    const { result, settler } = await pending;
    expect(ctx.signal.aborted).toBe(true);
    expect(ctx.signal.reason).toBeInstanceOf(HandlerTimeoutError);
    expect(result.outcome).toBe(Outcome.HandlerCrash);
    expect(result.error).toBeInstanceOf(HandlerTimeoutError);
    expect(handler.seen.error[0]).toBeInstanceOf(HandlerTimeoutError);
    finish('too late');
    await flush();
    expect(result.handlerResult).toBeUndefined();
    expect(settler.acks).toBe(0);
    expect(settler.rejects).toBe(1);
    expect(warnings).toContain('handler finished after its timeout; result ignored');
    expect(clock.pendingTimers).toBe(0);
  });

  it('a timeout on the last attempt ends with AttemptsLimitReached (acked)', async () => {
    const pending = run(msg(), () => new Promise(() => undefined), { attempts: 2, timeout: 1 });
    await flush();
    await clock.advanceSeconds(1);
    // attempts 1 < 2, exceptions 1 > 0 → ExceptionsLimitReached (Ruby order)
    expect((await pending).result.outcome).toBe(Outcome.ExceptionsLimitReached);
  });

  it('the handler timer is cleared when the handler finishes in time', async () => {
    await run(msg(), () => 'quick', { attempts: 2, timeout: 5 });
    expect(clock.pendingTimers).toBe(0);
  });
});

describe('processing: store failures and settling exactly once', () => {
  const failing = (method: keyof DedupStore): DedupStore =>
    new Proxy(store, {
      get(target, property, receiver) {
        if (property === method) return () => Promise.reject(new NoRedisMasterError('redis gone'));
        return Reflect.get(target, property, receiver) as unknown;
      },
    });

  it('a store error before any ack → InternalError, rejected (requeued), nothing acked, no hooks', async () => {
    const handler = hooked(() => 'x');
    const { result, settler } = await run(msg(), handler, { attempts: 2 }, { store: failing('claim') });
    expect(result.outcome).toBe(Outcome.InternalError);
    expect(result.error).toBeInstanceOf(NoRedisMasterError);
    expect(settler.acks).toBe(0);
    expect(settler.rejects).toBe(1);
    expect(log).toEqual(['preProcess', 'reject', 'postProcess']);
  });

  it('store.complete failing after a successful run → InternalError, rejected, not acked on a guess', async () => {
    const { result, settler } = await run(msg(), () => 'x', { attempts: 2 }, { store: failing('complete') });
    expect(result.outcome).toBe(Outcome.InternalError);
    expect(settler.acks).toBe(0);
    expect(settler.rejects).toBe(1);
  });

  it('InternalError after the ack (acknowledged fails) does not reject', async () => {
    const { result, settler } = await run(
      msg(),
      () => 'x',
      { attempts: 2 },
      { store: failing('acknowledged') },
    );
    expect(result.outcome).toBe(Outcome.InternalError);
    expect(result.settled).toBe('acked');
    expect(settler.acks).toBe(1);
    expect(settler.rejects).toBe(0);
  });

  it('OnceSettler refuses a second ack and a reject after an ack', () => {
    const recorder = new SettleRecorder();
    const once = new OnceSettler(recorder, logger);
    expect(once.ack()).toBe(true);
    expect(once.ack()).toBe(false);
    expect(once.reject()).toBe(false);
    expect(recorder.log).toEqual(['ack']);
    expect(once.state).toBe('acked');
  });

  it('every outcome settles exactly once', async () => {
    const seen = new Map<Outcome, number>();
    const check = (r: Run): void => {
      const settles = r.settler.acks + r.settler.rejects;
      expect(settles).toBe(1);
      if (r.result.outcome) seen.set(r.result.outcome, settles);
    };
    let n = 0;
    const fresh = (options: EncodeOptions = {}): RawDelivery =>
      msg('x', { messageId: `a1b2c3d4-0000-4000-8000-${String(++n).padStart(12, '0')}`, ...options });
    const own = (): SettleRecorder => new SettleRecorder([]);
    check(await run({ ...fresh(), properties: {} }, () => 1, {}, { settler: own() }));
    check(await run(fresh(), { preProcess: boom, process: () => 1 }, {}, { settler: own() }));
    check(await run(fresh({ now: 1, ttl: 1 }), () => 1, {}, { settler: own() }));
    check(await run(fresh(), () => 1, {}, { settler: own() }));
    check(await run(fresh(), boom, {}, { settler: own() }));
    check(await run(fresh(), boom, { attempts: 2 }, { settler: own() }));
    check(await run(fresh(), boom, { exceptions: 1 }, { settler: own() }));
    check(await run(fresh(), boom, { exceptions: 1, retryOn: [TypeError] }, { settler: own() }));
    const again = fresh();
    check(await run(again, boom, { exceptions: 2 }, { settler: own() }));
    check(await run(again, boom, { exceptions: 2 }, { settler: own() }));
    check(await run(fresh(), () => 1, { attempts: 2 }, { store: failingClaim(), settler: own() }));
    expect([...seen.keys()].sort()).toEqual(
      [
        Outcome.DecodingError,
        Outcome.PreprocessingError,
        Outcome.Ancient,
        Outcome.OK,
        Outcome.AttemptsLimitReached,
        Outcome.ExceptionsLimitReached,
        Outcome.ExceptionNotAccepted,
        Outcome.HandlerCrash,
        Outcome.Delayed,
        Outcome.InternalError,
      ].sort(),
    );
    // HandlerNotYetTimedOut and MutexLocked are covered above; together that is every outcome.
    expect(allOutcomes).toHaveLength(12);

    function failingClaim(): DedupStore {
      return failing('claim');
    }
  });
});

describe('processing: forced stop', () => {
  it('abandons a running handler: signal aborted, nothing settled, store not completed', async () => {
    const stop = new AbortController();
    let ctx!: HandlerContext;
    const handler = hooked(
      (_m, context) =>
        new Promise(() => {
          ctx = context;
        }),
    );
    const pending = run(msg(), handler, { attempts: 2 }, { stopSignal: stop.signal });
    await flush();
    stop.abort();
    const { result, settler } = await pending;
    expect(result.abandoned).toBe(true);
    expect(result.outcome).toBeUndefined();
    expect(ctx.signal.aborted).toBe(true);
    expect(settler.acks + settler.rejects).toBe(0);
    expect(await keys()).toMatchObject({ status: 'incomplete' });
    expect(log).not.toContain('completed');
  });

  it('does not start a handler once stopped', async () => {
    const stop = new AbortController();
    stop.abort();
    let runs = 0;
    const { result } = await run(msg(), () => runs++, { attempts: 2 }, { stopSignal: stop.signal });
    expect(result.abandoned).toBe(true);
    expect(runs).toBe(0);
    expect(result.settled).toBe('pending');
    expect(log).not.toContain('store.claim');
    expect(memory.size).toBe(0);
  });
});

describe("processing: the store's clock", () => {
  const ref = { queue: QUEUE, uuid: 'a1b2c3d4-0000-4000-8000-000000000001' };

  it("decides 'not yet timed out' with the store's now, not this consumer's clock 100 s ahead", async () => {
    // The store's clock is 100 s behind ours; another consumer claimed the message with a 5 s timeout.
    const behind = new MemoryDedupStore({ now: () => clock.nowMs() - 100_000, completedStatusTtl: 0 });
    await behind.claim(ref, { expiresAt: clock.now() + 1000, timeoutAt: 0, timeout: 5 });
    let runs = 0;
    const { result } = await run(msg(), () => runs++, { attempts: 2, timeout: 5 }, { store: behind });
    // By our clock its timeout (store now + 5) passed 95 s ago; by the store's it has 5 s to go.
    expect(result.outcome).toBe(Outcome.HandlerNotYetTimedOut);
    expect(runs).toBe(0);
    // A retry is due by the store's clock too: our `delay` 100 s in the store's future is not.
    await behind.fail(ref, {
      now: 0,
      storeClock: true,
      attemptsLimit: 2,
      exceptionsLimit: 1,
      accepted: true,
      delay: 50,
      maxDelay: undefined,
    });
    expect(
      (await run(msg(), () => runs++, { attempts: 2, timeout: 5 }, { store: behind })).result.outcome,
    ).toBe(Outcome.Delayed);
    expect(runs).toBe(0);
  });
});

describe('processing: abandoned runs', () => {
  it('reports the run the store counted, for release', async () => {
    const stop = new AbortController();
    const pending = run(
      msg(),
      () => new Promise(() => undefined),
      { attempts: 2 },
      { stopSignal: stop.signal },
    );
    await flush();
    stop.abort();
    const { result } = await pending;
    expect(result.abandonedRun).toEqual({
      ref: { queue: QUEUE, uuid: 'a1b2c3d4-0000-4000-8000-000000000001' },
      attempts: 1,
    });
    // Releasing is the caller's: the store still has the run.
    expect(await keys()).toMatchObject({ status: 'incomplete', attempts: '1' });
  });

  it('reports none when nothing was counted (stopped before the claim, or the simple path)', async () => {
    const stop = new AbortController();
    stop.abort();
    expect(
      (await run(msg(), () => undefined, { attempts: 2 }, { stopSignal: stop.signal })).result.abandonedRun,
    ).toBeUndefined();
    const later = new AbortController();
    const simple = run(msg(), () => new Promise(() => undefined), {}, { stopSignal: later.signal });
    await flush();
    later.abort();
    expect((await simple).result.abandonedRun).toBeUndefined();
  });
});

describe('processing: RPC replies and hooks', () => {
  it('replies with the result and status OK after an OK outcome', async () => {
    const { settler } = await run(msg('ping', { replyTo: 'reply-q' }), () => 'pong');
    expect(settler.replies).toEqual([{ replyTo: 'reply-q', body: 'pong', status: 'OK' }]);
  });

  it('replies FAILED after a failure outcome, and not at all after a reject outcome', async () => {
    const failed = await run(msg('ping', { replyTo: 'reply-q' }), boom);
    expect(failed.settler.replies).toEqual([{ replyTo: 'reply-q', body: '', status: 'FAILED' }]);
    const crash = await run(
      msg('ping', { replyTo: 'reply-q', messageId: 'a1b2c3d4-0000-4000-8000-000000000009' }),
      boom,
      { attempts: 3, exceptions: 2 },
      { settler: new SettleRecorder([]) },
    );
    expect(crash.result.outcome).toBe(Outcome.HandlerCrash);
    expect(crash.settler.replies).toEqual([]);
  });

  it('reply bodies: buffers verbatim, null/undefined empty, numbers as text', () => {
    expect(replyBody(Buffer.from([1, 2]))).toEqual(Buffer.from([1, 2]));
    expect(replyBody(undefined).length).toBe(0);
    expect(replyBody(null).length).toBe(0);
    expect(replyBody(42).toString()).toBe('42');
  });

  it('hook exceptions are logged and swallowed', async () => {
    const { result } = await run(msg(), {
      process: boom,
      error: boom,
      failure: boom,
      completed: boom,
      postProcess: boom,
    });
    expect(result.outcome).toBe(Outcome.AttemptsLimitReached);
    expect(warnings.filter((w) => w === 'handler hook failed')).toHaveLength(4);
  });

  it('errback/failback replace the error/failure hooks; the handler sees message and context', async () => {
    const calls: string[] = [];
    let seen: { message: HandlerMessage; ctx: HandlerContext } | undefined;
    const { result } = await run(
      msg('{"a":1}', { redundant: true }),
      {
        process: (message, ctx) => {
          seen = { message, ctx };
          throw new TypeError('t');
        },
        error: () => calls.push('error-hook'),
        failure: () => calls.push('failure-hook'),
      },
      {
        errback: (_m, error) => calls.push(`errback:${(error as Error).name}`),
        failback: (_m, outcome) => calls.push(`failback:${outcome}`),
      },
    );
    expect(result.outcome).toBe(Outcome.AttemptsLimitReached);
    expect(calls).toEqual(['errback:TypeError', 'failback:AttemptsLimitReached']);
    expect(seen?.message.json()).toEqual({ a: 1 });
    expect(seen?.message).toMatchObject({
      decoded: true,
      attempt: 1,
      redundant: true,
      queue: QUEUE,
      server: SERVER,
    });
    expect(seen?.ctx).toMatchObject({ attempt: 1, queue: QUEUE, server: SERVER });
  });
});
