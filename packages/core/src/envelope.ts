import { randomUUID } from 'node:crypto';
import { MessageDecodingError } from './errors.js';
import { DEFAULT_TTL } from './retry-policy.js';

/** Beetle message format version 1 (Ruby `Beetle::Message::FORMAT_VERSION`). */
export const FORMAT_VERSION = 1;
export const FLAG_REDUNDANT = 1;
export const DEFAULT_CONTENT_TYPE = 'application/octet-stream';

/**
 * AMQP field-table values amqplib 0.10 sends faithfully (`validatePublish` refuses the rest with an
 * `InvalidPublishError` before anything is sent):
 * - `number`: finite; beyond ±2^50 only integers within the signed 64-bit range (amqplib's `long`);
 * - `bigint`: within `Number.MIN_SAFE_INTEGER..MAX_SAFE_INTEGER`, sent as that number (amqplib cannot encode
 *   bigints; a larger one would lose digits, send it as a string);
 * - arrays (no `undefined` items) and plain objects (not a `Date`, `Map` or class instance: amqplib would send
 *   an empty table; no `"!"` key, amqplib's typed-value marker).
 */
export type HeaderValue =
  | string
  | number
  | boolean
  | bigint
  | Buffer
  | readonly HeaderValue[]
  | { readonly [key: string]: HeaderValue | null | undefined };

/** User headers: `null` and `undefined` values are dropped, as Ruby drops `nil`. */
export type Headers = Readonly<Record<string, HeaderValue | null | undefined>>;

/** What may be published: bytes and strings go out verbatim; anything else is sent as JSON. */
export type Payload = Buffer | Uint8Array | string | number | boolean | null | object;

export interface EncodeOptions {
  /** Caller-supplied message id (idempotent publishing); a lowercase UUID v4 is generated otherwise. */
  messageId?: string;
  redundant?: boolean;
  /** Seconds until the message counts as `Ancient` (86400). */
  ttl?: number;
  headers?: Headers;
  /** Delivery mode 2 unless false. */
  persistent?: boolean;
  contentType?: string;
  priority?: number;
  replyTo?: string;
  /** Unix seconds; injectable for tests. */
  now?: number;
}

/** Properties in amqplib's `Options.Publish` shape, exactly the format-1 envelope. */
export interface EnvelopeProperties {
  messageId: string;
  timestamp: number;
  headers: Record<string, HeaderValue>;
  deliveryMode: 1 | 2;
  contentType: string;
  priority: number;
  replyTo?: string;
}

export interface EncodedMessage {
  readonly body: Buffer;
  readonly properties: EnvelopeProperties;
  readonly expiresAt: number;
}

export const nowSeconds = (): number => Math.floor(Date.now() / 1000);

export function encodeBody(payload: Payload): Buffer {
  if (Buffer.isBuffer(payload)) return payload;
  if (payload instanceof Uint8Array)
    return Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  if (typeof payload === 'string') return Buffer.from(payload, 'utf8');
  return Buffer.from(JSON.stringify(payload), 'utf8');
}

/**
 * A header value as amqplib can encode it: bigints within the safe integers become numbers (amqplib throws on
 * a bigint). Returns the same value (no copy) when there is nothing to convert; other bigints are left for
 * `validatePublish` to refuse.
 */
function wireValue(value: HeaderValue, depth = 0): HeaderValue {
  if (typeof value === 'bigint') {
    return value >= MIN_SAFE_BIGINT && value <= MAX_SAFE_BIGINT ? Number(value) : value;
  }
  // Deeper nesting (a cycle?) is left alone: validatePublish refuses it.
  if (typeof value !== 'object' || Buffer.isBuffer(value) || depth > 64) return value;
  if (Array.isArray(value)) {
    const items = value as readonly HeaderValue[];
    let copy: HeaderValue[] | undefined;
    items.forEach((item, i) => {
      const converted = item === undefined || item === null ? item : wireValue(item, depth + 1);
      if (converted !== item) (copy ??= [...items])[i] = converted;
    });
    return copy ?? items;
  }
  const table = value as { readonly [key: string]: HeaderValue | null | undefined };
  let copy: Record<string, HeaderValue | null | undefined> | undefined;
  for (const key of Object.keys(table)) {
    const item = table[key];
    const converted = item === undefined || item === null ? item : wireValue(item, depth + 1);
    if (converted !== item) (copy ??= { ...table })[key] = converted;
  }
  return copy ?? value;
}

const MIN_SAFE_BIGINT = BigInt(Number.MIN_SAFE_INTEGER);
const MAX_SAFE_BIGINT = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * Builds the format-1 envelope Ruby Beetle publishes (reference §3.1, §12): user headers first (nulls
 * dropped), then `format_version`, `flags` and `expires_at` as AMQP strings.
 */
export function encodeMessage(payload: Payload, options: EncodeOptions = {}): EncodedMessage {
  const now = options.now ?? nowSeconds();
  const ttl = options.ttl ?? DEFAULT_TTL;
  const expiresAt = now + Math.ceil(ttl);
  const headers: Record<string, HeaderValue> = {};
  for (const [key, value] of Object.entries(options.headers ?? {})) {
    if (value !== null && value !== undefined) headers[key] = wireValue(value);
  }
  headers.format_version = String(FORMAT_VERSION);
  headers.flags = options.redundant ? String(FLAG_REDUNDANT) : '0';
  headers.expires_at = String(expiresAt);
  const properties: EnvelopeProperties = {
    messageId: options.messageId ?? randomUUID(),
    timestamp: now,
    headers,
    deliveryMode: options.persistent === false ? 1 : 2,
    contentType: options.contentType ?? DEFAULT_CONTENT_TYPE,
    priority: options.priority ?? 0,
  };
  if (options.replyTo !== undefined) properties.replyTo = options.replyTo;
  return { body: encodeBody(payload), properties, expiresAt };
}

/** The parts of an AMQP delivery decoding needs (structurally compatible with amqplib's `ConsumeMessage`). */
export interface RawDelivery {
  readonly content: Buffer;
  readonly fields: { readonly routingKey: string; readonly redelivered: boolean; readonly exchange: string };
  readonly properties: {
    readonly messageId?: unknown;
    readonly timestamp?: unknown;
    readonly headers?: Readonly<Record<string, unknown>> | undefined;
    readonly replyTo?: unknown;
    readonly contentType?: unknown;
    readonly correlationId?: unknown;
  };
}

/** Where a delivery came from. */
export interface DeliverySource {
  /** AMQP queue name. */
  readonly queue: string;
  /** Broker as `host:port`. */
  readonly server: string;
}

/** A decoded Beetle message, as handlers see it. */
export interface BeetleMessage {
  /** The AMQP `message_id`; both copies of a redundant message share it. */
  readonly uuid: string;
  readonly timestamp: number | undefined;
  readonly formatVersion: number;
  readonly flags: number;
  readonly redundant: boolean;
  /** Unix seconds after which the message is `Ancient`. */
  readonly expiresAt: number;
  /**
   * All AMQP headers, Beetle's included. Nothing is inherited from a hostile `__proto__` table: headers with
   * such a key, nested tables or arrays (x-death) are null-prototype copies where `__proto__` is an ordinary
   * own key (see `ownHeaders`). Use `Object.hasOwn`, not `headers.hasOwnProperty`.
   */
  readonly headers: Readonly<Record<string, unknown>>;
  readonly body: Buffer;
  /** The routing key it was published with, even after a trip through a dead letter queue. */
  readonly routingKey: string;
  readonly exchange: string;
  readonly redelivered: boolean;
  /** `x-delivery-count` (quorum queues), when present. */
  readonly deliveryCount: number | undefined;
  readonly replyTo: string | undefined;
  readonly queue: string;
  readonly server: string;
  /** The body as UTF-8 text; throws `MessageDecodingError` on invalid UTF-8. */
  text(): string;
  /** The body parsed as JSON; throws `MessageDecodingError` on invalid UTF-8 or JSON. */
  json<T = unknown>(): T;
}

export type DecodeResult =
  | { readonly ok: true; readonly message: BeetleMessage }
  | { readonly ok: false; readonly error: MessageDecodingError };

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

function describe(value: unknown): string {
  try {
    return (JSON.stringify(value) ?? typeof value).slice(0, 40);
  } catch {
    return typeof value;
  }
}

/** The value of 1 to 16 decimal digits and nothing else (what Beetle publishers send), else undefined. */
function plainDigits(text: string): number | undefined {
  const length = text.length;
  if (length === 0 || length > 16) return undefined;
  let value = 0;
  for (let i = 0; i < length; i++) {
    const digit = text.charCodeAt(i) - 48;
    if (digit < 0 || digit > 9) return undefined;
    value = value * 10 + digit;
  }
  return value;
}

/** Ruby reads headers with `to_i`, so strings and integers both work; we also insist they are integers. */
function integerHeader(headers: Readonly<Record<string, unknown>>, name: string): number {
  const value = headers[name];
  if (typeof value === 'number' && Number.isSafeInteger(value)) return value;
  if (typeof value === 'bigint') return Number(value);
  const text = Buffer.isBuffer(value) ? value.toString('utf8') : value;
  if (typeof text === 'string') {
    const digits = plainDigits(text);
    if (digits !== undefined) return digits;
    if (/^\s*-?\d{1,16}\s*$/.test(text)) return Number.parseInt(text, 10);
  }
  throw new MessageDecodingError(
    value === undefined
      ? `header ${name} is missing`
      : `header ${name} must be an integer, got ${typeof value} ${describe(value)}`,
  );
}

/**
 * The headers of a delivery with no key hidden in a prototype. amqplib's decoder assigns every key of a field
 * table to a plain object, so a key `__proto__` whose value is a table (or array, or bytes) sets that object's
 * prototype instead: the headers would inherit keys the message does not have. Such tables, and any headers
 * with nested tables or arrays (x-death records), are copied into null-prototype objects, where the
 * prototype becomes the ordinary own key `__proto__` again. Flat headers of a plain object (the usual Beetle
 * headers) cannot hide anything and are returned as they are, so the common case costs no copy. (A
 * `__proto__` key with a scalar value is dropped by amqplib's assignment and cannot be recovered; with a void
 * value it leaves a null prototype, read as no key, as Ruby drops nil headers.)
 */
export function ownHeaders(table: object): Readonly<Record<string, unknown>> {
  if (Object.getPrototypeOf(table) === Object.prototype) {
    let flat = true;
    for (const key in table) {
      const value = (table as Record<string, unknown>)[key];
      if (typeof value === 'object' && value !== null && !Buffer.isBuffer(value)) {
        flat = false;
        break;
      }
    }
    if (flat) return table as Record<string, unknown>;
  }
  return ownTable(table);
}

function ownTable(table: object): Record<string, unknown> {
  const copy = Object.create(null) as Record<string, unknown>;
  for (const key of Object.keys(table)) copy[key] = ownValue((table as Record<string, unknown>)[key]);
  const prototype: unknown = Object.getPrototypeOf(table);
  // Assigned to a null-prototype object, `__proto__` is an ordinary own key.
  if (prototype !== Object.prototype && prototype !== null) copy['__proto__'] = ownValue(prototype);
  return copy;
}

function ownValue(value: unknown): unknown {
  if (typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) return value.map(ownValue);
  if (ArrayBuffer.isView(value) || value instanceof Date) return value;
  return ownTable(value);
}

/** Ruby `Message#routing_key`: the last x-death record's first routing key, else the delivery's. */
export function originalRoutingKey(headers: Readonly<Record<string, unknown>>, routingKey: string): string {
  const xDeath = headers['x-death'];
  if (Array.isArray(xDeath) && xDeath.length > 0) {
    const last: unknown = xDeath[xDeath.length - 1];
    if (typeof last === 'object' && last !== null) {
      const keys = (last as Record<string, unknown>)['routing-keys'];
      if (Array.isArray(keys) && typeof keys[0] === 'string') return keys[0];
    }
  }
  return routingKey;
}

class DecodedMessage implements BeetleMessage {
  constructor(
    readonly uuid: string,
    readonly timestamp: number | undefined,
    readonly formatVersion: number,
    readonly flags: number,
    readonly expiresAt: number,
    readonly headers: Readonly<Record<string, unknown>>,
    readonly body: Buffer,
    readonly routingKey: string,
    readonly exchange: string,
    readonly redelivered: boolean,
    readonly deliveryCount: number | undefined,
    readonly replyTo: string | undefined,
    readonly queue: string,
    readonly server: string,
  ) {}

  get redundant(): boolean {
    return (this.flags & FLAG_REDUNDANT) === FLAG_REDUNDANT;
  }

  text(): string {
    try {
      return strictUtf8.decode(this.body);
    } catch (cause) {
      throw new MessageDecodingError(`message ${this.uuid}: body is not valid UTF-8`, { cause });
    }
  }

  json<T = unknown>(): T {
    const text = this.text();
    try {
      return JSON.parse(text) as T;
    } catch (cause) {
      throw new MessageDecodingError(`message ${this.uuid}: body is not valid JSON`, { cause });
    }
  }
}

/**
 * Decodes a delivery. Stricter than Ruby (reference §3.3, weak spot 17): a missing message id, missing
 * headers or a missing/non-integer Beetle header is a decoding failure (the `DecodingError` outcome), not a
 * silent `Ancient` or a shared dedup key. Never throws.
 */
export function decodeMessage(raw: RawDelivery, source: DeliverySource): DecodeResult {
  try {
    const { properties, fields } = raw;
    const uuid = properties.messageId;
    if (typeof uuid !== 'string' || uuid.length === 0) {
      throw new MessageDecodingError('message_id is missing');
    }
    if (uuid.includes(':')) throw new MessageDecodingError(`message_id ${JSON.stringify(uuid)} contains ":"`);
    if (
      properties.headers === undefined ||
      properties.headers === null ||
      typeof properties.headers !== 'object'
    ) {
      throw new MessageDecodingError(`message ${uuid} has no headers`);
    }
    const headers = ownHeaders(properties.headers);
    const timestamp = typeof properties.timestamp === 'number' ? properties.timestamp : undefined;
    const deliveryCountValue = headers['x-delivery-count'];
    const deliveryCount =
      typeof deliveryCountValue === 'number' && Number.isSafeInteger(deliveryCountValue)
        ? deliveryCountValue
        : undefined;
    return {
      ok: true,
      message: new DecodedMessage(
        uuid,
        timestamp,
        integerHeader(headers, 'format_version'),
        integerHeader(headers, 'flags'),
        integerHeader(headers, 'expires_at'),
        headers,
        raw.content,
        originalRoutingKey(headers, fields.routingKey),
        fields.exchange,
        fields.redelivered,
        deliveryCount,
        typeof properties.replyTo === 'string' ? properties.replyTo : undefined,
        source.queue,
        source.server,
      ),
    };
  } catch (cause) {
    const error =
      cause instanceof MessageDecodingError
        ? cause
        : new MessageDecodingError(`undecodable message: ${String(cause)}`, { cause });
    return { ok: false, error };
  }
}

/** Ruby `expired?`: strictly before now. */
export const isExpired = (message: Pick<BeetleMessage, 'expiresAt'>, now: number): boolean =>
  message.expiresAt < now;
