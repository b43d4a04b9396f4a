/**
 * Ruby Beetle's key schema: `msgid:<queue>:<uuid>:<suffix>`. `status` must stay first (Ruby relies on it).
 * Shared by every store so that a Ruby consumer and a TypeScript consumer read the same keys.
 */
export const KEY_SUFFIXES = [
  'status',
  'ack_count',
  'timeout',
  'delay',
  'attempts',
  'exceptions',
  'mutex',
  'expires',
] as const;

export type KeySuffix = (typeof KEY_SUFFIXES)[number];

/** Identifies one message in one queue: each queue deduplicates independently. */
export interface MessageRef {
  /** AMQP name of the queue the message was consumed from. */
  readonly queue: string;
  /** The AMQP `message_id`. */
  readonly uuid: string;
}

export const msgId = (ref: MessageRef): string => `msgid:${ref.queue}:${ref.uuid}`;

export const keyOf = (ref: MessageRef, suffix: KeySuffix): string => `${msgId(ref)}:${suffix}`;

export const allKeysOf = (ref: MessageRef): string[] => KEY_SUFFIXES.map((suffix) => keyOf(ref, suffix));

/**
 * Ruby Beetle's extraction regex for the message part of a key (its Go garbage collector uses the same): only
 * lowercase hex/UUID message ids. Kept for reference; Ruby's tools never collect keys of other ids.
 */
export const RUBY_MSG_ID_PATTERN = /^(msgid:[^:]*:[-0-9a-f]*):(.*)$/;

/**
 * The message part of a key: `msgid:<queue>:<id>` with any id without ":" (queue names and message ids
 * cannot contain ":", see `Topology.registerQueue` and `validatePublish`). Wider than Ruby's pattern, so that
 * caller-chosen ids like `ORDER-42`, which the publisher sends and consumers dedup, are also collected by
 * `beetle gc`, `beetle delete-keys` and found by `beetle dump-expiries` / `copy-keys`. Every key Ruby's
 * pattern matches, this one matches the same way.
 */
export const MSG_ID_PATTERN = /^(msgid:[^:]*:[^:]*):(.*)$/;

export function parseKey(
  key: string,
): { msgId: string; queue: string; uuid: string; suffix: string } | undefined {
  const match = MSG_ID_PATTERN.exec(key);
  if (!match) return undefined;
  const id = match[1] ?? '';
  const [, queue = '', uuid = ''] = id.split(':');
  return { msgId: id, queue, uuid, suffix: match[2] ?? '' };
}

/** Ruby reads every stored number with `to_i`: leading integer, else 0. */
export function rubyToI(value: string | null | undefined): number {
  if (value === null || value === undefined) return 0;
  const match = /^\s*[-+]?\d+/.exec(value);
  return match ? Number.parseInt(match[0], 10) : 0;
}
