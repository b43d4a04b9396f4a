import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KEY_SUFFIXES, keyOf, type KeySuffix, type MessageRef } from '../dedup/keys.js';
import type { DedupStore, FailParams } from '../dedup/store.js';

/** What the contract suite asks a factory for. */
export interface DedupStoreFactoryOptions {
  /** Seconds the `status` key outlives a processed message (Ruby `redis_status_key_expiry_interval`). */
  readonly statusKeyExpiryInterval: number;
  /**
   * Seconds `status=completed` and `expires` outlive the last ack of a message on the full path, at most until
   * its `expires` + 60 s, at least `statusKeyExpiryInterval` (`redisCompletedStatusTtl`); 0 deletes every key.
   */
  readonly completedStatusTtl: number;
}

/**
 * A store under test plus optional hooks that read (or write) its keys behind its back. Stores that keep Ruby
 * Beetle's keys should provide them so the suite can check exact key names, values and TTLs.
 */
export interface DedupStoreUnderTest {
  readonly store: DedupStore;
  /** Every stored key of the message (`msgid:<queue>:<uuid>:*`), full key name → raw value. */
  rawKeys?(ref: MessageRef): Promise<Record<string, string>> | Record<string, string>;
  /** Seconds to live of one key with Redis `TTL` semantics: -1 without expiry, -2 when missing. */
  ttl?(ref: MessageRef, suffix: KeySuffix): Promise<number> | number;
  /** Writes raw values (as Ruby would: plain strings, no TTL), for states the interface cannot reach. */
  seed?(ref: MessageRef, values: Partial<Record<KeySuffix, string>>): Promise<void> | void;
  /**
   * The store's own clock in unix seconds, for a store that decides with a clock shared by its consumers when
   * asked to (`ClaimParams.timeout`, `AcquireParams.timeout`, `FailParams.storeClock`; Redis: `TIME`). The
   * tests of that run only with this hook.
   */
  storeClock?(): Promise<number> | number;
  /** Releases the store after each test; defaults to `store.close()`. */
  dispose?(): Promise<void> | void;
}

/** Creates a fresh store for each test; may return the bare store when it has no hooks. */
export type DedupStoreFactory = (
  options: DedupStoreFactoryOptions,
) => DedupStore | DedupStoreUnderTest | Promise<DedupStore | DedupStoreUnderTest>;

const isStore = (value: DedupStore | DedupStoreUnderTest): value is DedupStore =>
  typeof (value as Partial<DedupStore>).claim === 'function';

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A message nobody else uses: tests may share one Redis database, even across processes. */
const freshRef = (queue = `contract-${randomUUID().slice(0, 8)}`): MessageRef => ({
  queue,
  uuid: randomUUID(),
});

/** The failure parameters of a handler with generous limits (so the retry branch is taken). */
const retryable = (overrides: Partial<FailParams> = {}): FailParams => ({
  now: nowSeconds(),
  attemptsLimit: 10,
  exceptionsLimit: 9,
  accepted: true,
  delay: 10,
  maxDelay: undefined,
  ...overrides,
});

/**
 * The behaviour every `DedupStore` must show, derived from Ruby Beetle's deduplication store (reference §4):
 * key schema and value encodings, the state-machine steps, the failure decision, acknowledgement counting,
 * status-key expiry, the mutex, and atomicity under concurrent calls.
 *
 * ```ts
 * import { describeDedupStoreContract } from '@beetle/core/testing';
 * describeDedupStoreContract('MyStore', (options) => new MyStore(options));
 * ```
 */
export function describeDedupStoreContract(name: string, factory: DedupStoreFactory): void {
  describe(`DedupStore contract: ${name}`, () => {
    /** Builds the per-test fixture for one status-key expiry interval and completed-status TTL. */
    const withStore = (
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
    const expectKeys = async (
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

    describe('key schema and first sighting', () => {
      const fixture = withStore(0);

      it('claims a new message: attempts=1, status=incomplete, expires and timeout stored', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        const result = await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
        expect(result).toEqual({ first: true, attempts: 1 });
        await expectKeys(subject, ref, {
          status: 'incomplete',
          expires: String(now + 86_400),
          timeout: String(now + 600),
          attempts: '1',
        });
        if (subject.ttl) {
          for (const suffix of ['status', 'expires', 'timeout', 'attempts'] as const) {
            expect(await subject.ttl(ref, suffix)).toBe(-1);
          }
          expect(await subject.ttl(ref, 'mutex')).toBe(-2);
        }
      });

      it('uses the key names msgid:<queue>:<uuid>:<suffix>', () => {
        const ref = { queue: 'test', uuid: '1b60cd6e-bf56-48d0-81b0-45187e693d54' };
        expect(KEY_SUFFIXES.map((suffix) => keyOf(ref, suffix))).toEqual([
          'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:status',
          'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:ack_count',
          'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:timeout',
          'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:delay',
          'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:attempts',
          'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:exceptions',
          'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:mutex',
          'msgid:test:1b60cd6e-bf56-48d0-81b0-45187e693d54:expires',
        ]);
      });

      it('returns the stored state on a second claim without changing anything', async () => {
        const { store } = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        const second = await store.claim(ref, { expiresAt: now + 999, timeoutAt: now + 999 });
        expect(second).toEqual({
          first: false,
          state: { status: 'incomplete', delay: undefined, timeout: now + 600, attempts: 1, exceptions: 0 },
        });
        expect(await store.inspect(ref)).toEqual({
          status: 'incomplete',
          expires: String(now + 100),
          timeout: String(now + 600),
          attempts: '1',
        });
      });

      it('returns undefined/0 for missing keys and an empty inspect for unknown messages', async () => {
        const { store } = fixture.current();
        expect(await store.inspect(freshRef())).toEqual({});
      });

      it('keeps messages independent: other queue, other uuid', async () => {
        const { store } = fixture.current();
        const a = freshRef();
        const sameUuidOtherQueue = { queue: `${a.queue}-other`, uuid: a.uuid };
        const otherUuidSameQueue = freshRef(a.queue);
        const now = nowSeconds();
        const params = { expiresAt: now + 100, timeoutAt: now + 600 };
        expect(await store.claim(a, params)).toEqual({ first: true, attempts: 1 });
        expect(await store.claim(sameUuidOtherQueue, params)).toEqual({ first: true, attempts: 1 });
        expect(await store.claim(otherUuidSameQueue, params)).toEqual({ first: true, attempts: 1 });
        await store.complete(a);
        await store.acknowledged(a, { redundant: false });
        expect(await store.inspect(a)).toEqual({});
        for (const other of [sameUuidOtherQueue, otherUuidSameQueue]) {
          expect(await store.inspect(other)).toEqual({
            status: 'incomplete',
            expires: String(now + 100),
            timeout: String(now + 600),
            attempts: '1',
          });
        }
        const fail = await store.fail(sameUuidOtherQueue, retryable({ now }));
        expect(fail.outcome).toBe('HandlerCrash');
        expect((await store.inspect(otherUuidSameQueue)).exceptions).toBeUndefined();
      });
    });

    describe('completion and acknowledgement', () => {
      const fixture = withStore(0);

      it('complete() sets status=completed and timeout=0, leaving the other keys', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        await subject.store.complete(ref);
        await expectKeys(subject, ref, {
          status: 'completed',
          expires: String(now + 100),
          timeout: '0',
          attempts: '1',
        });
        const again = await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        expect(again).toEqual({
          first: false,
          state: { status: 'completed', delay: undefined, timeout: 0, attempts: 1, exceptions: 0 },
        });
      });

      it('non-redundant: acknowledged() deletes every key', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        await subject.store.fail(ref, retryable({ now }));
        await subject.store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 });
        await subject.store.complete(ref);
        expect(Object.keys(await subject.store.inspect(ref)).sort()).toEqual(
          ['attempts', 'delay', 'exceptions', 'expires', 'mutex', 'status', 'timeout'].sort(),
        );
        await subject.store.acknowledged(ref, { redundant: false });
        await expectKeys(subject, ref, {});
      });

      it('redundant: the first ack counts (ack_count=1, keys kept), the second deletes every key', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        await subject.store.complete(ref);
        await subject.store.acknowledged(ref, { redundant: true });
        await expectKeys(subject, ref, {
          status: 'completed',
          expires: String(now + 100),
          timeout: '0',
          attempts: '1',
          ack_count: '1',
        });
        // The second copy: seen before, completed, acked.
        const second = await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 700 });
        expect(second.first).toBe(false);
        if (!second.first) expect(second.state.status).toBe('completed');
        await subject.store.acknowledged(ref, { redundant: true });
        await expectKeys(subject, ref, {});
      });

      it('a leftover attempts key without status: still a first sighting, counting on from it (Ruby INCR)', async () => {
        const subject = fixture.current();
        if (!subject.seed) return; // needs raw writes
        const ref = freshRef();
        const now = nowSeconds();
        await subject.seed(ref, { attempts: '4' });
        expect(await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 })).toEqual({
          first: true,
          attempts: 5,
        });
        await expectKeys(subject, ref, {
          status: 'incomplete',
          expires: String(now + 100),
          timeout: String(now + 600),
          attempts: '5',
        });
      });

      it('redundant: both copies acked by one subscriber are counted in one call (acks: 2)', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        await subject.store.complete(ref);
        await subject.store.acknowledged(ref, { redundant: true, acks: 2 });
        await expectKeys(subject, ref, {});
      });

      it('acks must be a positive integer', async () => {
        const { store } = fixture.current();
        const ref = freshRef();
        for (const acks of [0, -1, 1.5, Number.NaN]) {
          await expect(store.acknowledged(ref, { redundant: true, acks })).rejects.toThrow(TypeError);
        }
        expect(await store.inspect(ref)).toEqual({});
      });

      it('redundant: a count already at 2 or more (retried increments) deletes at the next ack', async () => {
        const subject = fixture.current();
        if (!subject.seed) return; // needs raw writes: the interface cannot push ack_count past 2
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        await subject.store.complete(ref);
        await subject.seed(ref, { ack_count: '5' });
        await subject.store.acknowledged(ref, { redundant: true });
        await expectKeys(subject, ref, {});
      });

      it('an ack of a message without keys (cleaned up, or never claimed) writes nothing', async () => {
        const { store } = fixture.current();
        const ref = freshRef();
        await store.acknowledged(ref, { redundant: true });
        expect(await store.inspect(ref)).toEqual({});
        await store.acknowledged(ref, { redundant: true, acks: 2 });
        await store.acknowledged(ref, { redundant: false });
        expect(await store.inspect(ref)).toEqual({});
      });
    });

    describe('the completed status kept after the last ack (completedStatusTtl 600)', () => {
      const fixture = withStore(0, 600);

      const expectTtl = async (
        subject: DedupStoreUnderTest,
        ref: MessageRef,
        low: number,
        high: number,
      ): Promise<void> => {
        if (!subject.ttl) return;
        for (const suffix of ['status', 'expires'] as const) {
          const ttl = await subject.ttl(ref, suffix);
          expect(ttl).toBeGreaterThanOrEqual(low);
          expect(ttl).toBeLessThanOrEqual(high);
        }
      };

      it('redundant: the second ack keeps status=completed and expires with the TTL, deletes the rest', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
        await subject.store.complete(ref);
        await subject.store.acknowledged(ref, { redundant: true });
        if (subject.ttl) expect(await subject.ttl(ref, 'status')).toBe(-1);
        const second = await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
        expect(second.first === false && second.state.status).toBe('completed');
        await subject.store.acknowledged(ref, { redundant: true });
        await expectKeys(subject, ref, { status: 'completed', expires: String(now + 86_400) });
        await expectTtl(subject, ref, 590, 600);
      });

      it('a copy coming back later (a broker forgot an ack) sees completed; its ack recreates nothing', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
        await subject.store.complete(ref);
        await subject.store.acknowledged(ref, { redundant: true, acks: 2 });
        await expectKeys(subject, ref, { status: 'completed', expires: String(now + 86_400) });
        const late = await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 700 });
        expect(late).toEqual({
          first: false,
          state: { status: 'completed', delay: undefined, timeout: undefined, attempts: 0, exceptions: 0 },
        });
        await subject.store.acknowledged(ref, { redundant: true });
        await subject.store.acknowledged(ref, { redundant: true });
        await subject.store.acknowledged(ref, { redundant: false });
        await expectKeys(subject, ref, { status: 'completed', expires: String(now + 86_400) });
        await expectTtl(subject, ref, 590, 600);
      });

      it('non-redundant: acknowledged() keeps the completed status too (the simple path is untouched)', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
        await subject.store.fail(ref, retryable({ now }));
        await subject.store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 });
        await subject.store.complete(ref);
        await subject.store.acknowledged(ref, { redundant: false });
        await expectKeys(subject, ref, { status: 'completed', expires: String(now + 86_400) });
        await expectTtl(subject, ref, 590, 600);
        // markCompletedIfNew (interval 0) stays Ruby's: no store access.
        const simple = freshRef();
        expect(await subject.store.markCompletedIfNew(simple)).toBe(true);
        expect(await subject.store.inspect(simple)).toEqual({});
      });

      it("the TTL ends a minute after the message's expires_at; a long expired message keeps nothing", async () => {
        const subject = fixture.current();
        const soon = freshRef();
        const gone = freshRef();
        const now = nowSeconds();
        for (const [ref, expiresAt] of [
          [soon, now + 100],
          [gone, now - 3_600],
        ] as const) {
          await subject.store.claim(ref, { expiresAt, timeoutAt: now + 600 });
          await subject.store.complete(ref);
          await subject.store.acknowledged(ref, { redundant: false });
        }
        await expectKeys(subject, soon, { status: 'completed', expires: String(now + 100) });
        await expectTtl(subject, soon, 150, 161);
        await expectKeys(subject, gone, {});
      });
    });

    describe('completed status and status-key expiry together (interval 300, completedStatusTtl 60)', () => {
      const fixture = withStore(300, 60);

      it('the longer of the two applies', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 86_400, timeoutAt: now + 600 });
        await subject.store.complete(ref);
        await subject.store.acknowledged(ref, { redundant: true, acks: 2 });
        await expectKeys(subject, ref, { status: 'completed', expires: String(now + 86_400) });
        if (subject.ttl) {
          const ttl = await subject.ttl(ref, 'status');
          expect(ttl).toBeGreaterThan(290);
          expect(ttl).toBeLessThanOrEqual(300);
        }
      });
    });

    describe('status-key expiry disabled (interval 0)', () => {
      const fixture = withStore(0);

      it('markCompletedIfNew() always allows the run and writes nothing', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        expect(await subject.store.markCompletedIfNew(ref)).toBe(true);
        expect(await subject.store.markCompletedIfNew(ref)).toBe(true);
        expect(await subject.store.markCompletedIfNew(ref)).toBe(true);
        await expectKeys(subject, ref, {});
        const now = nowSeconds();
        expect(await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 })).toEqual({
          first: true,
          attempts: 1,
        });
      });
    });

    describe('status-key expiry (interval 300)', () => {
      const fixture = withStore(300);

      it('markCompletedIfNew() allows the first run only and keeps status=completed with the TTL', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        expect(await subject.store.markCompletedIfNew(ref)).toBe(true);
        expect(await subject.store.markCompletedIfNew(ref)).toBe(false);
        expect(await subject.store.markCompletedIfNew(ref)).toBe(false);
        await expectKeys(subject, ref, { status: 'completed' });
        if (subject.ttl) {
          const ttl = await subject.ttl(ref, 'status');
          expect(ttl).toBeGreaterThan(0);
          expect(ttl).toBeLessThanOrEqual(300);
        }
        // Another queue deduplicates independently.
        expect(await subject.store.markCompletedIfNew({ queue: `${ref.queue}-other`, uuid: ref.uuid })).toBe(
          true,
        );
      });

      it('non-redundant: acknowledged() keeps only status=completed, with the TTL', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        await subject.store.fail(ref, retryable({ now }));
        await subject.store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 });
        await subject.store.complete(ref);
        await subject.store.acknowledged(ref, { redundant: false });
        await expectKeys(subject, ref, { status: 'completed' });
        if (subject.ttl) {
          const ttl = await subject.ttl(ref, 'status');
          expect(ttl).toBeGreaterThan(0);
          expect(ttl).toBeLessThanOrEqual(300);
        }
        // A late redelivery sees the completed status and does not run the handler again.
        const late = await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        expect(late).toEqual({
          first: false,
          state: { status: 'completed', delay: undefined, timeout: undefined, attempts: 0, exceptions: 0 },
        });
        expect(await subject.store.markCompletedIfNew(ref)).toBe(false);
      });

      it('redundant: the status key gets its TTL only at the second ack', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        await subject.store.complete(ref);
        await subject.store.acknowledged(ref, { redundant: true });
        await expectKeys(subject, ref, {
          status: 'completed',
          expires: String(now + 100),
          timeout: '0',
          attempts: '1',
          ack_count: '1',
        });
        if (subject.ttl) expect(await subject.ttl(ref, 'status')).toBe(-1);
        await subject.store.acknowledged(ref, { redundant: true });
        await expectKeys(subject, ref, { status: 'completed' });
        if (subject.ttl) {
          const ttl = await subject.ttl(ref, 'status');
          expect(ttl).toBeGreaterThan(0);
          expect(ttl).toBeLessThanOrEqual(300);
        }
      });
    });

    describe('status-key expiry (interval 1)', () => {
      const fixture = withStore(1);

      it('the kept status key disappears after the interval', async () => {
        const { store } = fixture.current();
        const simple = freshRef();
        const full = freshRef();
        const now = nowSeconds();
        expect(await store.markCompletedIfNew(simple)).toBe(true);
        await store.claim(full, { expiresAt: now + 100, timeoutAt: now + 600 });
        await store.complete(full);
        await store.acknowledged(full, { redundant: false });
        expect(await store.inspect(simple)).toEqual({ status: 'completed' });
        expect(await store.inspect(full)).toEqual({ status: 'completed' });
        await sleep(1_300);
        expect(await store.inspect(simple)).toEqual({});
        expect(await store.inspect(full)).toEqual({});
        expect(await store.markCompletedIfNew(simple)).toBe(true);
      });
    });

    describe('fail()', () => {
      const fixture = withStore(0);

      const claimed = async (store: DedupStore, now: number): Promise<MessageRef> => {
        const ref = freshRef();
        await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        return ref;
      };

      // Ruby's order: the attempts limit, then the exceptions limit, then retryOn; each completes the message.
      it.each([
        ['checks the attempts limit first', 1, 0, 'AttemptsLimitReached'],
        ['checks the exceptions limit before retryOn', 3, 0, 'ExceptionsLimitReached'],
        ['completes the message when retryOn refuses the error', 3, 2, 'ExceptionNotAccepted'],
      ] as const)('%s', async (_, attemptsLimit, exceptionsLimit, outcome) => {
        const subject = fixture.current();
        const now = nowSeconds();
        const ref = await claimed(subject.store, now);
        const result = await subject.store.fail(
          ref,
          retryable({ now, attemptsLimit, exceptionsLimit, accepted: false }),
        );
        expect(result).toEqual({ outcome, attempts: 1, exceptions: 1, delayUntil: undefined });
        await expectKeys(subject, ref, {
          status: 'completed',
          expires: String(now + 100),
          timeout: '0',
          attempts: '1',
          exceptions: '1',
        });
      });

      it('schedules a retry: mutex deleted, timeout=0, delay=now+delay', async () => {
        const subject = fixture.current();
        const now = nowSeconds();
        const ref = await claimed(subject.store, now);
        const first = await subject.store.fail(ref, retryable({ now, attemptsLimit: 3, exceptionsLimit: 2 }));
        expect(first).toEqual({ outcome: 'HandlerCrash', attempts: 1, exceptions: 1, delayUntil: now + 10 });
        await expectKeys(subject, ref, {
          status: 'incomplete',
          expires: String(now + 100),
          timeout: '0',
          attempts: '1',
          exceptions: '1',
          delay: String(now + 10),
        });
        // The retry holds the mutex; its failure releases it.
        const later = now + 11;
        expect(
          await subject.store.acquire(ref, { now: later, timeoutAt: later + 600, staleAfter: 610 }),
        ).toEqual({
          acquired: true,
          attempts: 2,
        });
        expect((await subject.store.inspect(ref)).mutex).toBe(String(later));
        const second = await subject.store.fail(
          ref,
          retryable({ now: later, attemptsLimit: 3, exceptionsLimit: 2, delay: 5 }),
        );
        expect(second).toEqual({
          outcome: 'HandlerCrash',
          attempts: 2,
          exceptions: 2,
          delayUntil: later + 5,
        });
        await expectKeys(subject, ref, {
          status: 'incomplete',
          expires: String(now + 100),
          timeout: '0',
          attempts: '2',
          exceptions: '2',
          delay: String(later + 5),
        });
        const state = await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        expect(state).toEqual({
          first: false,
          state: { status: 'incomplete', delay: later + 5, timeout: 0, attempts: 2, exceptions: 2 },
        });
        // The third run reaches the attempts limit.
        await subject.store.acquire(ref, { now: later + 6, timeoutAt: later + 606, staleAfter: 610 });
        const third = await subject.store.fail(
          ref,
          retryable({ now: later + 6, attemptsLimit: 3, exceptionsLimit: 2 }),
        );
        expect(third).toEqual({
          outcome: 'AttemptsLimitReached',
          attempts: 3,
          exceptions: 3,
          delayUntil: undefined,
        });
        const final = await subject.store.inspect(ref);
        expect(final).toMatchObject({ status: 'completed', timeout: '0', attempts: '3', exceptions: '3' });
      });

      it("reproduces Ruby's worked example (delay 42, timeout 10, exceptions 1, now 10)", async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = 10;
        await subject.store.claim(ref, { expiresAt: nowSeconds() + 100, timeoutAt: now + 10 });
        const result = await subject.store.fail(ref, {
          now,
          attemptsLimit: 2,
          exceptionsLimit: 1,
          accepted: true,
          delay: 42,
          maxDelay: undefined,
        });
        expect(result).toEqual({ outcome: 'HandlerCrash', attempts: 1, exceptions: 1, delayUntil: 52 });
        const keys = await subject.store.inspect(ref);
        expect(keys).toMatchObject({ exceptions: '1', timeout: '0', delay: '52', attempts: '1' });
      });

      it('computes exponential backoff from the attempts counter (delay 3, max 30 and max 10, now 1)', async () => {
        const { store } = fixture.current();
        for (const [maxDelay, expected] of [
          [30, [4, 7, 13, 25]],
          [10, [4, 7, 11, 11]],
        ] as const) {
          // Ruby's test reads attempts n=0..3; here attempts counts the runs, so n=0 is a failure before any run.
          const bare = freshRef();
          const zero = await store.fail(bare, retryable({ now: 1, delay: 3, maxDelay }));
          expect(zero).toEqual({
            outcome: 'HandlerCrash',
            attempts: 0,
            exceptions: 1,
            delayUntil: expected[0],
          });
          expect((await store.inspect(bare)).delay).toBe(String(expected[0]));

          const ref = freshRef();
          await store.claim(ref, { expiresAt: nowSeconds() + 100, timeoutAt: 601 });
          const delays: number[] = [];
          for (let run = 1; run <= 3; run++) {
            if (run > 1) await store.acquire(ref, { now: 1, timeoutAt: 601, staleAfter: 610 });
            const result = await store.fail(ref, retryable({ now: 1, delay: 3, maxDelay }));
            expect(result.attempts).toBe(run);
            expect((await store.inspect(ref)).delay).toBe(String(result.delayUntil));
            delays.push(result.delayUntil ?? Number.NaN);
          }
          expect(delays).toEqual(expected.slice(1));
        }
      });

      it('uses the linear delay when maxDelay is undefined', async () => {
        const { store } = fixture.current();
        const ref = freshRef();
        await store.claim(ref, { expiresAt: nowSeconds() + 100, timeoutAt: 601 });
        const delays: (number | undefined)[] = [];
        for (let run = 1; run <= 3; run++) {
          if (run > 1) await store.acquire(ref, { now: 100, timeoutAt: 700, staleAfter: 610 });
          delays.push((await store.fail(ref, retryable({ now: 100, delay: 7 }))).delayUntil);
        }
        expect(delays).toEqual([107, 107, 107]);
      });
    });

    describe('acquire()', () => {
      const fixture = withStore(0);

      const crashedOnce = async (store: DedupStore, now: number): Promise<MessageRef> => {
        const ref = freshRef();
        await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        await store.fail(ref, retryable({ now }));
        return ref;
      };

      it('takes a free mutex: attempts incremented, timeout and mutex set', async () => {
        const subject = fixture.current();
        const now = nowSeconds();
        const ref = await crashedOnce(subject.store, now);
        const result = await subject.store.acquire(ref, {
          now: now + 20,
          timeoutAt: now + 620,
          staleAfter: 610,
        });
        expect(result).toEqual({ acquired: true, attempts: 2 });
        await expectKeys(subject, ref, {
          status: 'incomplete',
          expires: String(now + 100),
          timeout: String(now + 620),
          attempts: '2',
          exceptions: '1',
          delay: String(now + 10),
          mutex: String(now + 20),
        });
      });

      it('refuses a held, fresh mutex and does NOT delete it (unlike Ruby)', async () => {
        const { store } = fixture.current();
        const now = nowSeconds();
        const ref = await crashedOnce(store, now);
        expect(await store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 })).toEqual({
          acquired: true,
          attempts: 2,
        });
        const before = await store.inspect(ref);
        expect(await store.acquire(ref, { now: now + 5, timeoutAt: now + 605, staleAfter: 610 })).toEqual({
          acquired: false,
        });
        // A third competitor is refused too: the mutex survived the refusal.
        expect(await store.acquire(ref, { now: now + 6, timeoutAt: now + 606, staleAfter: 610 })).toEqual({
          acquired: false,
        });
        // Boundary: exactly staleAfter seconds old still counts as held.
        expect(await store.acquire(ref, { now: now + 610, timeoutAt: now + 1210, staleAfter: 610 })).toEqual({
          acquired: false,
        });
        expect(await store.inspect(ref)).toEqual(before);
      });

      it('takes over a stale mutex (older than staleAfter)', async () => {
        const { store } = fixture.current();
        const now = nowSeconds();
        const ref = await crashedOnce(store, now);
        await store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 });
        const later = now + 611;
        expect(await store.acquire(ref, { now: later, timeoutAt: later + 600, staleAfter: 610 })).toEqual({
          acquired: true,
          attempts: 3,
        });
        expect(await store.inspect(ref)).toMatchObject({
          mutex: String(later),
          timeout: String(later + 600),
          attempts: '3',
        });
      });

      it('works on a message whose mutex was released by fail()', async () => {
        const { store } = fixture.current();
        const now = nowSeconds();
        const ref = await crashedOnce(store, now);
        await store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 });
        await store.fail(ref, retryable({ now }));
        expect((await store.inspect(ref)).mutex).toBeUndefined();
        expect(await store.acquire(ref, { now: now + 1, timeoutAt: now + 601, staleAfter: 610 })).toEqual({
          acquired: true,
          attempts: 3,
        });
      });
    });

    describe("the store's clock (consumers with skewed clocks)", () => {
      const fixture = withStore(0);
      /** The store's clock around `work`, and its result. */
      const between = async <T>(
        subject: DedupStoreUnderTest,
        clock: () => Promise<number> | number,
        work: () => Promise<T>,
      ): Promise<{ before: number; after: number; result: T }> => {
        const before = await clock();
        const result = await work();
        return { before, after: await clock(), result };
      };

      it("claim with a timeout: writes the store's now + timeout and reports its now when seen before", async () => {
        const subject = fixture.current();
        const clock = subject.storeClock?.bind(subject);
        if (!clock) return; // a store without a shared clock uses the caller's times
        const ref = freshRef();
        // The caller's clock is far off: its timeoutAt (10) is ignored.
        const first = await between(subject, clock, () =>
          subject.store.claim(ref, { expiresAt: nowSeconds() + 100, timeoutAt: 10, timeout: 30 }),
        );
        expect(first.result).toEqual({ first: true, attempts: 1 });
        const timeout = Number((await subject.store.inspect(ref)).timeout);
        expect(timeout).toBeGreaterThanOrEqual(first.before + 30);
        expect(timeout).toBeLessThanOrEqual(first.after + 30);
        const second = await between(subject, clock, () =>
          subject.store.claim(ref, { expiresAt: nowSeconds() + 100, timeoutAt: 10, timeout: 30 }),
        );
        if (second.result.first) throw new Error('a second claim must not be a first sighting');
        expect(second.result.state.timeout).toBe(timeout);
        expect(second.result.now).toBeGreaterThanOrEqual(second.before);
        expect(second.result.now).toBeLessThanOrEqual(second.after);
      });

      it("acquire with a timeout: the mutex's value and age, and the timeout, by the store's clock", async () => {
        const subject = fixture.current();
        const clock = subject.storeClock?.bind(subject);
        if (!clock) return;
        const { store } = subject;
        const ref = freshRef();
        const now = nowSeconds();
        await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        await store.fail(ref, retryable({ now }));
        // A consumer whose clock is 10 000 s behind takes the mutex: written with the store's now.
        const taken = await between(subject, clock, () =>
          store.acquire(ref, { now: now - 10_000, timeoutAt: now - 9_400, staleAfter: 610, timeout: 600 }),
        );
        expect(taken.result).toEqual({ acquired: true, attempts: 2 });
        const keys = await store.inspect(ref);
        expect(Number(keys.mutex)).toBeGreaterThanOrEqual(taken.before);
        expect(Number(keys.mutex)).toBeLessThanOrEqual(taken.after);
        expect(Number(keys.timeout)).toBe(Number(keys.mutex) + 600);
        // A consumer 10 000 s ahead finds it fresh (by its own clock it would look stale and be taken over).
        expect(
          await store.acquire(ref, {
            now: now + 10_000,
            timeoutAt: now + 10_600,
            staleAfter: 610,
            timeout: 600,
          }),
        ).toEqual({ acquired: false });
        expect(await store.inspect(ref)).toEqual(keys);
      });

      it("fail with storeClock: the retry's delay from the store's now", async () => {
        const subject = fixture.current();
        const clock = subject.storeClock?.bind(subject);
        if (!clock) return;
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        const failed = await between(subject, clock, () =>
          subject.store.fail(ref, retryable({ now: 10, delay: 7, storeClock: true })),
        );
        expect(failed.result.outcome).toBe('HandlerCrash');
        expect(failed.result.delayUntil).toBeGreaterThanOrEqual(failed.before + 7);
        expect(failed.result.delayUntil).toBeLessThanOrEqual(failed.after + 7);
        expect((await subject.store.inspect(ref)).delay).toBe(String(failed.result.delayUntil));
      });
    });

    describe('completion after the keys were deleted (garbage collection)', () => {
      const fixture = withStore(0);

      it('complete() with expiresAt writes expires too, so recreated keys stay collectable', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        await subject.store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        await subject.store.complete(ref, { expiresAt: now + 100 });
        await expectKeys(subject, ref, {
          status: 'completed',
          expires: String(now + 100),
          timeout: '0',
          attempts: '1',
        });
        // The keys deleted while the handler ran (gc): the late completion brings expires back with status.
        const late = freshRef();
        await subject.store.complete(late, { expiresAt: now + 100 });
        await expectKeys(subject, late, { status: 'completed', expires: String(now + 100), timeout: '0' });
        if (subject.ttl) expect(await subject.ttl(late, 'expires')).toBe(-1);
      });

      it('fail() with expiresAt writes expires with a final outcome', async () => {
        const subject = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        const result = await subject.store.fail(
          ref,
          retryable({ now, attemptsLimit: 1, exceptionsLimit: 0, expiresAt: now + 100 }),
        );
        expect(result.outcome).toBe('ExceptionsLimitReached');
        await expectKeys(subject, ref, {
          status: 'completed',
          expires: String(now + 100),
          timeout: '0',
          exceptions: '1',
        });
      });
    });

    describe('release() of an abandoned run', () => {
      const fixture = withStore(0);

      it('uncounts the attempt and clears timeout and mutex, so the redelivery runs at once', async () => {
        const subject = fixture.current();
        const { store } = subject;
        if (!store.release) return; // optional
        const ref = freshRef();
        const now = nowSeconds();
        await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        expect(await store.release(ref, { attempts: 1 })).toBe(true);
        await expectKeys(subject, ref, {
          status: 'incomplete',
          expires: String(now + 100),
          timeout: '0',
          attempts: '0',
        });
        // The redelivery: seen before, not running, no attempt used: it takes the run at once.
        const state = await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        expect(state).toEqual({
          first: false,
          state: { status: 'incomplete', delay: undefined, timeout: 0, attempts: 0, exceptions: 0 },
        });
        expect(await store.acquire(ref, { now, timeoutAt: now + 600, staleAfter: 610 })).toEqual({
          acquired: true,
          attempts: 1,
        });
        // A retry's run releases its mutex too.
        expect(await store.release(ref, { attempts: 1 })).toBe(true);
        expect(await store.inspect(ref)).toMatchObject({ attempts: '0', timeout: '0' });
        expect((await store.inspect(ref)).mutex).toBeUndefined();
      });

      it('leaves the message alone once it moved on (another run, or completed)', async () => {
        const { store } = fixture.current();
        if (!store.release) return;
        const now = nowSeconds();
        const taken = freshRef();
        await store.claim(taken, { expiresAt: now + 100, timeoutAt: now + 600 });
        await store.fail(taken, retryable({ now }));
        await store.acquire(taken, { now, timeoutAt: now + 600, staleAfter: 610 });
        const before = await store.inspect(taken);
        expect(await store.release(taken, { attempts: 1 })).toBe(false); // attempt 2 runs now
        expect(await store.inspect(taken)).toEqual(before);

        const done = freshRef();
        await store.claim(done, { expiresAt: now + 100, timeoutAt: now + 600 });
        await store.complete(done);
        expect(await store.release(done, { attempts: 1 })).toBe(false);
        expect(await store.inspect(done)).toMatchObject({ status: 'completed', attempts: '1' });

        const unknown = freshRef();
        expect(await store.release(unknown, { attempts: 1 })).toBe(false);
        expect(await store.inspect(unknown)).toEqual({});
      });
    });

    describe('ping() (optional: the health check)', () => {
      const fixture = withStore(0);

      it('resolves while the store can serve calls', async () => {
        const { store } = fixture.current();
        if (!store.ping) return; // optional
        await expect(store.ping()).resolves.toBeUndefined();
      });
    });

    describe('concurrency', () => {
      const fixture = withStore(0);
      const N = 25;

      it(`${N} concurrent claims of one message: exactly one first sighting`, async () => {
        const { store } = fixture.current();
        const ref = freshRef();
        const now = nowSeconds();
        const results = await Promise.all(
          Array.from({ length: N }, (_, i) =>
            store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 + i }),
          ),
        );
        const firsts = results.filter((result) => result.first);
        expect(firsts).toEqual([{ first: true, attempts: 1 }]);
        for (const result of results) {
          if (!result.first) expect(result.state).toMatchObject({ status: 'incomplete', attempts: 1 });
        }
        expect((await store.inspect(ref)).attempts).toBe('1');
      });

      it(`${N} concurrent acquires of one message: exactly one acquired`, async () => {
        const { store } = fixture.current();
        const now = nowSeconds();
        const ref = freshRef();
        await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
        await store.fail(ref, retryable({ now }));
        const results = await Promise.all(
          Array.from({ length: N }, () =>
            store.acquire(ref, { now: now + 11, timeoutAt: now + 611, staleAfter: 610 }),
          ),
        );
        expect(results.filter((result) => result.acquired)).toEqual([{ acquired: true, attempts: 2 }]);
        expect((await store.inspect(ref)).attempts).toBe('2');
      });

      it(`${N} messages handled concurrently do not interfere`, async () => {
        const { store } = fixture.current();
        const now = nowSeconds();
        const refs = Array.from({ length: N }, () => freshRef());
        const outcomes = await Promise.all(
          refs.map(async (ref, i) => {
            const claim = await store.claim(ref, { expiresAt: now + 100, timeoutAt: now + 600 });
            if (i % 2 === 0) {
              await store.complete(ref);
              await store.acknowledged(ref, { redundant: false });
              return claim;
            }
            await store.fail(ref, retryable({ now }));
            return claim;
          }),
        );
        expect(outcomes.every((claim) => claim.first)).toBe(true);
        for (const [i, ref] of refs.entries()) {
          const keys = await store.inspect(ref);
          if (i % 2 === 0) expect(keys).toEqual({});
          else expect(keys).toMatchObject({ status: 'incomplete', exceptions: '1', delay: String(now + 10) });
        }
      });
    });
  });
}
