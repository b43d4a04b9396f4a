import { describe, expect, it } from 'vitest';
import {
  BeetleError,
  InvalidArgumentError,
  InvariantError,
  MemoryDedupStore,
  isBeetleError,
} from '@beetle/core';

describe('InvalidArgumentError', () => {
  it('is a TypeError and a BeetleError with reason invalid-argument, and no other Beetle class', () => {
    const error = new InvalidArgumentError('x must be positive', { cause: 'why' });
    expect(error).toBeInstanceOf(TypeError);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error).toBeInstanceOf(BeetleError);
    expect(isBeetleError(error)).toBe(true);
    expect(error).not.toBeInstanceOf(InvariantError);
    expect(error).toMatchObject({
      name: 'InvalidArgumentError',
      reason: 'invalid-argument',
      message: 'x must be positive',
      cause: 'why',
    });
  });

  it("is what a store's acknowledged() rejects a bad acks count with", async () => {
    const store = new MemoryDedupStore();
    const rejected = store.acknowledged({ queue: 'q', uuid: 'u' }, { redundant: true, acks: 0 });
    await expect(rejected).rejects.toThrow(InvalidArgumentError);
    await expect(rejected).rejects.toMatchObject({ reason: 'invalid-argument' });
    await store.close();
  });
});
