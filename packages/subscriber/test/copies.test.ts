import { describe, expect, it } from 'vitest';
import { LocalCopies } from '../src/copies.js';

function copies(start = 0): { copies: LocalCopies; advance: (ms: number) => void } {
  let now = start;
  return { copies: new LocalCopies(() => now), advance: (ms) => (now += ms) };
}

describe('LocalCopies', () => {
  it('a copy arriving while another is in flight waits for it; the first has nothing to wait for', async () => {
    const { copies: local } = copies();
    const first = local.enter('m1:q');
    const second = local.enter('m1:q');
    expect(first.previous).toBeUndefined();
    expect(first.waiting).toBe(false);
    expect(second.waiting).toBe(true);
    let released = false;
    void second.previous?.then(() => (released = true));
    await Promise.resolve();
    expect(released).toBe(false);
    first.leave();
    await second.previous;
    expect(released).toBe(true);
    second.leave();
    expect(local.size).toBe(0);
  });

  it('a completed copy hands its acks to a waiting copy, which then knows the message is completed', () => {
    const { copies: local } = copies();
    const first = local.enter('m1:q');
    const second = local.enter('m1:q');
    expect(first.completed(1)).toBe(true);
    expect(second.knownCompleted).toBe(true);
    expect(second.takeInheritedAcks()).toBe(1);
    expect(second.takeInheritedAcks()).toBe(0);
  });

  it('a copy arriving after the one before completed (while it records its ack) knows, without acks', () => {
    const { copies: local } = copies();
    const first = local.enter('m1:q');
    expect(first.completed(1)).toBe(false); // nobody waits yet: the first copy records its own ack
    const second = local.enter('m1:q');
    expect(second.knownCompleted).toBe(true);
    expect(second.inheritedAcks).toBe(0);
  });

  it('no hand-over to a copy that stopped waiting (it may already have asked the store)', () => {
    const { copies: local } = copies();
    const first = local.enter('m1:q');
    const second = local.enter('m1:q');
    second.waiting = false; // its wait timed out or the subscriber stopped
    expect(first.completed(1)).toBe(false);
    expect(second.knownCompleted).toBe(false);
    expect(second.inheritedAcks).toBe(0);
  });

  it('a copy arriving after the completed one left knows it is completed, once, within the TTL', () => {
    const { copies: local, advance } = copies();
    const first = local.enter('m1:q');
    expect(first.completed(1)).toBe(false); // nobody waits: the caller records its ack itself
    first.leave();
    advance(1000);
    const twin = local.enter('m1:q');
    expect(twin.knownCompleted).toBe(true);
    expect(twin.inheritedAcks).toBe(0);
    twin.leave();
    // Only two copies per message: a third goes through the store.
    expect(local.enter('m1:q').knownCompleted).toBe(false);
  });

  it('forgets a recent completion after 60 s, and remembers nothing for copies that did not complete', () => {
    const { copies: local, advance } = copies();
    const done = local.enter('m1:q');
    done.completed(1);
    done.leave();
    const failed = local.enter('m2:q');
    failed.leave();
    advance(60_001);
    expect(local.enter('m1:q').knownCompleted).toBe(false);
    expect(local.enter('m2:q').knownCompleted).toBe(false);
  });

  it('remembers at most two generations of 5000 completions', () => {
    const { copies: local } = copies();
    for (let i = 0; i < 15_000; i++) {
      const line = local.enter(`m${i}:q`);
      line.completed(1);
      line.leave();
    }
    // The newest 10000 (two generations) are known, the oldest 5000 forgotten.
    expect(local.enter('m14999:q').knownCompleted).toBe(true);
    expect(local.enter('m5000:q').knownCompleted).toBe(true);
    expect(local.enter('m4999:q').knownCompleted).toBe(false);
    expect(local.enter('m0:q').knownCompleted).toBe(false);
  });
});
