import { describe, expect, it } from 'vitest';
import { silentLogger } from '@beetle/core';
import { TypedEmitter, type Clock } from '@beetle/core/kit';
import { Rotation } from '../src/rotation.js';
import type { PublisherEvents } from '../src/types.js';

/** Time moves only when the test says so (the rotation reads `nowMs` only). */
class StoppedClock implements Clock {
  ms = 1_000_000;
  now = (): number => Math.floor(this.ms / 1000);
  nowMs = (): number => this.ms;
  setTimeout = (): unknown => undefined;
  clearTimeout = (): void => undefined;
}

function rotation(servers: string[]) {
  const clock = new StoppedClock();
  const events = new TypedEmitter<PublisherEvents>(silentLogger);
  const log: string[] = [];
  events.on('brokerDead', (e) => log.push(`dead ${e.server}`));
  events.on('brokerRecovered', (e) => log.push(`recovered ${e.server} after ${e.deadForMs} ms`));
  return { r: new Rotation(servers, 10, events, silentLogger, clock, () => 0), clock, log };
}

describe('Rotation', () => {
  it('round robin over the live brokers, skipping the excluded ones', () => {
    const { r } = rotation(['a', 'b', 'c']);
    expect([r.next(), r.next(), r.next(), r.next()]).toEqual(['a', 'b', 'c', 'a']);
    expect(r.next(new Set(['b']))).toBe('c');
    expect(r.next(new Set(['a', 'b', 'c']))).toBeUndefined();
  });

  it('a dead broker rejoins after the retry interval, on probation until its first success', () => {
    const { r, clock, log } = rotation(['a', 'b']);
    r.markDead('a', new Error('down'));
    r.markDead('a', new Error('down again'));
    expect([r.liveServers(), r.deadServers(), r.hasDead]).toEqual([['b'], ['a'], true]);
    clock.ms += 9_999;
    r.recycleDeadServers();
    expect(r.deadServers()).toEqual(['a']);
    clock.ms += 1;
    r.recycleDeadServers();
    expect([r.liveServers(), r.hasDead]).toEqual([['b', 'a'], false]);
    clock.ms += 500;
    r.succeeded('b');
    r.succeeded('a');
    r.succeeded('a');
    expect(log).toEqual(['dead a', 'recovered a after 10500 ms']);
  });

  it('with every broker dead, the one dead longest comes back at once', () => {
    const { r, clock } = rotation(['a', 'b']);
    r.markDead('b', new Error('down'));
    clock.ms += 100;
    r.markDead('a', new Error('down'));
    expect(r.liveCount).toBe(0);
    r.recycleDeadServers();
    expect([r.liveServers(), r.deadServers()]).toEqual([['b'], ['a']]);
  });
});
