/**
 * Every error Beetle raises is a `BeetleError` with a machine-readable `reason`, so callers can branch on
 * `err.reason` instead of parsing messages (the shape of Effect's SQL errors). Subclasses group reasons by
 * who has to act: the programmer (configuration), the operator (brokers, Redis) or the caller (publish).
 */
export type BeetleErrorReason =
  | 'configuration'
  | 'unknown-message'
  | 'unknown-queue'
  | 'no-message-sent'
  | 'no-redis-master'
  | 'decoding'
  | 'broker-connect'
  | 'broker-closed'
  | 'broker-timeout'
  | 'broker-blocked'
  | 'publish-timeout'
  | 'invalid-publish'
  /** An argument of the wrong type or out of range: a programming error (see `InvalidArgumentError`). */
  | 'invalid-argument'
  | 'policy-request'
  | 'policy-refused'
  | 'queue-setup'
  | 'closed'
  | 'timeout'
  /** Redis cannot be used right now (no master, not connected yet, stalled): retried until the failover timeout. */
  | 'redis-unavailable'
  /** Redis answered something the store did not expect (a script error, a wrong type: a bug or a foreign key). */
  | 'redis-reply'
  /** The RabbitMQ management API answered with an error or something unexpected (outside policy updates). */
  | 'management-api'
  /** A state Beetle does not expect: a bug, or a seam implementation that breaks its contract. */
  | 'internal'
  /** The `beetle` command was called wrongly (unknown flag, missing argument). */
  | 'usage'
  /** An operation stopped by a signal or a stop before it completed. */
  | 'interrupted';

export interface BeetleErrorOptions {
  cause?: unknown;
}

/**
 * The class names of an error's lineage, on every Beetle error under a process-wide symbol. A process can load
 * Beetle twice (the CommonJS and the ES module build, when some code `require`s and other code `import`s it):
 * `instanceof` then still recognises an error made by the other copy.
 */
const LINEAGE = Symbol.for('@beetle/core:error-lineage');

export class BeetleError extends Error {
  readonly reason: BeetleErrorReason;

  constructor(reason: BeetleErrorReason, message: string, options: BeetleErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.reason = reason;
    const lineage: string[] = [];
    for (let c: unknown = new.target; c !== Error && typeof c === 'function'; c = Object.getPrototypeOf(c)) {
      lineage.push((c as { name: string }).name);
    }
    Object.defineProperty(this, LINEAGE, { value: lineage });
  }

  /** `instanceof` by class name across copies of Beetle in one process (see `LINEAGE`). */
  static override [Symbol.hasInstance](value: unknown): boolean {
    if (Function.prototype[Symbol.hasInstance].call(this, value)) return true;
    if (typeof value !== 'object' || value === null) return false;
    const lineage = (value as { [LINEAGE]?: unknown })[LINEAGE];
    return Array.isArray(lineage) && lineage.includes(this.name);
  }
}

/** Wrong or inconsistent configuration: unknown keys, wrong types, duplicate registrations. */
export class ConfigurationError extends BeetleError {
  /** The configuration key (dotted path) at fault, when there is one. */
  readonly key: string | undefined;

  constructor(message: string, options: BeetleErrorOptions & { key?: string } = {}) {
    super('configuration', message, options);
    this.key = options.key;
  }
}

export class UnknownMessageError extends BeetleError {
  constructor(readonly messageName: string) {
    super('unknown-message', `unknown message ${JSON.stringify(messageName)}: register it first`);
  }
}

export class UnknownQueueError extends BeetleError {
  constructor(readonly queueName: string) {
    super('unknown-queue', `unknown queue ${JSON.stringify(queueName)}: register it first`);
  }
}

/**
 * A publish reached no broker. `errors` holds what each broker attempt failed with. `outcomeUnknown`: at
 * least one of them failed after the message was written (see `BrokerError.outcomeUnknown`), so a broker may
 * hold it even though none confirmed it.
 */
export class NoMessageSentError extends BeetleError {
  readonly outcomeUnknown: boolean;

  constructor(
    readonly messageName: string,
    readonly errors: readonly unknown[] = [],
  ) {
    const outcomeUnknown = errors.some((e) => e instanceof BrokerError && e.outcomeUnknown);
    super(
      'no-message-sent',
      `message ${JSON.stringify(messageName)} could not be sent to any broker${outcomeUnknown ? ' (outcome unknown: a broker may have stored it)' : ''}`,
      { cause: errors.at(-1) },
    );
    this.outcomeUnknown = outcomeUnknown;
  }
}

/**
 * The caller asked to publish something that cannot be sent, or that every consumer would drop: a message id
 * that is empty, contains ":" or is longer than 255 bytes, a ttl that is not a positive finite number, a
 * priority outside 0..255, a header amqplib cannot encode, a header table or frame too big, a routing key
 * over 255 bytes. Nothing was sent and no broker counts as failed. `field` names the input at fault
 * (`messageId`, `ttl`, `priority`, `key`, `exchange`, `replyTo`, `contentType`, `timestamp`, `headers` or
 * `headers.<name>[.<name>…]`; `message` when amqplib itself refused to encode it).
 */
export class InvalidPublishError extends BeetleError {
  constructor(
    readonly field: string,
    message: string,
    options: BeetleErrorOptions = {},
  ) {
    super('invalid-publish', message, options);
  }
}

/** The dedup store stayed unreachable for `redisFailoverTimeout`. */
export class NoRedisMasterError extends BeetleError {
  constructor(message: string, options: BeetleErrorOptions = {}) {
    super('no-redis-master', message, options);
  }
}

/** A delivery that is not a valid Beetle message (missing headers, non-numeric values, no message id). */
export class MessageDecodingError extends BeetleError {
  constructor(message: string, options: BeetleErrorOptions = {}) {
    super('decoding', message, options);
  }
}

/** The reasons of a `BrokerError`. */
export type BrokerErrorReason = Extract<
  BeetleErrorReason,
  'broker-connect' | 'broker-closed' | 'broker-timeout' | 'broker-blocked'
>;

/** A broker-level failure: connect, closed connection or channel, timeout, flow control. */
export class BrokerError extends BeetleError {
  declare readonly reason: BrokerErrorReason;
  /** The message without the `<server>: ` in front, for an error that says the same about the same broker. */
  readonly detail: string;

  constructor(
    reason: BrokerErrorReason,
    readonly server: string,
    message: string,
    options: BeetleErrorOptions & { outcomeUnknown?: boolean } = {},
  ) {
    super(reason, `${server}: ${message}`, options);
    this.detail = message;
    this.outcomeUnknown = options.outcomeUnknown ?? false;
  }

  /**
   * A publish failed after it was written to the broker (connection lost or no confirm in time): the broker
   * may have stored the message. Sending it elsewhere too could make an extra copy.
   */
  readonly outcomeUnknown: boolean;
}

/** A publish that could not complete within its timeout (back-pressure, blocked or silent brokers). */
export class PublishTimeoutError extends BeetleError {
  constructor(message: string, options: BeetleErrorOptions = {}) {
    super('publish-timeout', message, options);
  }
}

/** A RabbitMQ management API request answered with an unexpected status. */
export class PolicyRequestError extends BeetleError {
  constructor(
    readonly status: number,
    message: string,
    options: BeetleErrorOptions = {},
  ) {
    super('policy-request', message, options);
  }
}

/**
 * A queue policy operation refused before any request was sent: a name the RabbitMQ management API cannot
 * address, or a policy update message naming a broker or queue the worker does not manage. `field` names the
 * part at fault (`server`, `queue_name`, `vhost`, ...).
 */
export class PolicyRefusedError extends BeetleError {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super('policy-refused', message);
  }
}

/** An operation on something already closed or stopping. */
export class ClosedError extends BeetleError {
  constructor(message: string) {
    super('closed', message);
  }
}

export const isBeetleError = (value: unknown): value is BeetleError => value instanceof BeetleError;

/** A state Beetle does not expect (a bug, or a seam implementation that breaks its contract). */
export class InvariantError extends BeetleError {
  constructor(message: string, options: BeetleErrorOptions = {}) {
    super('internal', message, options);
  }
}

/**
 * An argument of the wrong type or out of range (a programming error). A `TypeError`, as Node's own argument
 * checks throw (the store contract asserts it), and a `BeetleError` with reason `invalid-argument`: the two
 * cannot share a prototype chain, so `instanceof BeetleError` holds through the lineage (see `LINEAGE`).
 */
export class InvalidArgumentError extends TypeError {
  readonly reason = 'invalid-argument' satisfies BeetleErrorReason;

  constructor(message: string, options: BeetleErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'InvalidArgumentError';
    Object.defineProperty(this, LINEAGE, { value: ['InvalidArgumentError', 'BeetleError'] });
  }
}
