import type { EncodedMessage } from './envelope.js';
import { InvalidPublishError } from './errors.js';

/** AMQP `shortstr` (message id, routing key, exchange, reply to, content type, header names): 255 bytes. */
export const SHORTSTR_MAX_BYTES = 255;

/**
 * amqplib encodes the header table into a 64 KiB scratch buffer. A bigger table: amqplib 2.3 throws a
 * RangeError; 0.10 cut it off with a wrong length, and the broker closed the connection over the malformed
 * frame (measured). Refused here either way, before anything is sent.
 */
export const HEADER_TABLE_MAX_BYTES = 65_536;

/** Where a message is going, for `validatePublish`. */
export interface PublishTarget {
  readonly exchange: string;
  readonly routingKey: string;
  /**
   * `frame_max` of the publishing connection (config `frameMax`); the content header frame must fit it.
   * 0 or undefined: only amqplib's own limits (the broker's frame_max, RabbitMQ default 131072, then applies).
   */
  readonly frameMax?: number;
}

/** Content header frame bytes besides the properties: frame header 7, class/weight/body size/flags 14, end 1. */
const HEADER_FRAME_OVERHEAD = 22;
/** Nesting beyond this is refused (a cycle would otherwise overflow amqplib's stack). */
const MAX_DEPTH = 64;
const TWO_50 = 2 ** 50;
const TWO_63 = 2 ** 63;

/** A header problem on its way up the nesting; each level adds its key to `path` (no work when all is well). */
class HeaderProblem extends Error {
  readonly path: string[] = [];
  /** Name only the outermost header (a too deep nesting would make a path of dozens of keys). */
  outermost = false;
  /** An upper bound exceeded a limit: not a problem yet, measure exactly. */
  sizeOnly = false;

  static sizeOnly(): HeaderProblem {
    const problem = new HeaderProblem('measure exactly');
    problem.sizeOnly = true;
    return problem;
  }
}

const fail = (field: string, message: string): never => {
  throw new InvalidPublishError(field, message);
};

/**
 * The UTF-8 size of a string: exact, or (the cheap first pass) an upper bound, 3 bytes per UTF-16 unit (a
 * surrogate pair, 2 units, is 4 bytes). Only a message whose bound exceeds a limit is measured exactly.
 */
const bytesOf = (text: string, exact: boolean): number =>
  exact ? Buffer.byteLength(text, 'utf8') : text.length * 3;

/**
 * Checks an encoded message against what amqplib can encode and what every consumer accepts, before anything
 * is sent; throws `InvalidPublishError` (with `field`) otherwise. The sizes are amqplib's exact
 * encoding (content header frame = 22 bytes + properties), so a message that passes goes out as it is.
 */
export function validatePublish(message: EncodedMessage, target: PublishTarget): void {
  const { properties } = message;
  const id: unknown = properties.messageId;
  if (typeof id !== 'string' || id.length === 0) {
    fail('messageId', 'the message id must be a non-empty string');
  }
  if ((id as string).includes(':')) {
    // Consumers refuse it: the dedup keys are msgid:<queue>:<id>:<suffix>.
    fail('messageId', `the message id ${JSON.stringify(id)} must not contain ":"`);
  }
  const { timestamp, priority } = properties;
  if (!Number.isSafeInteger(timestamp) || timestamp < 0) {
    fail('timestamp', `the timestamp must be a non-negative integer (Unix seconds), got ${timestamp}`);
  }
  // Consumers read expires_at as up to 16 digits and drop a message once it has passed.
  if (!Number.isSafeInteger(message.expiresAt) || message.expiresAt <= timestamp) {
    fail(
      'ttl',
      `the ttl must be a finite number of seconds greater than 0 (expires_at would be ${message.expiresAt})`,
    );
  }
  if (!Number.isInteger(priority) || priority < 0 || priority > 255) {
    fail('priority', `the priority must be an integer from 0 to 255, got ${priority}`);
  }
  // Cheap pass with upper bounds; the exact pass (which throws) only when a bound exceeds a limit.
  if (!fitsLimits(message, target, false)) fitsLimits(message, target, true);
}

/**
 * Whether the strings, the header table and the header frame fit their limits. With `exact` false, sizes are
 * upper bounds and `false` means "measure exactly"; with `exact` true, a limit exceeded throws.
 */
function fitsLimits(message: EncodedMessage, target: PublishTarget, exact: boolean): boolean {
  const { properties } = message;
  let fits = true;
  const shortstr = (field: string, value: unknown): number => {
    if (typeof value !== 'string') return fail(field, `${field} must be a string, got ${typeof value}`);
    const bytes = bytesOf(value, exact);
    if (bytes > SHORTSTR_MAX_BYTES) {
      if (exact) fail(field, `${field} is ${bytes} bytes long; AMQP allows at most ${SHORTSTR_MAX_BYTES}`);
      fits = false;
    }
    return bytes;
  };
  // timestamp 8, delivery mode 1, priority 1, then the length-prefixed strings.
  let size = HEADER_FRAME_OVERHEAD + 8 + 1 + 1;
  size += 1 + shortstr('messageId', properties.messageId);
  size += 1 + shortstr('contentType', properties.contentType);
  if (properties.replyTo !== undefined) size += 1 + shortstr('replyTo', properties.replyTo);
  shortstr('exchange', target.exchange);
  shortstr('key', target.routingKey);
  let table: number;
  try {
    table = tableSize(properties.headers, 0, exact);
  } catch (error) {
    if (!(error instanceof HeaderProblem)) throw error;
    if (error.sizeOnly && !exact) return false;
    const field = ['headers', ...error.path.slice(0, error.outermost ? 1 : undefined)].join('.');
    return fail(field, `${field}: ${error.message}`);
  }
  if (table > HEADER_TABLE_MAX_BYTES) {
    if (exact) {
      fail(
        'headers',
        `the headers take ${table} bytes encoded; amqplib encodes at most ${HEADER_TABLE_MAX_BYTES}`,
      );
    }
    fits = false;
  }
  size += table;
  const frameMax = target.frameMax ?? 0;
  if (frameMax > 0 && size > frameMax) {
    if (exact) {
      fail('headers', `the content header frame would take ${size} bytes, more than frame_max ${frameMax}`);
    }
    fits = false;
  }
  return fits;
}

/** Encoded size of a field table (its 4-byte length included), as amqplib's `encodeTable` writes it. */
function tableSize(table: Readonly<Record<string, unknown>>, depth: number, exact: boolean): number {
  let size = 4;
  for (const key of Object.keys(table)) {
    const value = table[key];
    if (value === undefined) continue; // amqplib skips it
    const keyBytes = bytesOf(key, exact);
    if (keyBytes > SHORTSTR_MAX_BYTES) {
      if (!exact) throw HeaderProblem.sizeOnly();
      throw new HeaderProblem(
        `the header name ${JSON.stringify(key.slice(0, 40))}… is ${keyBytes} bytes long; AMQP allows at most ${SHORTSTR_MAX_BYTES}`,
      );
    }
    try {
      size += 1 + keyBytes + valueSize(value, depth, exact);
    } catch (error) {
      if (error instanceof HeaderProblem) error.path.unshift(key);
      throw error;
    }
  }
  return size;
}

/** Encoded size of one field value (tag included), or a `HeaderProblem`. */
function valueSize(value: unknown, depth: number, exact: boolean): number {
  switch (typeof value) {
    case 'string':
      return 1 + 4 + bytesOf(value, exact);
    case 'boolean':
      return 2;
    case 'number':
      return numberSize(value);
    case 'bigint':
      throw new HeaderProblem(
        `the bigint ${value} is outside the safe integers, which is all amqplib can send exactly; send it as a string`,
      );
    case 'object':
      break;
    default:
      throw new HeaderProblem(`a ${typeof value} cannot be sent as a header value`);
  }
  if (value === null) return 1;
  if (Buffer.isBuffer(value)) return 1 + 4 + value.length;
  if (depth >= MAX_DEPTH) {
    const problem = new HeaderProblem(`nested more than ${MAX_DEPTH} levels deep (a cycle?)`);
    problem.outermost = true;
    throw problem;
  }
  if (Array.isArray(value)) {
    let size = 1 + 4;
    (value as readonly unknown[]).forEach((item, i) => {
      try {
        if (item === undefined) throw new HeaderProblem('undefined cannot be sent in a header array');
        size += valueSize(item, depth + 1, exact);
      } catch (error) {
        if (error instanceof HeaderProblem) error.path.unshift(String(i));
        throw error;
      }
    });
    return size;
  }
  const prototype: unknown = Object.getPrototypeOf(value);
  if (prototype !== Object.prototype && prototype !== null) {
    const kind = (value as { constructor?: { name?: string } }).constructor?.name ?? 'object';
    // amqplib would send a Date, Map or class instance as a table of its enumerable properties (often empty).
    throw new HeaderProblem(
      `a ${kind} cannot be sent as a header value (strings, numbers, booleans, safe bigints, Buffers, arrays and plain objects can)${kind === 'Date' ? '; send date.toISOString() or a number' : ''}`,
    );
  }
  if (Object.hasOwn(value, '!')) {
    throw new HeaderProblem('a "!" key is amqplib\'s typed-value marker and cannot be sent as a header name');
  }
  return 1 + tableSize(value as Readonly<Record<string, unknown>>, depth + 1, exact);
}

/** amqplib's choice of type for a number: double for fractions below 2^50 and from 2^63 on, else an integer. */
function numberSize(value: number): number {
  if (!Number.isFinite(value)) throw new HeaderProblem(`${value} cannot be sent as a header value`);
  if (value >= TWO_63) return 9;
  if (Math.abs(value) < TWO_50) {
    if (!Number.isInteger(value)) return 9;
    if (value >= -128 && value < 128) return 2;
    if (value >= -0x8000 && value < 0x8000) return 3;
    if (value >= -0x80000000 && value < 0x80000000) return 5;
    return 9;
  }
  // amqplib sends these as a signed 64-bit integer and throws for fractions and values below -2^63.
  if (!Number.isInteger(value) || value < -TWO_63) {
    throw new HeaderProblem(`${value} is not an integer in the signed 64-bit range amqplib sends it as`);
  }
  return 9;
}
