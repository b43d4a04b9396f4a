import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { type Headers } from '@beetle/core';
import {
  encodeMessage,
  HEADER_TABLE_MAX_BYTES,
  validatePublish,
  type EncodedMessage,
} from '@beetle/core/kit';

/** amqplib's own encoder and frame parser: the oracle for what `validatePublish` must accept. */
const require = createRequire(import.meta.url);
// amqplib 2 exports only its APIs: reach its internals by file path from the package's main module.
const amqplibDir = dirname(require.resolve('amqplib'));
const defs = require(join(amqplibDir, 'lib/defs.js')) as {
  BasicProperties: number;
  encodeProperties(id: number, channel: number, size: number, fields: object): Buffer;
};
const frame = require(join(amqplibDir, 'lib/frame.js')) as {
  parseFrame(bin: Buffer): { payload: Buffer; type: number; channel: number; size: number } | false;
  decodeFrame(f: object): { fields: { headers?: Record<string, unknown> } };
};

const target = { exchange: 'x', routingKey: 'k' };

const message = (headers: Headers): EncodedMessage =>
  encodeMessage('body', { headers, messageId: 'id-1', now: 1_700_000_000 });

/** The content header frame amqplib writes for the message, or the error it throws. */
function amqplibFrame(m: EncodedMessage): Buffer | Error {
  try {
    return defs.encodeProperties(defs.BasicProperties, 1, m.body.length, m.properties);
  } catch (error) {
    return error as Error;
  }
}

/** Whether amqplib encodes the headers into a frame that decodes back to exactly the same headers. */
function roundTrips(m: EncodedMessage): boolean {
  const bytes = amqplibFrame(m);
  if (bytes instanceof Error) return false;
  try {
    const parsed = frame.parseFrame(bytes);
    if (parsed === false) return false;
    const decoded = frame.decodeFrame(parsed).fields.headers;
    expect(decoded).toEqual(m.properties.headers);
    return true;
  } catch {
    return false;
  }
}

function accepts(m: EncodedMessage, frameMax?: number): boolean {
  try {
    validatePublish(m, frameMax === undefined ? target : { ...target, frameMax });
    return true;
  } catch (error) {
    expect(error).toMatchObject({ name: 'InvalidPublishError', reason: 'invalid-publish' });
    return false;
  }
}

const header = (value: unknown): Headers => ({ v: value as string });

describe('validatePublish agrees with amqplib 0.10', () => {
  // [what, value, accepted]: accepted values must round-trip through amqplib exactly.
  const values: [string, unknown, boolean][] = [
    ['a string', 'text é', true],
    ['true', true, true],
    ['0', 0, true],
    ['127 (byte)', 127, true],
    ['128 (short)', 128, true],
    ['-129 (short)', -129, true],
    ['2^31 (long)', 2 ** 31, true],
    ['-(2^31) - 1 (long)', -(2 ** 31) - 1, true],
    ['1.5 (double)', 1.5, true],
    ['2^50 - 0.5 (double)', 2 ** 50 - 0.5, true],
    ['2^53 (long)', 2 ** 53, true],
    ['-(2^63) (long)', -(2 ** 63), true],
    ['2^63 (double)', 2 ** 63, true],
    ['a safe bigint (sent as a number)', 2n ** 53n - 1n, true],
    ['a Buffer', Buffer.from([0, 1, 255]), true],
    ['an array', [1, 'a', [true]], true],
    ['a nested table', { a: { b: 'c' }, n: null }, true],
    ['a nested safe bigint', { list: [1n, -7n] }, true],
    ['NaN', Number.NaN, false],
    ['-Infinity', Number.NEGATIVE_INFINITY, false],
    ['2^50 + 0.5 (amqplib: long, throws)', 2 ** 50 + 0.5, false],
    ['-(2^64)', -(2 ** 64), false],
    ['a bigint beyond the safe integers', 2n ** 60n, false],
    ['undefined in an array', [1, undefined], false],
    ['a Date (amqplib: an empty table)', new Date(0), false],
    ['a Map (amqplib: an empty table)', new Map([['a', 1]]), false],
    ['a Uint8Array (amqplib: a table of indices)', new Uint8Array([1, 2]), false],
    ['a "!" key (amqplib: typed-value marker)', { '!': 'nope', value: 1 }, false],
    ['a function', () => 1, false],
    ['a symbol', Symbol('s'), false],
  ];

  it.each(values)('%s: accepted %s only if amqplib sends it faithfully', (_what, value, accepted) => {
    const m = message(header(value));
    expect(accepts(m)).toBe(accepted);
    if (accepted) expect(roundTrips(m)).toBe(true);
    else expect(roundTrips(m)).toBe(false);
  });

  it('+Infinity is refused although amqplib sends it as a double (headers must be finite numbers)', () => {
    const m = message(header(Number.POSITIVE_INFINITY));
    expect(accepts(m)).toBe(false);
    expect(roundTrips(m)).toBe(true);
  });

  it('a cycle is refused (amqplib would overflow its stack)', () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const m = message(header(cyclic));
    expect(accepts(m)).toBe(false);
    expect(amqplibFrame(m)).toBeInstanceOf(RangeError);
  });

  it('the header table: 65536 bytes round-trip, 65537 are silently truncated by amqplib and refused', () => {
    const base = amqplibFrame(message({ k: '' })) as Buffer;
    const tableAt = (fill: number): number =>
      (amqplibFrame(message({ k: 'v'.repeat(fill) })) as Buffer).length;
    // The table grows byte for byte with the fill; find the fill that makes it exactly 65536 bytes.
    const baseTable = base.readUInt32BE(21 + 1 + 'application/octet-stream'.length) + 4;
    const fill = HEADER_TABLE_MAX_BYTES - baseTable;
    const max = message({ k: 'v'.repeat(fill) });
    expect(tableAt(fill)).toBe(base.length + fill);
    expect(accepts(max)).toBe(true);
    expect(roundTrips(max)).toBe(true);
    const over = message({ k: 'v'.repeat(fill + 1) });
    expect(accepts(over)).toBe(false);
    expect(roundTrips(over)).toBe(false);
  });

  // One header of each kind, padded so that amqplib's frame is exactly frame_max: the sizes must be exact.
  it.each(values.filter(([, , accepted]) => accepted))(
    '%s: the frame amqplib writes at exactly frame_max passes, one byte more does not',
    (_what, value) => {
      const frameMax = 4096;
      const sized = (fill: number): EncodedMessage => message({ v: value as string, pad: 'p'.repeat(fill) });
      const fill = frameMax - (amqplibFrame(sized(0)) as Buffer).length;
      expect((amqplibFrame(sized(fill)) as Buffer).length).toBe(frameMax);
      expect(accepts(sized(fill), frameMax)).toBe(true);
      expect(accepts(sized(fill + 1), frameMax)).toBe(false);
      expect(accepts(sized(fill + 1), 0)).toBe(true);
    },
  );

  it.each([
    ['a 255-byte message id', { messageId: 'é'.repeat(127) + 'x' }, true],
    ['a 256-byte message id', { messageId: 'é'.repeat(128) }, false],
    ['a 255-byte reply to', { replyTo: 'r'.repeat(255) }, true],
    ['a 256-byte reply to', { replyTo: 'r'.repeat(256) }, false],
    ['a 256-byte content type', { contentType: 'c'.repeat(256) }, false],
    ['priority 255', { priority: 255 }, true],
    ['priority 256', { priority: 256 }, false],
    ['priority 1.5 (amqplib truncates it to 1)', { priority: 1.5 }, false],
    ['a 256-byte header name', { headers: { ['h'.repeat(256)]: 1 } }, false],
  ] as const)('%s: accepted %s', (_what, options, accepted) => {
    const m = encodeMessage('body', { messageId: 'id-1', now: 1_700_000_000, ...options });
    expect(accepts(m)).toBe(accepted);
    const encoded = amqplibFrame(m);
    if (accepted) expect(encoded).toBeInstanceOf(Buffer);
    else if (!('priority' in options && options.priority === 1.5)) expect(encoded).toBeInstanceOf(Error);
  });
});
