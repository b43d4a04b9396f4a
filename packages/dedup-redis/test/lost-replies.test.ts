import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { type MessageRef } from '@beetle/core';
import { allKeysOf, keyOf, msgId } from '@beetle/core/kit';
import { freePort, type ServiceHandle, startRedis } from '@beetle/test-services';
import { RedisDedupStore } from '../src/index.js';
import { nowSeconds, rawClient, ReplyFaultProxy, sleep } from './helpers.js';

/**
 * Calls whose reply is lost after Redis ran them, and which the store therefore sends again (a connection
 * reset mid-call, a master switch while the call is in flight): the resend must be answered as the call
 * was, not act a second time. Each test loses the reply of the first command that carries its message's id.
 */

const freshRef = (): MessageRef => ({ queue: 'lost-replies', uuid: randomUUID() });

/** Matches the client's chunk that carries a command on `ref`'s keys. */
const carries =
  (ref: MessageRef) =>
  (data: Buffer): boolean =>
    data.toString('latin1').includes(msgId(ref));

const retryable = { attemptsLimit: 3, exceptionsLimit: 2, accepted: true, delay: 10, maxDelay: undefined };

describe('lost replies on a disposable Redis', () => {
  let server: ServiceHandle;
  let proxy: ReplyFaultProxy;
  let raw: Redis;
  const stores: RedisDedupStore[] = [];

  const store = (statusKeyExpiryInterval = 0): RedisDedupStore => {
    const created = new RedisDedupStore({
      redisServer: proxy.address,
      failoverTimeout: 10,
      retryInterval: 0.2,
      statusKeyExpiryInterval,
    });
    stores.push(created);
    return created;
  };

  beforeAll(async () => {
    server = await startRedis(await freePort());
    proxy = await ReplyFaultProxy.start(server.address);
    raw = rawClient(server.address);
  });

  afterEach(async () => {
    await Promise.all(stores.splice(0).map((s) => s.close()));
  });

  afterAll(async () => {
    await raw.quit();
    await proxy.close();
    await server.stop();
  });

  it('a claim batch whose reply is lost to a connection reset: every message still a first sighting', async () => {
    const subject = store();
    await subject.ping();
    const now = nowSeconds();
    const refs = Array.from({ length: 40 }, freshRef);
    const fault = proxy.loseNextReply(carries(refs[0]!));
    // Claimed in one tick: one script call for all 40.
    const claims = await Promise.all(
      refs.map((ref) => subject.claim(ref, { expiresAt: now + 600, timeoutAt: now + 60, timeout: 60 })),
    );
    await fault;
    const firsts = claims.filter((claim) => claim.first && claim.attempts === 1).length;
    console.info(`[lost claim reply] ${firsts} of ${refs.length} claims answered as first sightings`);
    expect(firsts).toBe(40);
    // Redis ran the batch once: one attempt counted per message.
    expect(await raw.mget(refs.map((ref) => keyOf(ref, 'attempts')))).toEqual(refs.map(() => '1'));
  });

  it('an acquire whose reply is lost: the resend gets the mutex it took, the attempt counted once', async () => {
    const subject = store();
    const ref = freshRef();
    const now = nowSeconds();
    await subject.claim(ref, { expiresAt: now + 600, timeoutAt: now + 60 });
    await subject.fail(ref, { ...retryable, now: now - 20 }); // retry due at once
    const fault = proxy.loseNextReply(carries(ref));
    const acquired = await subject.acquire(ref, {
      now,
      timeoutAt: now + 60,
      staleAfter: 70,
      timeout: 60,
    });
    await fault;
    expect(acquired).toEqual({ acquired: true, attempts: 2 });
    expect(await raw.get(keyOf(ref, 'attempts'))).toBe('2');
  });

  it('a failure whose reply is lost: the exception counted once, the retry scheduled', async () => {
    const subject = store();
    const ref = freshRef();
    const now = nowSeconds();
    await subject.claim(ref, { expiresAt: now + 600, timeoutAt: now + 60 });
    const fault = proxy.loseNextReply(carries(ref));
    // exceptionsLimit 1: a second INCR exceptions would end the message as ExceptionsLimitReached.
    const failed = await subject.fail(ref, { ...retryable, exceptionsLimit: 1, now });
    await fault;
    expect(failed).toMatchObject({ outcome: 'HandlerCrash', attempts: 1, exceptions: 1 });
    expect(await raw.mget(keyOf(ref, 'exceptions'), keyOf(ref, 'status'))).toEqual(['1', 'incomplete']);
  });

  it('the first ack of a redundant message whose reply is lost: counted once, the keys kept for the other copy', async () => {
    const subject = store();
    const ref = freshRef();
    const now = nowSeconds();
    await subject.claim(ref, { expiresAt: now + 600, timeoutAt: now + 60 });
    await subject.complete(ref, { expiresAt: now + 600 });
    const fault = proxy.loseNextReply(carries(ref));
    await subject.acknowledged(ref, { redundant: true });
    await fault;
    expect(await raw.mget(keyOf(ref, 'ack_count'), keyOf(ref, 'status'))).toEqual(['1', 'completed']);
    // The other copy sees the message completed (counted twice, the keys would be gone and it would run again).
    const second = await subject.claim(ref, { expiresAt: now + 600, timeoutAt: now + 60 });
    expect(second.first === false && second.state.status).toBe('completed');
  });

  it('the last ack of a redundant message whose reply is lost: the resend finds the keys cleaned up, counts nothing', async () => {
    const subject = store();
    const ref = freshRef();
    const now = nowSeconds();
    await subject.claim(ref, { expiresAt: now + 600, timeoutAt: now + 60 });
    await subject.complete(ref, { expiresAt: now + 600 });
    await subject.acknowledged(ref, { redundant: true });
    const fault = proxy.loseNextReply(carries(ref));
    await subject.acknowledged(ref, { redundant: true });
    await fault;
    // Counted again, the resend would leave ack_count=1 behind (an orphan for the garbage collector); only
    // the completed status and expires are left, with their TTL.
    expect(await subject.inspect(ref)).toEqual({ status: 'completed', expires: String(now + 600) });
    expect(await raw.ttl(keyOf(ref, 'status'))).toBeGreaterThan(590);
    expect(await raw.exists(...allKeysOf(ref))).toBe(2);
  });

  it('a simple message (status-key expiry) whose SET NX reply is lost: the handler may still run', async () => {
    const subject = store(300);
    const ref = freshRef();
    await subject.ping();
    const fault = proxy.loseNextReply(carries(ref));
    const mayRun = await subject.markCompletedIfNew(ref);
    await fault;
    expect(mayRun).toBe(true);
    expect(await raw.get(keyOf(ref, 'status'))).toBe('completed');
    expect(await raw.ttl(keyOf(ref, 'status'))).toBeGreaterThan(290);
    // A real duplicate is still refused.
    expect(await subject.markCompletedIfNew(ref)).toBe(false);
  });

  it('a release whose reply is lost: the attempt uncounted once, and reported released', async () => {
    const subject = store();
    const ref = freshRef();
    const now = nowSeconds();
    await subject.claim(ref, { expiresAt: now + 600, timeoutAt: now + 60 });
    const fault = proxy.loseNextReply(carries(ref));
    expect(await subject.release(ref, { attempts: 1 })).toBe(true);
    await fault;
    expect(await raw.mget(keyOf(ref, 'attempts'), keyOf(ref, 'timeout'))).toEqual(['0', '0']);
  });

  it('keeps the replies only while their calls may be resent: the next call deletes them, the TTL covers the rest', async () => {
    const subject = store();
    const now = nowSeconds();
    const before = (await raw.keys('beetle:reply:*')).length;
    for (let round = 0; round < 5; round++) {
      await Promise.all(
        Array.from({ length: 50 }, async () => {
          const ref = freshRef();
          await subject.claim(ref, { expiresAt: now + 600, timeoutAt: now + 60 });
          await subject.complete(ref);
          await subject.acknowledged(ref, { redundant: true });
          await subject.acknowledged(ref, { redundant: true });
        }),
      );
    }
    // 5 × (1 claim batch + 50 first counts) calls stored a reply (the last counts, which delete the keys,
    // store none). Those that arrived are deleted 16 or more at a time by later calls: at most the last 50,
    // in flight together, and fewer than 16 before them are left, then the next call deletes them.
    expect((await raw.keys('beetle:reply:*')).length - before).toBeLessThanOrEqual(50 + 15);
    await subject.claim(freshRef(), { expiresAt: now + 600, timeoutAt: now + 60 });
    const left = await raw.keys('beetle:reply:*');
    expect(left.length - before).toBeLessThanOrEqual(16);
    for (const key of left) {
      const ttl = await raw.ttl(key);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(10 + 60);
    }
  });
});

describe('a master switch while a claim is in flight', () => {
  let master: ServiceHandle;
  let replica: ServiceHandle;
  let proxy: ReplyFaultProxy;
  let dir: string;
  let store: RedisDedupStore | undefined;

  beforeAll(async () => {
    master = await startRedis(await freePort());
    replica = await startRedis(await freePort(), { replicaOf: master.address });
    proxy = await ReplyFaultProxy.start(master.address);
    dir = await mkdtemp(join(tmpdir(), 'beetle-lost-replies-'));
  });

  afterAll(async () => {
    await store?.close();
    await proxy.close();
    await master.stop(); // resumes it first if paused
    await replica.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('the claim resent to the promoted replica is answered as it was on the old master', async () => {
    const file = join(dir, 'redis-master');
    await writeFile(file, proxy.address);
    store = new RedisDedupStore({ redisServer: file, failoverTimeout: 20, readTimeout: 0.5 });
    await store.ping();
    const onMaster = rawClient(master.address);
    const onReplica = rawClient(replica.address);
    try {
      const now = nowSeconds();
      const refs = Array.from({ length: 40 }, freshRef);
      // The old master runs the batch, replicates it, and stalls before its reply gets out.
      const fault = proxy.loseNextReply(carries(refs[0]!), 'withhold');
      const claims = Promise.all(
        refs.map((ref) => store!.claim(ref, { expiresAt: now + 600, timeoutAt: now + 60, timeout: 60 })),
      );
      await fault;
      expect(await onMaster.wait(1, 5000)).toBe(1);
      await master.pause();
      // The failover: the replica becomes the master and the master file names it.
      await onReplica.replicaof('NO', 'ONE');
      await writeFile(file, replica.address);
      const results = await claims;
      const firsts = results.filter((claim) => claim.first && claim.attempts === 1).length;
      console.info(`[master switch] ${firsts} of ${refs.length} claims answered as first sightings`);
      expect(firsts).toBe(40);
      expect(store.currentServer).toBe(replica.address);
      expect(await onReplica.mget(refs.map((ref) => keyOf(ref, 'attempts')))).toEqual(refs.map(() => '1'));
    } finally {
      onMaster.disconnect();
      await onReplica.quit();
      await sleep(0);
    }
  });
});
