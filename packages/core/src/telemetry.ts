/**
 * The observation seam of the publisher and the subscriber: they tell a `Telemetry` (tracing, metrics) what
 * they do, through these interfaces only. Without one they do nothing extra (no import, no allocation);
 * `@beetle/telemetry` implements it on OpenTelemetry and prom-client. Every method must be cheap and must not
 * throw: a throwing observer is logged and ignored, never fails a publish or a delivery.
 */

/** One logical publish (both copies of a redundant message are one publish). */
export interface PublishInfo {
  /** The registered message name. */
  readonly message: string;
  readonly exchange: string;
  readonly routingKey: string;
  /** The Beetle message id, shared by both copies. */
  readonly messageId: string;
  readonly redundant: boolean;
}

export interface PublishObservation {
  /**
   * Headers to carry in the message (e.g. `traceparent`), identical on every copy; read once, before the
   * message is encoded. Beetle's own headers win over these.
   */
  readonly headers?: Readonly<Record<string, string>> | undefined;
  /** One copy is about to be written to `server`; its observation ends when the broker confirmed or failed. */
  copy(server: string): CopyObservation | undefined;
  /** The publish is over: `servers` confirmed it, or it failed with `error`. */
  end(result: PublishResult): void;
}

export interface PublishResult {
  readonly servers: readonly string[];
  readonly error?: unknown;
}

export interface CopyObservation {
  /** The broker confirmed the copy (no error), or the attempt failed. */
  end(error?: unknown): void;
}

/** One delivery from one broker. */
export interface DeliveryInfo {
  /** Registered queue name. */
  readonly queue: string;
  /** AMQP queue name. */
  readonly amqpQueue: string;
  /** Broker as `host:port`. */
  readonly server: string;
  readonly exchange: string;
  readonly routingKey: string;
  /** The AMQP `message_id`, when it is a string. */
  readonly messageId: string | undefined;
  readonly headers: Readonly<Record<string, unknown>> | undefined;
  readonly redelivered: boolean;
  readonly bodySize: number;
}

/** How a delivery ended. */
export interface DeliveryResult {
  /** `undefined` when a forced stop abandoned it. */
  readonly outcome: string | undefined;
  /** The handler attempt that ran (the store's count), 0 when the handler did not run. */
  readonly attempt: number;
  /** The handler did not run because the message was already handled (a copy, a redelivery). */
  readonly duplicate: boolean;
  readonly error?: unknown;
}

export interface DeliveryObservation {
  /** Runs the handler inside the observation (so spans the handler starts nest under it). */
  run<T>(fn: () => T): T;
  /** A step of the dedup store (`claim`, `complete`, `acknowledged`, ...) as it completes. */
  step(name: string, durationMs: number, error?: unknown): void;
  /** The handler ran for `durationMs`, ending with `error` if it failed. */
  handled(durationMs: number, error?: unknown): void;
  end(result: DeliveryResult): void;
}

export interface Telemetry {
  publish?(info: PublishInfo): PublishObservation | undefined;
  delivery?(info: DeliveryInfo): DeliveryObservation | undefined;
}
