import {
  ConfigurationError,
  type BeetleMessage,
  type Logger,
  type MessageDecodingError,
  type Outcome,
  type RawDelivery,
  type RetryOptions,
  type RetryPolicy,
} from '@beetle/core';
import { retryPolicy } from '@beetle/core/kit';

/** A decoded message as handlers see it: core's `BeetleMessage` plus the attempt being run. */
export interface HandlerMessage extends BeetleMessage {
  readonly decoded: true;
  /** 1-based number of the current handler run (the store's `attempts` counter); 0 before the handler runs. */
  readonly attempt: number;
}

/**
 * What error and failure callbacks get when a delivery could not be decoded (Ruby passes `nil` there, weak
 * spot 16): the raw delivery and where it came from.
 */
export interface UndecodedMessage {
  readonly decoded: false;
  /** AMQP queue name. */
  readonly queue: string;
  /** Broker as `host:port`. */
  readonly server: string;
  /** The AMQP `message_id`, when it is a string. */
  readonly uuid: string | undefined;
  readonly body: Buffer;
  readonly routingKey: string;
  readonly redelivered: boolean;
  /** The AMQP headers, nothing inherited from a `__proto__` key (see `ownHeaders` in `@beetle/core`). */
  readonly headers: Readonly<Record<string, unknown>> | undefined;
  /** The delivery as amqplib decoded it (its headers as amqplib made them: prefer `headers`). */
  readonly delivery: RawDelivery;
  /** Why decoding failed. */
  readonly error: MessageDecodingError;
}

/** Either kind of message: callbacks that may fire for undecodable deliveries receive this. */
export type AnyMessage = HandlerMessage | UndecodedMessage;

/** The second argument of a handler. */
export interface HandlerContext {
  /** Aborts when the handler timeout expires or on a forced stop; pass it on to I/O that accepts a signal. */
  readonly signal: AbortSignal;
  /** 1-based attempt number. */
  readonly attempt: number;
  /** Broker the delivery came from (`host:port`). */
  readonly server: string;
  /** AMQP queue name. */
  readonly queue: string;
  readonly logger: Logger;
}

/** A handler function; its result is the RPC reply body (when the message has `replyTo`). */
export type HandlerFunction = (message: HandlerMessage, context: HandlerContext) => unknown;

/**
 * A handler object with Ruby `Beetle::Handler`'s hooks, called in Ruby's order: `preProcess` → (state
 * machine, maybe `process`) → `error` → `failure` → reject or RPC reply → `completed` → `postProcess`.
 * Hooks may be async; their exceptions are logged and swallowed (except `preProcess`, which yields
 * `PreprocessingError`, and `process`).
 */
export interface HandlerObject {
  /** Before any processing (decoded messages only); throwing makes the outcome `PreprocessingError`. */
  preProcess?(message: HandlerMessage): unknown;
  process(message: HandlerMessage, context: HandlerContext): unknown;
  /** A decode, pre-process or handler exception (including a timeout), unless the `errback` option is set. */
  error?(error: unknown, message: AnyMessage): unknown;
  /** The message has finally failed (a `failure` outcome), unless the `failback` option is set. */
  failure?(outcome: Outcome, message: AnyMessage): unknown;
  /** After processing, only if `process` ran for this delivery. */
  completed?(message: HandlerMessage): unknown;
  /** Last, always (also for undecodable deliveries and `Ancient` messages). */
  postProcess?(message: AnyMessage): unknown;
}

export type Handler = HandlerFunction | HandlerObject;

/** An error class for `retryOn` (matched with `instanceof`, like Ruby's `is_a?`). */
export type ErrorClass = abstract new (...args: never[]) => unknown;

/** Which handler errors may be retried: a list of classes, or a predicate. Unset: every error. */
export type RetryOn = readonly ErrorClass[] | ((error: unknown) => boolean);

/** Per-handler options (Ruby's `register_handler` options); durations in seconds. */
export interface HandlerOptions extends RetryOptions {
  retryOn?: RetryOn;
  /**
   * Runs of this handler at once in this subscriber, within `subscriberConcurrency` (unset: no limit of its
   * own). `1`: never two messages of this handler at the same time, whatever the prefetch.
   */
  concurrency?: number;
  /** Replaces the handler object's `error` hook. */
  errback?: (message: AnyMessage, error: unknown) => unknown;
  /** Replaces the handler object's `failure` hook. */
  failback?: (message: AnyMessage, outcome: Outcome) => unknown;
}

/** A handler with normalized options, ready for the state machine. */
export interface ResolvedHandler {
  readonly policy: RetryPolicy;
  /** The handler's own bound on runs at once; undefined: only `subscriberConcurrency`. */
  readonly concurrency: number | undefined;
  readonly retryOn: RetryOn | undefined;
  readonly preProcess: ((message: HandlerMessage) => unknown) | undefined;
  readonly process: (message: HandlerMessage, context: HandlerContext) => unknown;
  readonly onError: ((error: unknown, message: AnyMessage) => unknown) | undefined;
  readonly onFailure: ((outcome: Outcome, message: AnyMessage) => unknown) | undefined;
  readonly completed: ((message: HandlerMessage) => unknown) | undefined;
  readonly postProcess: ((message: AnyMessage) => unknown) | undefined;
}

/** Normalizes a handler and its options; throws `ConfigurationError` on invalid ones. */
export function resolveHandler(handler: Handler, options: HandlerOptions = {}): ResolvedHandler {
  const policy = retryPolicy(options);
  const { retryOn, errback, failback, concurrency } = options;
  if (concurrency !== undefined && !(Number.isSafeInteger(concurrency) && concurrency >= 1)) {
    throw new ConfigurationError(
      `handler option \`concurrency\` must be an integer >= 1, got ${String(concurrency)}`,
      { key: 'concurrency' },
    );
  }
  if (retryOn !== undefined && typeof retryOn !== 'function' && !Array.isArray(retryOn)) {
    throw new ConfigurationError('handler option `retryOn` must be an array of error classes or a function', {
      key: 'retryOn',
    });
  }
  if (typeof handler === 'function') {
    return {
      policy,
      concurrency,
      retryOn,
      preProcess: undefined,
      process: handler,
      onError: errback === undefined ? undefined : (error, message) => errback(message, error),
      onFailure: failback === undefined ? undefined : (outcome, message) => failback(message, outcome),
      completed: undefined,
      postProcess: undefined,
    };
  }
  if (typeof handler !== 'object' || handler === null || typeof handler.process !== 'function') {
    throw new ConfigurationError('a handler must be a function or an object with a `process` method');
  }
  return {
    policy,
    concurrency,
    retryOn,
    preProcess: handler.preProcess && ((message) => handler.preProcess?.(message)),
    process: (message, context) => handler.process(message, context),
    onError:
      errback === undefined
        ? handler.error && ((error, message) => handler.error?.(error, message))
        : (error, message) => errback(message, error),
    onFailure:
      failback === undefined
        ? handler.failure && ((outcome, message) => handler.failure?.(outcome, message))
        : (outcome, message) => failback(message, outcome),
    completed: handler.completed && ((message) => handler.completed?.(message)),
    postProcess: handler.postProcess && ((message) => handler.postProcess?.(message)),
  };
}

/** Ruby's `exception_accepted?`: no `retryOn`, or the error is an instance of a listed class / passes. */
export function isRetriable(retryOn: RetryOn | undefined, error: unknown): boolean {
  if (retryOn === undefined) return true;
  if (typeof retryOn === 'function') return retryOn(error);
  return retryOn.some((cls) => error instanceof cls);
}
