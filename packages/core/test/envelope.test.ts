import { describe, expect, it } from 'vitest';
import {
  decodeMessage,
  encodeMessage,
  originalRoutingKey,
  ownHeaders,
  type RawDelivery,
} from '../src/envelope.js';
import { MessageDecodingError } from '../src/errors.js';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

const delivery = (
  over: Partial<RawDelivery['properties']> = {},
  content = Buffer.from('x'),
): RawDelivery => ({
  content,
  fields: { routingKey: 'rk', redelivered: false, exchange: 'ex' },
  properties: {
    messageId: 'e0b0b3c2-5b8e-4d43-9f2e-1d2c3b4a5f60',
    timestamp: 1000,
    headers: { format_version: '1', flags: '1', expires_at: '87400' },
    ...over,
  },
});

describe('encodeMessage', () => {
  it('produces the format-1 envelope Ruby Beetle publishes', () => {
    const encoded = encodeMessage('{"seq":42}', { now: 1000 });
    expect(encoded.body.toString()).toBe('{"seq":42}');
    expect(encoded.properties.messageId).toMatch(UUID_V4);
    expect(encoded.properties).toEqual({
      messageId: encoded.properties.messageId,
      timestamp: 1000,
      headers: { format_version: '1', flags: '0', expires_at: '87400' },
      deliveryMode: 2,
      contentType: 'application/octet-stream',
      priority: 0,
    });
    expect(encoded.expiresAt).toBe(87_400);
  });

  it('puts user headers first, drops nulls and keeps AMQP types', () => {
    const { properties } = encodeMessage('x', {
      now: 10,
      ttl: 60,
      redundant: true,
      headers: { foo: 1, bar: 'baz', gone: null, nested: { a: 1.5 }, undef: undefined },
    });
    expect(Object.keys(properties.headers)).toEqual([
      'foo',
      'bar',
      'nested',
      'format_version',
      'flags',
      'expires_at',
    ]);
    expect(properties.headers).toMatchObject({ foo: 1, nested: { a: 1.5 }, flags: '1', expires_at: '70' });
  });

  it('lets the Beetle headers win over user headers of the same name', () => {
    const { properties } = encodeMessage('x', { now: 10, headers: { flags: '7', expires_at: 'never' } });
    expect(properties.headers.flags).toBe('0');
    expect(properties.headers.expires_at).toBe(String(10 + 86_400));
  });

  it('accepts a caller-supplied message id and non-persistent delivery', () => {
    const { properties } = encodeMessage('x', {
      messageId: 'my-id',
      persistent: false,
      replyTo: 'q',
      priority: 3,
    });
    expect(properties).toMatchObject({ messageId: 'my-id', deliveryMode: 1, replyTo: 'q', priority: 3 });
  });

  it('sends bytes verbatim and other payloads as JSON', () => {
    expect(encodeMessage(Buffer.from([0, 255])).body).toEqual(Buffer.from([0, 255]));
    expect(encodeMessage(new Uint8Array([1, 2])).body).toEqual(Buffer.from([1, 2]));
    expect(encodeMessage({ a: [1] }).body.toString()).toBe('{"a":[1]}');
    expect(encodeMessage('').body.length).toBe(0);
  });
});

describe('decodeMessage', () => {
  const source = { queue: 'q', server: 'localhost:5672' };

  it('round-trips an encoded message', () => {
    const encoded = encodeMessage({ n: 1 }, { now: 50, ttl: 10, redundant: true, headers: { h: 'v' } });
    const result = decodeMessage(
      {
        content: encoded.body,
        fields: { routingKey: 'k', redelivered: true, exchange: 'e' },
        properties: encoded.properties,
      },
      source,
    );
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    const m = result.message;
    expect(m).toMatchObject({
      uuid: encoded.properties.messageId,
      timestamp: 50,
      formatVersion: 1,
      flags: 1,
      redundant: true,
      expiresAt: 60,
      routingKey: 'k',
      exchange: 'e',
      redelivered: true,
      queue: 'q',
      server: 'localhost:5672',
    });
    expect(m.headers.h).toBe('v');
    expect(m.json()).toEqual({ n: 1 });
  });

  it('accepts integer header values, as Ruby reads them with to_i', () => {
    const r = decodeMessage(delivery({ headers: { format_version: 1, flags: 0, expires_at: 99 } }), source);
    expect(r.ok && r.message.expiresAt).toBe(99);
    expect(r.ok && r.message.redundant).toBe(false);
  });

  it.each([
    ['no headers', { headers: undefined }, /no headers/],
    ['no message id', { messageId: undefined }, /message_id is missing/],
    ['empty message id', { messageId: '' }, /message_id is missing/],
    ['missing expires_at', { headers: { format_version: '1', flags: '0' } }, /expires_at is missing/],
    [
      'non-numeric flags',
      { headers: { format_version: '1', flags: 'x', expires_at: '1' } },
      /flags must be an integer/,
    ],
    ['float expires_at', { headers: { format_version: '1', flags: '0', expires_at: 1.5 } }, /expires_at/],
    ['colon in id', { messageId: 'a:b' }, /contains ":"/],
  ])('fails with a typed error on %s', (_name, props, pattern) => {
    const r = decodeMessage(delivery(props), source);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.error).toBeInstanceOf(MessageDecodingError);
    expect(r.error.reason).toBe('decoding');
    expect(r.error.message).toMatch(pattern);
  });

  it('reads x-delivery-count and the original routing key after dead lettering', () => {
    const r = decodeMessage(
      delivery({
        headers: {
          format_version: '1',
          flags: '0',
          expires_at: '5',
          'x-delivery-count': 3,
          'x-death': [
            { queue: 'q_dead_letter', 'routing-keys': ['q'] },
            { queue: 'q', 'routing-keys': ['original.key'] },
          ],
        },
      }),
      source,
    );
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.message.deliveryCount).toBe(3);
    expect(r.message.routingKey).toBe('original.key');
  });

  it('keeps the delivery routing key without x-death', () => {
    expect(originalRoutingKey({}, 'rk')).toBe('rk');
    expect(originalRoutingKey({ 'x-death': [] }, 'rk')).toBe('rk');
  });

  it('reports invalid UTF-8 and invalid JSON bodies as decoding errors', () => {
    const r = decodeMessage(delivery({}, Buffer.from([0xff, 0xfe])), source);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(() => r.message.text()).toThrow(MessageDecodingError);
    const r2 = decodeMessage(delivery({}, Buffer.from('{nope')), source);
    expect(r2.ok && (() => r2.message.json())).toThrow(/not valid JSON/);
  });
});

/** A table as amqplib's decoder builds it: `fields[key] = value` on a plain object, for each key in order. */
function amqplibTable(entries: readonly [string, unknown][]): Record<string, unknown> {
  const fields: Record<string, unknown> = {};
  for (const [key, value] of entries) fields[key] = value;
  return fields;
}

describe('ownHeaders (a header named __proto__)', () => {
  it('turns a prototype set through a __proto__ key back into an own key of a null-prototype copy', () => {
    const hostile = amqplibTable([
      ['format_version', '1'],
      ['__proto__', amqplibTable([['flags', '0']])],
    ]);
    expect((hostile as { flags?: unknown }).flags).toBe('0'); // what amqplib hands over: inherited
    const headers = ownHeaders(hostile);
    expect(Object.getPrototypeOf(headers)).toBe(null);
    expect(Object.keys(headers)).toEqual(['format_version', '__proto__']);
    expect(headers['flags']).toBeUndefined();
    expect({ ...(headers['__proto__'] as object) }).toEqual({ flags: '0' });
  });

  it('copies nested tables and the tables in arrays (x-death) the same way', () => {
    const death = amqplibTable([
      ['__proto__', amqplibTable([['routing-keys', ['forged']]])],
      ['count', 1],
    ]);
    const headers = ownHeaders(
      amqplibTable([
        ['x-death', [death]],
        ['bytes', Buffer.from('b')],
      ]),
    );
    const [record] = headers['x-death'] as Record<string, unknown>[];
    expect(Object.getPrototypeOf(record)).toBe(null);
    expect(record!['routing-keys']).toBeUndefined();
    expect(Buffer.isBuffer(headers['bytes'])).toBe(true);
    expect(originalRoutingKey(headers, 'delivered')).toBe('delivered');
  });

  it('returns flat plain headers as they are (no copy on the common path)', () => {
    const flat = amqplibTable([
      ['format_version', '1'],
      ['bytes', Buffer.from('b')],
      ['n', 5],
    ]);
    expect(ownHeaders(flat)).toBe(flat);
  });

  it('decodeMessage reads Beetle headers only from own keys', () => {
    const hostile = amqplibTable([
      [
        '__proto__',
        amqplibTable([
          ['format_version', '1'],
          ['flags', '0'],
          ['expires_at', '99999'],
        ]),
      ],
    ]);
    const r = decodeMessage(delivery({ headers: hostile }), { queue: 'q', server: 's' });
    expect(r.ok).toBe(false);
    expect(!r.ok && r.error.message).toBe('header format_version is missing');
  });
});
