/**
 * A copy that comes back after its message was completed and every copy acked — a broker killed with
 * `kill -9` forgets acks it had received, and redelivers after its restart — is acked as a duplicate at the
 * default settings: the last ack keeps `status=completed` with a TTL (`redisCompletedStatusTtl`). The
 * broker's forgetting is simulated by publishing the very same envelope (same message id, headers and body)
 * again, which is what the broker hands out after its restart.
 */
import { Outcome, Topology, createConfig } from '@beetle/core';
import { encodeMessage, type EncodeOptions } from '@beetle/core/kit';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Subscriber, type ProcessedEvent } from '@beetle/subscriber';
import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import {
  deleteQueues,
  messageCount,
  raw,
  redisServer,
  servers,
  uid,
  waitFor,
} from './integration-helpers.js';

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A subscriber at the default settings (the store's too), counting handler runs per message text. */
async function listening(): Promise<{
  queue: string;
  store: RedisDedupStore;
  processed: ProcessedEvent[];
  runs: string[];
}> {
  const queue = `beetle-completed-it-${uid()}`;
  const topology = new Topology();
  topology.registerQueue(queue);
  const config = createConfig({ servers, subscriberReconnectDelay: 0.2, stopTimeout: 5 });
  const store = new RedisDedupStore({ redisServer });
  const subscriber = new Subscriber({ config, topology, store });
  const processed: ProcessedEvent[] = [];
  const runs: string[] = [];
  subscriber.on('processed', (event) => processed.push(event));
  subscriber.register(queue, (message) => void runs.push(message.text()), { attempts: 3 });
  cleanups.push(async () => {
    await subscriber.stop({ timeout: 1 });
    await store.close();
    await deleteQueues([queue]);
  });
  await subscriber.listen();
  return { queue, store, processed, runs };
}

/** One envelope, published as it is (same id, headers, body) to `server`, as often as called. */
function envelope(queue: string, options: EncodeOptions): (server: string) => Promise<void> {
  const { body, properties } = encodeMessage('hello', options);
  return (server) =>
    raw(server, async (ch) => {
      ch.publish(queue, queue, body, properties);
      await ch.waitForConfirms();
    });
}

describe('a copy coming back after completion, at the default settings', () => {
  it('both copies acked, then one comes back (a broker forgot its ack): acked as a duplicate', async () => {
    const { queue, store, processed, runs } = await listening();
    const uuid = randomUUID();
    const send = envelope(queue, { messageId: uuid, redundant: true });
    for (const server of servers) await send(server);
    await waitFor(() => processed.length === 2, 15_000, 'both copies processed');
    expect(runs).toEqual(['hello']);

    await send(servers[0]!);
    await waitFor(() => processed.length === 3, 15_000, 'the returning copy processed');
    expect(runs).toEqual(['hello']);
    expect(processed[2]).toMatchObject({ outcome: Outcome.OK, settled: 'acked' });
    // What is left: the completed status and expires, with their TTL.
    const kept = await store.inspect({ queue, uuid });
    expect(Object.keys(kept).sort()).toEqual(['expires', 'status']);
    expect(kept.status).toBe('completed');
    for (const server of servers) expect(await messageCount(server, queue)).toBe(0);
  });

  it('the same copy acked twice, then the other copy: acked as a duplicate', async () => {
    const { queue, processed, runs } = await listening();
    const send = envelope(queue, { messageId: randomUUID(), redundant: true });
    await send(servers[0]!);
    await waitFor(() => processed.length === 1, 15_000, 'the first copy processed');
    // The first copy again (its broker forgot the ack): the ack count reaches 2 with copy B still queued.
    await send(servers[0]!);
    await waitFor(() => processed.length === 2, 15_000, 'the first copy processed again');
    await send(servers[1]!);
    await waitFor(() => processed.length === 3, 15_000, 'the other copy processed');
    expect(runs).toEqual(['hello']);
    expect(processed.map((p) => p.outcome)).toEqual([Outcome.OK, Outcome.OK, Outcome.OK]);
    expect(processed.every((p) => p.settled === 'acked')).toBe(true);
  });

  it('a non-redundant message with retries (the full path) coming back: acked as a duplicate', async () => {
    const { queue, processed, runs } = await listening();
    const send = envelope(queue, { messageId: randomUUID() });
    await send(servers[1]!);
    await waitFor(() => processed.length === 1, 15_000, 'the message processed');
    await send(servers[1]!);
    await waitFor(() => processed.length === 2, 15_000, 'the returning copy processed');
    expect(runs).toEqual(['hello']);
    expect(processed[1]).toMatchObject({ outcome: Outcome.OK, settled: 'acked' });
  });
});
