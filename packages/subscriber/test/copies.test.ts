import { describe, expect, it } from 'vitest';
import { HOLD_MS, LocalCopies } from '../src/copies.js';

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

  describe('holding the ack count of a first copy for the other copy', () => {
    const ref = (uuid: string) => ({ queue: 'q', uuid });

    it('the first copy whose handler ran here holds its ack; the twin arriving later records both', () => {
      const { copies: local, advance } = copies();
      const first = local.enter('m1:q', ref('m1'));
      expect(first.completed(1, true)).toBe(true); // held: the caller records nothing
      expect(local.heldMessages).toBe(1);
      first.leave();
      advance(HOLD_MS - 1);
      expect(local.takeDueHeld()).toEqual([]); // not due yet
      const twin = local.enter('m1:q', ref('m1'));
      expect(twin.knownCompleted).toBe(true);
      expect(twin.takeInheritedAcks()).toBe(1);
      expect(local.heldMessages).toBe(0);
      advance(1);
      expect(local.takeDueHeld()).toEqual([]); // taken by the twin: nothing left to record
    });

    it('a held ack the twin does not come for within HOLD_MS is due for recording, once', () => {
      const { copies: local, advance } = copies();
      const first = local.enter('m1:q', ref('m1'));
      expect(first.completed(1, true)).toBe(true);
      first.leave();
      advance(HOLD_MS);
      expect(local.takeDueHeld()).toEqual([{ ref: ref('m1'), acks: 1 }]);
      expect(local.takeDueHeld()).toEqual([]);
      expect(local.heldMessages).toBe(0);
      // The memory of the completion outlives the hold: the twin skips the claim and records its own ack.
      const twin = local.enter('m1:q', ref('m1'));
      expect(twin.knownCompleted).toBe(true);
      expect(twin.inheritedAcks).toBe(0);
    });

    it('stop takes every held ack at once', () => {
      const { copies: local } = copies();
      for (const id of ['m1', 'm2']) {
        const line = local.enter(`${id}:q`, ref(id));
        expect(line.completed(1, true)).toBe(true);
        line.leave();
      }
      expect(local.takeDueHeld(true)).toEqual([
        { ref: ref('m1'), acks: 1 },
        { ref: ref('m2'), acks: 1 },
      ]);
      expect(local.heldMessages).toBe(0);
    });

    it('a twin arriving while the first copy is still in flight takes the held ack at once', () => {
      const { copies: local } = copies();
      const first = local.enter('m1:q', ref('m1'));
      expect(first.completed(1, true)).toBe(true); // acked, still in its postProcess hook
      const twin = local.enter('m1:q', ref('m1'));
      expect(twin.knownCompleted).toBe(true);
      expect(twin.inheritedAcks).toBe(1);
      first.leave();
      expect(local.heldMessages).toBe(0);
      expect(twin.takeInheritedAcks()).toBe(1);
    });

    it('holds nothing for a copy whose handler did not run here, a second copy, or without a ref', () => {
      const { copies: local } = copies();
      expect(local.enter('m1:q', ref('m1')).completed(1, false)).toBe(false); // completed elsewhere
      expect(local.enter('m2:q').completed(1, true)).toBe(false); // no ref
      const first = local.enter('m3:q', ref('m3'));
      const second = local.enter('m3:q', ref('m3'));
      second.waiting = false; // gave up waiting
      expect(first.completed(1, true)).toBe(false);
      expect(local.heldMessages).toBe(0);
    });

    it('the queue of held counts stays bounded when twins take them (no sweep in between)', () => {
      const { copies: local } = copies();
      for (let i = 0; i < 50_000; i++) {
        const first = local.enter(`m${i}:q`, ref(`m${i}`));
        expect(first.completed(1, true)).toBe(true);
        first.leave();
        const twin = local.enter(`m${i}:q`, ref(`m${i}`));
        expect(twin.takeInheritedAcks()).toBe(1);
        twin.leave();
      }
      expect(local.heldMessages).toBe(0);
      const queued = (local as unknown as { held: unknown[]; heldHead: number }).held.length;
      expect(queued).toBeLessThanOrEqual(20_001);
    });

    it('holds at most 10000 ack counts; beyond, the caller records at once', () => {
      const { copies: local } = copies();
      for (let i = 0; i < 10_000; i++) {
        const line = local.enter(`m${i}:q`, ref(`m${i}`));
        expect(line.completed(1, true)).toBe(true);
        line.leave();
      }
      expect(local.enter('over:q', ref('over')).completed(1, true)).toBe(false);
      expect(local.heldMessages).toBe(10_000);
      // Held acks survive the generation drop of the completion memory and are still due once.
      expect(local.takeDueHeld(true)).toHaveLength(10_000);
    });
  });
});
