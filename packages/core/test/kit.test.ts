import { describe, expect, it } from 'vitest';
import { amqplibAckFlush, Batcher, DeadlineSweeper, Lazy, Memo, Slots, type Clock } from '@beetle/core/kit';

/** Time moves only with `advance`, which fires the due timers in order. */
class ManualClock implements Clock {
  ms = 1_000_000;
  protected timers: { at: number; fire: () => void; every?: number }[] = [];
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
      if (next.every !== undefined) {
        next.at += next.every;
        this.timers.push(next);
      }
      next.fire();
    }
    this.ms = until;
  }
}

/** A ManualClock with repeating timers. */
class IntervalClock extends ManualClock {
  intervalsStarted = 0;
  setInterval = (fire: () => void, ms: number): unknown => {
    this.intervalsStarted++;
    const timer = { at: this.ms + ms, fire, every: ms };
    this.timers.push(timer);
    return timer;
  };
  clearInterval = (handle: unknown): void => {
    this.timers = this.timers.filter((t) => t !== handle);
  };
}

describe('DeadlineSweeper', () => {
  it('expires each item once, no sooner than its deadline and at most one period late, with one timer', () => {
    const clock = new ManualClock();
    const expired: string[] = [];
    const sweeper = new DeadlineSweeper<string>({
      periodMs: 100,
      clock,
      onExpired: (item) => expired.push(item),
    });
    sweeper.add('a', clock.ms + 150);
    sweeper.add('b', clock.ms + 350);
    sweeper.add('c', clock.ms + 120);
    expect(clock.pending).toBe(1);
    clock.advance(199);
    expect(expired).toEqual([]);
    clock.advance(1);
    expect(expired).toEqual(['a', 'c']);
    expect(sweeper.delete('b')).toBe(true);
    clock.advance(1000);
    expect(expired).toEqual(['a', 'c']);
    // Nothing watched: no timer left running.
    expect(clock.pending).toBe(0);
    expect(sweeper.size).toBe(0);
  });

  it('ordered: a sweep stops at the first item not due', () => {
    const clock = new ManualClock();
    const expired: number[] = [];
    const sweeper = new DeadlineSweeper<number>({
      periodMs: 50,
      clock,
      ordered: true,
      onExpired: (item) => expired.push(item),
    });
    sweeper.add(1, clock.ms + 40);
    sweeper.add(2, clock.ms + 500);
    // Out of order on purpose: an ordered sweeper does not look past item 2.
    sweeper.add(3, clock.ms + 10);
    clock.advance(100);
    expect(expired).toEqual([1]);
    clock.advance(500);
    expect(expired).toEqual([1, 2, 3]);
  });

  it('takeAll returns what was watched and stops the timer, without calling back', () => {
    const clock = new ManualClock();
    const expired: string[] = [];
    const sweeper = new DeadlineSweeper<string>({
      periodMs: 10,
      clock,
      ordered: true,
      onExpired: (item) => expired.push(item),
    });
    sweeper.add('a', clock.ms + 5);
    sweeper.add('b', clock.ms + 50);
    expect(sweeper.takeAll()).toEqual(['a', 'b']);
    expect([sweeper.size, clock.pending]).toEqual([0, 0]);
    clock.advance(100);
    expect(expired).toEqual([]);
    expect(sweeper.takeAll()).toEqual([]);
  });

  it('an item added from onExpired is watched', () => {
    const clock = new ManualClock();
    let fired = 0;
    const sweeper: DeadlineSweeper<number> = new DeadlineSweeper({
      periodMs: 10,
      clock,
      onExpired: (n) => {
        fired++;
        if (n < 3) sweeper.add(n + 1, clock.ms + 5);
      },
    });
    sweeper.add(1, clock.ms);
    clock.advance(100);
    expect(fired).toBe(3);
    expect(clock.pending).toBe(0);
  });

  it('repeating: one interval while anything is watched, stopped by the first sweep finding nothing', () => {
    const clock = new IntervalClock();
    const expired: string[] = [];
    const sweeper = new DeadlineSweeper<string>({
      periodMs: 100,
      clock,
      repeating: true,
      onExpired: (item) => expired.push(item),
    });
    sweeper.add('a', clock.ms + 150);
    sweeper.add('b', clock.ms + 250);
    sweeper.add('c', clock.ms + 1000);
    expect([clock.intervalsStarted, clock.pending]).toEqual([1, 1]);
    clock.advance(200);
    expect(expired).toEqual(['a']);
    clock.advance(100);
    expect(expired).toEqual(['a', 'b']);
    // takeAll: the remaining items come back, without their callbacks; the next sweep stops the timer.
    expect(sweeper.takeAll()).toEqual(['c']);
    expect(sweeper.size).toBe(0);
    expect(clock.pending).toBe(1);
    clock.advance(100);
    expect(clock.pending).toBe(0);
    clock.advance(1000);
    expect(expired).toEqual(['a', 'b']);
    sweeper.add('d', clock.ms + 50);
    expect(clock.intervalsStarted).toBe(2);
    sweeper.clear();
    expect(clock.pending).toBe(0);
  });

  it('repeating with a clock without setInterval: re-armed timeouts', () => {
    const clock = new ManualClock();
    const expired: number[] = [];
    const sweeper = new DeadlineSweeper<number>({
      periodMs: 10,
      clock,
      repeating: true,
      onExpired: (n) => expired.push(n),
    });
    sweeper.add(1, clock.ms + 5);
    sweeper.add(2, clock.ms + 25);
    clock.advance(40);
    expect(expired).toEqual([1, 2]);
    expect(clock.pending).toBe(0);
  });
});

describe('amqplibAckFlush', () => {
  it("runs after frames amqplib writes from an immediate of a later tick (an ack's), not before", async () => {
    const order: string[] = [];
    // The consumer channel writes the turn's acks from an immediate; amqplib hands the frame to the socket
    // from an immediate scheduled in a later tick of that write.
    setImmediate(() => {
      order.push('acks batched');
      process.nextTick(() => setImmediate(() => order.push('ack written')));
    });
    process.nextTick(() => setImmediate(() => order.push('one immediate after a tick')));
    amqplibAckFlush(() => order.push('flush'));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(order).toEqual(['acks batched', 'one immediate after a tick', 'ack written', 'flush']);
  });
});

describe('DeadlineSweeper.items', () => {
  it('lists the items watched, in the order added, without those deleted or expired', () => {
    const clock = new ManualClock();
    const sweeper = new DeadlineSweeper<string>({ periodMs: 10, clock, onExpired: () => undefined });
    sweeper.add('a', clock.ms + 100);
    sweeper.add('b', clock.ms + 5);
    sweeper.add('c', clock.ms + 100);
    sweeper.delete('c');
    clock.advance(10);
    expect([...sweeper.items()]).toEqual(['a']);
    sweeper.clear();
    expect([...sweeper.items()]).toEqual([]);
    expect(clock.pending).toBe(0);
  });
});

describe('Lazy', () => {
  it('shares one promise between callers and remembers the value', async () => {
    let made = 0;
    const lazy = new Lazy(() => Promise.resolve(++made));
    const [a, b] = await Promise.all([lazy.get(), lazy.get()]);
    expect([a, b, made, lazy.value]).toEqual([1, 1, 1, 1]);
    lazy.reset();
    expect(lazy.value).toBeUndefined();
    expect(await lazy.get()).toBe(2);
  });

  it('current is the promise being made or made, without starting one', async () => {
    let made = 0;
    const lazy = new Lazy(() => Promise.resolve(++made));
    expect(lazy.current).toBeUndefined();
    const promise = lazy.get();
    expect(lazy.current).toBe(promise);
    await promise;
    expect(lazy.current).toBe(promise);
    expect(made).toBe(1);
    lazy.reset();
    expect(lazy.current).toBeUndefined();
    expect(made).toBe(1);
  });

  it('forgets a failure, so the next get tries again', async () => {
    let calls = 0;
    const lazy = new Lazy(() => (++calls === 1 ? Promise.reject(new Error('down')) : Promise.resolve('up')));
    await expect(lazy.get()).rejects.toThrow('down');
    expect(lazy.value).toBeUndefined();
    expect(await lazy.get()).toBe('up');
    expect(calls).toBe(2);
  });
});

describe('Memo', () => {
  it('runs once per key, shares the running work, forgets failures and is cleared', async () => {
    const memo = new Memo();
    let runs = 0;
    const work = (): Promise<number> => Promise.resolve(++runs);
    const [a, b] = await Promise.all([memo.run('x', work), memo.run('x', work)]);
    expect([a, b, runs, memo.isDone('x')]).toEqual([1, 1, 1, true]);
    await expect(memo.run('y', () => Promise.reject(new Error('no')))).rejects.toThrow('no');
    expect(memo.isDone('y')).toBe(false);
    expect(await memo.run('y', work)).toBe(2);
    memo.clear();
    expect(memo.isDone('x')).toBe(false);
    expect(await memo.run('x', work)).toBe(3);
  });
});

describe('Slots', () => {
  it('gives free slots at once, then passes each released slot to the oldest waiter', async () => {
    const slots = new Slots(2);
    expect([slots.tryAcquire(), slots.tryAcquire(), slots.tryAcquire()]).toEqual([true, true, false]);
    const order: string[] = [];
    const first = slots.acquire().then((granted) => order.push(`first:${granted}`));
    const second = slots.acquire(60_000).then((granted) => order.push(`second:${granted}`));
    expect(slots.waiting).toBe(2);
    expect(slots.tryAcquire()).toBe(false); // nobody jumps the line
    slots.release();
    await first;
    expect(order).toEqual(['first:true']);
    slots.release();
    await second;
    expect(order).toEqual(['first:true', 'second:true']);
    expect([slots.inUse, slots.waiting]).toEqual([2, 0]);
    slots.release();
    slots.release();
    expect(slots.inUse).toBe(0);
  });

  it('a waiter with a timeout gets false when no slot came in time; one without waits', async () => {
    const slots = new Slots(1);
    expect(slots.tryAcquire()).toBe(true);
    const untimed = slots.acquire();
    expect(await slots.acquire(5)).toBe(false);
    expect(slots.waiting).toBe(1);
    slots.release();
    expect(await untimed).toBe(true);
  });

  it('close: the waiters and every later caller get false, releases still free their slot', async () => {
    const slots = new Slots(1);
    expect(slots.tryAcquire()).toBe(true);
    const waiting = [slots.acquire(), slots.acquire(60_000)];
    slots.close();
    expect(await Promise.all(waiting)).toEqual([false, false]);
    expect(slots.waiting).toBe(0);
    expect(slots.tryAcquire()).toBe(false);
    expect(await slots.acquire()).toBe(false);
    slots.release();
    expect(slots.inUse).toBe(0);
    expect(slots.tryAcquire()).toBe(false);
  });
});

describe('Batcher with a gate', () => {
  it('closes a batch at its schedule; items added while it waits for the gate go into the next batch', async () => {
    const sent: string[][] = [];
    const gates: (() => void)[] = [];
    const batcher = new Batcher<string, undefined>(
      (items) => {
        sent.push([...items]);
        return Promise.resolve(items.map(() => undefined));
      },
      100,
      (flush) => process.nextTick(flush),
      (open) => gates.push(open),
    );
    const first = [batcher.add('a'), batcher.add('b')];
    await new Promise((resolve) => process.nextTick(resolve));
    expect(gates).toHaveLength(1); // the first batch is closed and waits
    const second = batcher.add('c'); // after the close: not in the first batch
    await new Promise((resolve) => process.nextTick(resolve));
    expect(gates).toHaveLength(2);
    expect(sent).toEqual([]);
    gates[0]!();
    await Promise.all(first);
    expect(sent).toEqual([['a', 'b']]);
    gates[1]!();
    await second;
    expect(sent).toEqual([['a', 'b'], ['c']]);
  });
});
