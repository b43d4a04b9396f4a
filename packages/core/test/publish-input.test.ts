import { describe, expect, it } from 'vitest';
import { InvalidPublishError, type Headers } from '@beetle/core';
import {
  encodeMessage,
  MSG_ID_PATTERN,
  parseKey,
  RUBY_MSG_ID_PATTERN,
  validatePublish,
} from '@beetle/core/kit';

describe('parseKey', () => {
  it('reads keys of any message id without ":" (Ruby only reads lowercase hex ids)', () => {
    for (const id of ['ORDER-42', 'Order 7/x', 'AB12CD34-0000-4000-8000-000000000000', 'ab-12', '']) {
      const key = `msgid:orders:${id}:expires`;
      expect(parseKey(key)).toEqual({
        msgId: `msgid:orders:${id}`,
        queue: 'orders',
        uuid: id,
        suffix: 'expires',
      });
    }
    expect(RUBY_MSG_ID_PATTERN.test('msgid:orders:ORDER-42:expires')).toBe(false);
  });

  it('reads every key Ruby reads the same way', () => {
    for (const key of [
      'msgid:q:0a1b2c3d-aaaa-4bbb-8ccc-0123456789ab:status',
      'msgid::ab:ack_count',
      'msgid:q::mutex',
      'msgid:q:ab:x:y',
    ]) {
      expect(MSG_ID_PATTERN.exec(key)?.slice(1)).toEqual(RUBY_MSG_ID_PATTERN.exec(key)?.slice(1));
    }
    expect(parseKey('other')).toBeUndefined();
    expect(parseKey('msgid:q:ab')).toBeUndefined();
  });
});

describe('encodeMessage and validatePublish', () => {
  const target = { exchange: 'x', routingKey: 'k' };

  it('sends bigints within the safe integers as numbers, without touching the caller headers', () => {
    const nested = { list: [1n, 'a'], deep: { n: -3n } };
    const headers: Headers = { id: 9_007_199_254_740_991n, nested, text: 'a' };
    const { properties } = encodeMessage('x', { headers });
    expect(properties.headers).toMatchObject({
      id: 9_007_199_254_740_991,
      nested: { list: [1, 'a'], deep: { n: -3 } },
      text: 'a',
    });
    expect(nested.list[0]).toBe(1n);
    const plain = { a: [1, 2] };
    expect(encodeMessage('x', { headers: { plain } }).properties.headers.plain).toBe(plain);
  });

  it.each([
    ['messageId', { messageId: 'a:b' }, /must not contain ":"/],
    ['messageId', { messageId: '' }, /non-empty/],
    ['ttl', { ttl: Number.NaN }, /ttl must be a finite number of seconds greater than 0/],
    ['ttl', { ttl: -5 }, /expires_at would be/],
    ['priority', { priority: 300 }, /integer from 0 to 255, got 300/],
    ['headers.a.0', { headers: { a: [2n ** 64n] } }, /outside the safe integers.*as a string/],
    [
      'headers.when',
      { headers: { when: new Date(0) as unknown as string } },
      /Date cannot be sent.*toISOString/,
    ],
  ] as const)('refuses with field %s', (field, options, message) => {
    const m = encodeMessage('x', options);
    let error: unknown;
    try {
      validatePublish(m, target);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(InvalidPublishError);
    expect(error).toMatchObject({ reason: 'invalid-publish', field });
    expect((error as Error).message).toMatch(message);
  });

  it('refuses a routing key or exchange over 255 bytes', () => {
    const m = encodeMessage('x');
    expect(() => validatePublish(m, { exchange: 'x', routingKey: 'k'.repeat(256) })).toThrow(
      expect.objectContaining({ field: 'key' }) as Error,
    );
    expect(() => validatePublish(m, { exchange: 'e'.repeat(256), routingKey: 'k' })).toThrow(
      expect.objectContaining({ field: 'exchange' }) as Error,
    );
    expect(() =>
      validatePublish(m, { exchange: 'e'.repeat(255), routingKey: 'k'.repeat(255) }),
    ).not.toThrow();
  });
});
