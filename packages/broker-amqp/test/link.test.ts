import amqp from 'amqplib';
import type { ChannelModel } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { BrokerError, silentLogger } from '@beetle/core';
import { AmqpConsumerChannel } from '../src/consumer-channel.js';
import { roundTrip, waitWritable, WriteBuffer, type Link } from '../src/link.js';
import { outcomeUnknown } from '../src/publish-channel.js';
import { drain, raw, servers, uid } from './helpers.js';

/** A link record without a connection behind it (only what the helpers read), and what was killed. */
function fakeLink(model?: ChannelModel, operationTimeout = 0.05): Link & { killed: Error[] } {
  const killed: Error[] = [];
  return {
    role: 'publisher',
    server: 'fake:5672',
    model: model as ChannelModel,
    operationTimeout,
    blocked: false,
    dead: false,
    unblockWaiters: new Set(),
    channels: new Set(),
    heldWrites: new Set(),
    kill: (error) => killed.push(error),
    killed,
  };
}

/** What the connection does on `unblocked`. */
function unblock(link: Link): void {
  link.blocked = false;
  for (const wake of link.unblockWaiters) wake();
  link.unblockWaiters.clear();
}

const notWritable = (blocked: boolean): Error =>
  new BrokerError(blocked ? 'broker-blocked' : 'broker-timeout', 'fake:5672', 'not writable');

describe('waitWritable', () => {
  it('returns once the buffer drained, woken by the drain itself', async () => {
    const link = fakeLink();
    const buffer = new WriteBuffer();
    buffer.full = true;
    let done = false;
    const wait = waitWritable(link, buffer, Date.now() + 5000, () => false, notWritable).then(() => {
      done = true;
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(done).toBe(false);
    const drainedAt = Date.now();
    buffer.drained();
    await wait;
    expect(Date.now() - drainedAt).toBeLessThan(20);
    expect([buffer.waiters.size, link.unblockWaiters.size]).toEqual([0, 0]);
  });

  it('returns once the connection is unblocked, and rejects blocked at the deadline otherwise', async () => {
    const link = fakeLink();
    link.blocked = true;
    const buffer = new WriteBuffer();
    const wait = waitWritable(link, buffer, Date.now() + 5000, () => false, notWritable);
    await new Promise((r) => setTimeout(r, 20));
    const unblockedAt = Date.now();
    unblock(link);
    await wait;
    expect(Date.now() - unblockedAt).toBeLessThan(20);

    link.blocked = true;
    const started = Date.now();
    await expect(
      waitWritable(link, buffer, Date.now() + 100, () => false, notWritable),
    ).rejects.toMatchObject({ reason: 'broker-blocked' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(95);
    expect([buffer.waiters.size, link.unblockWaiters.size]).toEqual([0, 0]);
  });

  it('returns when the channel closes (woken), leaving the error to the caller', async () => {
    const link = fakeLink();
    const buffer = new WriteBuffer();
    buffer.full = true;
    let closed = false;
    const wait = waitWritable(link, buffer, Date.now() + 5000, () => closed, notWritable);
    closed = true;
    buffer.wake();
    await expect(wait).resolves.toBeUndefined();
  });
});

describe('roundTrip', () => {
  it('a timeout is a broker-timeout that kills the link', async () => {
    const link = fakeLink();
    const error = await roundTrip(link, 'queue.declare q', () => new Promise(() => undefined)).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(BrokerError);
    expect(error).toMatchObject({
      reason: 'broker-timeout',
      server: 'fake:5672',
      message: 'fake:5672: queue.declare q timed out after 0.05s',
    });
    expect(link.killed).toEqual([error]);
  });

  it('any other failure (also a synchronous throw) is a broker-closed naming the call; a BrokerError passes', async () => {
    const link = fakeLink();
    await expect(
      roundTrip(link, 'basic.qos 1', () => Promise.reject(new Error('gone'))),
    ).rejects.toMatchObject({
      reason: 'broker-closed',
      message: 'fake:5672: basic.qos 1 failed: gone',
    });
    await expect(
      roundTrip(link, 'basic.cancel t', () => {
        throw new Error('Channel closed');
      }),
    ).rejects.toMatchObject({
      reason: 'broker-closed',
      message: 'fake:5672: basic.cancel t failed: Channel closed',
    });
    const own = new BrokerError('broker-blocked', 'fake:5672', 'blocked');
    await expect(roundTrip(link, 'x', () => Promise.reject(own))).rejects.toBe(own);
    expect(link.killed).toEqual([]);
  });
});

describe('outcomeUnknown', () => {
  it('keeps reason, server and message, marks the outcome unknown and keeps the original as cause', () => {
    // A server name with characters a pattern would take for syntax.
    const original = new BrokerError('broker-closed', 'rabbit+1.(eu):5672', 'publish channel closed: 320');
    const unknown = outcomeUnknown(original);
    expect({
      message: unknown.message,
      detail: unknown.detail,
      reason: unknown.reason,
      server: unknown.server,
      outcomeUnknown: unknown.outcomeUnknown,
      cause: unknown.cause,
    }).toEqual({
      message: 'rabbit+1.(eu):5672: publish channel closed: 320',
      detail: 'publish channel closed: 320',
      reason: 'broker-closed',
      server: 'rabbit+1.(eu):5672',
      outcomeUnknown: true,
      cause: original,
    });
    expect(outcomeUnknown(unknown)).toBe(unknown);
  });
});

describe('AmqpConsumerChannel.publish on a blocked connection', () => {
  it('goes out as soon as the connection is unblocked (woken by the event, not a poll)', async () => {
    const server = servers[0]!;
    const queue = `bt-link-${uid()}`;
    await raw(server, (ch) => ch.assertQueue(queue, { durable: false }));
    const model = await amqp.connect(`amqp://guest:guest@${server}`);
    try {
      const link = fakeLink(model, 5);
      const channel = new AmqpConsumerChannel(server, link, await model.createChannel(), silentLogger);
      link.blocked = true;
      let sentAt = 0;
      const publish = channel.publish('', queue, Buffer.from('reply'), {}).then(() => {
        sentAt = Date.now();
      });
      await new Promise((r) => setTimeout(r, 30));
      expect(sentAt).toBe(0);
      const unblockedAt = Date.now();
      unblock(link);
      await publish;
      // The old loop looked every 100 ms; now the unblock itself wakes the publish.
      expect(sentAt - unblockedAt).toBeLessThan(40);
      await channel.close();
      await new Promise((r) => setTimeout(r, 100));
      expect((await drain(server, queue)).map((m) => m.content.toString())).toEqual(['reply']);
    } finally {
      await model.close().catch(() => undefined);
      await raw(server, (ch) => ch.deleteQueue(queue));
    }
  });
});
