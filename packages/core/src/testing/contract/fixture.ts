import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, expect } from 'vitest';
import { keyOf, type KeySuffix, type MessageRef } from '../../dedup/keys.js';
import type { DedupStore, FailParams } from '../../dedup/store.js';
import { nowSeconds } from '../../envelope.js';
import { sleep as unrefSleep } from '../../kit/timing.js';
import type { DedupStoreFactory, DedupStoreUnderTest } from './types.js';

export { nowSeconds };

/** Waits `ms`, keeping the process alive (a test is waiting on it). */
export const sleep = (ms: number): Promise<void> => unrefSleep(ms, true);

const isStore = (value: DedupStore | DedupStoreUnderTest): value is DedupStore =>
  typeof (value as Partial<DedupStore>).claim === 'function';

/** A message nobody else uses: tests may share one Redis database, even across processes. */
export const freshRef = (queue = `contract-${randomUUID().slice(0, 8)}`): MessageRef => ({
  queue,
  uuid: randomUUID(),
});

/** The failure parameters of a handler with generous limits (so the retry branch is taken). */
export const retryable = (overrides: Partial<FailParams> = {}): FailParams => ({
  now: nowSeconds(),
  attemptsLimit: 10,
  exceptionsLimit: 9,
  accepted: true,
  delay: 10,
  maxDelay: undefined,
  ...overrides,
});

/**
 * Builds the per-test fixture for one status-key expiry interval and completed-status TTL (call inside a
 * `describe`).
 */
export const withStore = (
  factory: DedupStoreFactory,
  statusKeyExpiryInterval: number,
  completedStatusTtl = 0,
): { current: () => DedupStoreUnderTest } => {
  let underTest: DedupStoreUnderTest | undefined;
  beforeEach(async () => {
    const created = await factory({ statusKeyExpiryInterval, completedStatusTtl });
    underTest = isStore(created) ? { store: created } : created;
  });
  afterEach(async () => {
    const done = underTest;
    underTest = undefined;
    if (done === undefined) return;
    if (done.dispose) await done.dispose();
    else await done.store.close();
  });
  return {
    current: () => {
      if (underTest === undefined) throw new Error('store not created');
      return underTest;
    },
  };
};

/** Checks the message's keys: via the store's `inspect` always, and via `rawKeys` when available. */
export const expectKeys = async (
  subject: DedupStoreUnderTest,
  ref: MessageRef,
  expected: Partial<Record<KeySuffix, string>>,
): Promise<void> => {
  expect(await subject.store.inspect(ref)).toEqual(expected);
  if (subject.rawKeys) {
    const raw: Record<string, string> = {};
    for (const [suffix, value] of Object.entries(expected)) raw[keyOf(ref, suffix as KeySuffix)] = value;
    expect(await subject.rawKeys(ref)).toEqual(raw);
  }
};
