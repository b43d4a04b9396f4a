/**
 * A header table with a key `__proto__`, published with raw amqplib to a real broker and consumed by a real
 * Subscriber (Redis store). amqplib's decoder assigns each key of a field table to a plain object, so the key
 * `__proto__` used to become the prototype of the headers (or of a nested table): inherited keys a message does
 * not have, e.g. Beetle headers read through the prototype.
 */
import { randomUUID } from 'node:crypto';
import { MessageDecodingError, Outcome, Topology, createConfig } from '@beetle/core';
import { encodeMessage } from '@beetle/core/kit';
import { RedisDedupStore } from '@beetle/dedup-redis';
import { Subscriber, type AnyMessage, type HandlerMessage, type ProcessedEvent } from '@beetle/subscriber';
import { afterEach, describe, expect, it } from 'vitest';
import { deleteQueues, publishRaw, redisServer, servers, uid, waitFor } from './integration-helpers.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** JSON.parse makes `__proto__` an own key, which amqplib's encoder (`for ... in`) sends as a table key. */
const withProtoKey = (json: string): Record<string, unknown> => JSON.parse(json) as Record<string, unknown>;

async function consume(queue: string): Promise<{
  subscriber: Subscriber;
  handled: HandlerMessage[];
  failed: AnyMessage[];
  processed: ProcessedEvent[];
}> {
  const topology = new Topology();
  topology.registerQueue(queue);
  const store = new RedisDedupStore({ redisServer, failoverTimeout: 3 });
  const subscriber = new Subscriber({
    config: createConfig({ servers: [servers[0]!], stopTimeout: 2 }),
    topology,
    store,
  });
  const handled: HandlerMessage[] = [];
  const failed: AnyMessage[] = [];
  const processed: ProcessedEvent[] = [];
  subscriber.register(queue, (message) => void handled.push(message), {
    errback: (message) => void failed.push(message),
  });
  subscriber.on('processed', (event) => processed.push(event));
  cleanups.push(async () => {
    await subscriber.stop({ timeout: 1 });
    await store.close();
    await deleteQueues([queue]);
  });
  await subscriber.listen();
  return { subscriber, handled, failed, processed };
}

describe('a hostile header table with a key __proto__ (real broker, real Subscriber)', () => {
  it('is an ordinary own key of null-prototype headers, nested tables and x-death records; nothing inherits from it', async () => {
    const queue = `beetle-proto-${uid()}`;
    const { handled, processed } = await consume(queue);
    const { properties } = encodeMessage('hello');
    const headers = {
      ...properties.headers,
      ...withProtoKey('{"__proto__": {"polluted": "top", "x-death": "forged"}}'),
      nested: withProtoKey('{"__proto__": {"polluted": "nested"}, "inner": "value"}'),
      'x-death': [withProtoKey('{"__proto__": {"polluted": "x-death"}, "routing-keys": ["original"]}')],
    };
    await publishRaw(servers[0]!, queue, queue, Buffer.from('hello'), { ...properties, headers });
    await waitFor(() => processed.length === 1, 10_000, 'the hostile message processed');
    expect(processed[0]?.outcome).toBe(Outcome.OK);

    const seen = handled[0]!.headers as Record<string, unknown>;
    expect(Object.getPrototypeOf(seen)).toBe(null);
    expect(Object.hasOwn(seen, '__proto__')).toBe(true);
    expect({ ...(seen['__proto__'] as object) }).toEqual({ polluted: 'top', 'x-death': 'forged' });
    expect(seen['polluted']).toBeUndefined();
    expect(seen.format_version).toBe('1');

    const nested = seen['nested'] as Record<string, unknown>;
    expect(Object.getPrototypeOf(nested)).toBe(null);
    expect(nested['polluted']).toBeUndefined();
    expect({ ...nested }).toEqual({ inner: 'value', ['__proto__']: { polluted: 'nested' } });

    const [death] = seen['x-death'] as Record<string, unknown>[];
    expect(Object.getPrototypeOf(death)).toBe(null);
    expect(death!['polluted']).toBeUndefined();
    expect(Object.hasOwn(death!, '__proto__')).toBe(true);
    // The original routing key is still read from the (own) x-death record.
    expect(handled[0]!.routingKey).toBe('original');
    // Nothing global changed.
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
  });

  it('Beetle headers only inside a __proto__ table do not count: DecodingError, acked, handler not run', async () => {
    const queue = `beetle-proto-${uid()}`;
    const { handled, failed, processed } = await consume(queue);
    const expiresAt = Math.floor(Date.now() / 1000) + 3600;
    const headers = withProtoKey(
      `{"__proto__": {"format_version": "1", "flags": "0", "expires_at": "${expiresAt}"}}`,
    );
    await publishRaw(servers[0]!, queue, queue, Buffer.from('sneaky'), {
      messageId: randomUUID(),
      headers,
    });
    await waitFor(() => processed.length === 1, 10_000, 'the hostile message processed');
    expect(processed[0]?.outcome).toBe(Outcome.DecodingError);
    expect(processed[0]?.error).toBeInstanceOf(MessageDecodingError);
    expect(handled).toEqual([]);
    const undecoded = failed[0]!.headers as Record<string, unknown>;
    expect(Object.getPrototypeOf(undecoded)).toBe(null);
    expect(undecoded['format_version']).toBeUndefined();
    expect(Object.keys(undecoded)).toEqual(['__proto__']);
  });
});
