import amqp from 'amqplib';
import type { Channel, ChannelModel, ConsumeMessage } from 'amqplib';
import { describe, expect, it, vi } from 'vitest';
import { silentLogger } from '@beetle/core';
import { amqplibAckFlush, coalesceWrites } from '@beetle/core/kit';
import { AckBatch } from '../src/ack-batch.js';
import { AmqpConsumerChannel } from '../src/consumer-channel.js';
import { socketOf, type Link } from '../src/link.js';
import type { Delivery } from '../src/types.js';
import { raw, servers, uid } from './helpers.js';

describe('AckBatch', () => {
  const batch = (): { acks: AckBatch; sent: [number, boolean][]; flushes: (() => void)[] } => {
    const sent: [number, boolean][] = [];
    const flushes: (() => void)[] = [];
    const acks = new AckBatch(
      (tag, multiple) => sent.push([tag, multiple]),
      (flush) => flushes.push(flush),
    );
    return { acks, sent, flushes };
  };

  it('sends the run at the front as one multiple ack and the acks behind an unsettled tag one by one', () => {
    const { acks, sent, flushes } = batch();
    for (let tag = 1; tag <= 7; tag++) acks.received(tag);
    for (const tag of [2, 1, 5, 4, 7]) acks.ack(tag);
    expect(flushes).toHaveLength(1); // one flush per turn, however many acks
    expect(sent).toEqual([]);
    flushes[0]!();
    expect(sent).toEqual([
      [2, true],
      [5, false],
      [4, false],
      [7, false],
    ]);
    // 3 and 6 are now the front: acked together, one frame.
    sent.length = 0;
    acks.ack(6);
    acks.ack(3);
    flushes[1]!();
    expect(sent).toEqual([[6, true]]);
  });

  it('writes the waiting acks before a nack, so a later multiple never covers the nacked tag', () => {
    const { acks, sent, flushes } = batch();
    for (let tag = 1; tag <= 4; tag++) acks.received(tag);
    acks.ack(1);
    acks.settledOtherwise(2); // the caller writes its nack right after
    expect(sent).toEqual([[1, false]]);
    acks.ack(3);
    acks.ack(4);
    flushes.forEach((flush) => flush());
    expect(sent).toEqual([
      [1, false],
      [4, true],
    ]);
  });

  it('a single ack at the front goes without multiple', () => {
    const { acks, sent, flushes } = batch();
    acks.received(1);
    acks.received(2);
    acks.ack(1);
    flushes[0]!();
    expect(sent).toEqual([[1, false]]);
    expect(acks.pending).toBe(0);
  });
});

/** A consumer channel on a plain amqplib connection, written to as the broker connection writes (coalesced). */
async function consumerOn(server: string): Promise<{
  model: ChannelModel;
  raw: Channel;
  consumer: AmqpConsumerChannel;
}> {
  const model = await amqp.connect(`amqp://guest:guest@${server}`);
  coalesceWrites(socketOf(model)!);
  const link: Link = {
    role: 'consumer',
    server,
    model,
    operationTimeout: 5,
    blocked: false,
    dead: false,
    unblockWaiters: new Set(),
    channels: new Set(),
    heldWrites: new Set(),
    kill: () => undefined,
  };
  const channel = await model.createChannel();
  const consumer = new AmqpConsumerChannel(server, link, channel, silentLogger);
  return { model, raw: channel, consumer };
}

async function queueWith(server: string, count: number): Promise<string> {
  const queue = `bt-acks-${uid()}`;
  await raw(server, async (ch) => {
    await ch.assertQueue(queue, { durable: false });
    for (let i = 1; i <= count; i++) ch.sendToQueue(queue, Buffer.from(String(i)));
    await ch.checkQueue(queue);
  });
  return queue;
}

const queueLength = (server: string, queue: string): Promise<number> =>
  raw(server, async (ch) => (await ch.checkQueue(queue)).messageCount);

describe('AmqpConsumerChannel acks on a real broker', () => {
  const server = servers[0]!;

  it('acks a run with one multiple frame and never covers a delivery still held', async () => {
    const queue = await queueWith(server, 6);
    const { model, raw: channel, consumer } = await consumerOn(server);
    try {
      const ackFrames = vi.spyOn(channel, 'ack');
      await consumer.prefetch(10);
      const received: Delivery[] = [];
      await consumer.consume(queue, (d) => received.push(d));
      await expect.poll(() => received.length).toBe(6);
      const byBody = (body: string): Delivery => received.find((d) => d.content.toString() === body)!;
      for (const body of ['1', '2', '4', '5', '6']) expect(consumer.ack(byBody(body))).toBe(true);
      await new Promise((resolve) => setImmediate(resolve));
      expect(ackFrames.mock.calls.map(([m, multiple]) => [m.fields.deliveryTag, multiple ?? false])).toEqual([
        [2, true],
        [4, false],
        [5, false],
        [6, false],
      ]);
      let closedWith: Error | undefined | null = null;
      consumer.onClose((error) => (closedWith = error));
      await consumer.close();
      expect(closedWith).toBeUndefined(); // no channel error: every tag acked was known and unsettled
      // Only the held delivery is back on the queue.
      expect(await queueLength(server, queue)).toBe(1);
    } finally {
      await model.close().catch(() => undefined);
      await raw(server, (ch) => ch.deleteQueue(queue));
    }
  });

  it('a nack between acks of one turn: no unknown delivery tag, the nacked message comes back', async () => {
    const queue = await queueWith(server, 4);
    const { model, consumer } = await consumerOn(server);
    try {
      await consumer.prefetch(10);
      const received: ConsumeMessage[] = [];
      await consumer.consume(queue, (d) => received.push(d as ConsumeMessage));
      await expect.poll(() => received.length).toBe(4);
      consumer.ack(received[0]!);
      consumer.reject(received[1]!, true);
      consumer.ack(received[2]!);
      consumer.ack(received[3]!);
      // The requeued one is redelivered on the same channel (a new tag), and acked.
      await expect.poll(() => received.length).toBe(5);
      expect(received[4]!.content.toString()).toBe(received[1]!.content.toString());
      consumer.ack(received[4]!);
      let closedWith: Error | undefined | null = null;
      consumer.onClose((error) => (closedWith = error));
      await consumer.close();
      expect(closedWith).toBeUndefined();
      expect(await queueLength(server, queue)).toBe(0);
    } finally {
      await model.close().catch(() => undefined);
      await raw(server, (ch) => ch.deleteQueue(queue));
    }
  });

  it('amqplibAckFlush fires only once the turn’s batched acks were handed to the socket', async () => {
    const queue = await queueWith(server, 50);
    const { model, consumer } = await consumerOn(server);
    const socket = socketOf(model)!;
    try {
      await consumer.prefetch(100);
      const received: Delivery[] = [];
      await consumer.consume(queue, (d) => received.push(d));
      await expect.poll(() => received.length).toBe(50);
      await new Promise((resolve) => setTimeout(resolve, 50));
      const before = socket.bytesWritten;
      for (const d of received) consumer.ack(d);
      const seen = await new Promise<{ oneImmediate: number; flush: number; pending: number }>((resolve) => {
        let oneImmediate = -1;
        // The flush used before acks were batched: too early now.
        process.nextTick(() => setImmediate(() => (oneImmediate = socket.bytesWritten)));
        amqplibAckFlush(() => {
          const flush = socket.bytesWritten;
          // bytesWritten counts bytes still in the stream's buffer (corked or queued) too: none may be left.
          const pending = socket.writableLength;
          // What a kill -9 right now would leave: only what the kernel already has reaches the broker.
          socket.destroy();
          resolve({ oneImmediate, flush, pending });
        });
      });
      expect(seen.oneImmediate).toBe(before);
      expect(seen.flush - before).toBe(21); // one basic.ack(multiple) frame for all 50
      expect(seen.pending).toBe(0);
      // Every ack made it, though the socket was destroyed at once: nothing goes back on the queue.
      // The broker requeues what it holds unacked once it has seen the connection close; give it time to.
      await new Promise((resolve) => setTimeout(resolve, 1000));
      expect(await queueLength(server, queue)).toBe(0);
    } finally {
      socket.destroy();
      await raw(server, (ch) => ch.deleteQueue(queue));
    }
  });
});
