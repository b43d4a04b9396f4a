import type { Headers, PublishObservation } from '@beetle/core';
import type { TypedEmitter } from '@beetle/core/kit';

/** Per-publish options (Ruby's publishing options, plus `messageId`). They override the registration. */
export interface PublishOptions {
  /** Send to two brokers (flags "1"). */
  redundant?: boolean;
  /** Seconds until the message is `Ancient` (default: registration, else 86400). */
  ttl?: number;
  /** Routing key (default: registration, else the message name). */
  key?: string;
  /** Merged over the registered headers; `null`/`undefined` values are dropped. */
  headers?: Headers;
  persistent?: boolean;
  priority?: number;
  mandatory?: boolean;
  replyTo?: string;
  /**
   * Caller-chosen message id (idempotent publishing); a UUID v4 otherwise. Any non-empty string without ":" of
   * up to 255 bytes; note that Ruby's garbage collectors only collect the keys of lowercase hex ids.
   */
  messageId?: string;
}

/** What placement gets: the caller's options, and the telemetry's observation of the publish if any. */
export interface PlacementOptions extends PublishOptions {
  readonly observation?: PublishObservation | undefined;
}

/** Payloads of the publisher's events. */
export interface PublisherEvents {
  /** A publish completed: `servers` confirmed it (1 or 2 entries). */
  published: { message: string; messageId: string; servers: string[]; redundant: boolean };
  /** One attempt on one broker failed; the publisher retries or moves on. */
  failover: { message: string; messageId: string; server: string; error: unknown };
  /** A broker was taken out of the rotation after two consecutive failures. */
  brokerDead: { server: string; error: unknown };
  /** A broker that had been dead confirmed a publish again. */
  brokerRecovered: { server: string; deadForMs: number };
  /** A redundant publish got only one copy placed (the result is 1). */
  partial: { message: string; messageId: string; server: string; errors: unknown[] };
  /** Lazy queue setup could not apply or publish the policies of a queue (the publish itself went on). */
  setupError: { server: string; queue: string; error: unknown };
}

export type PublisherEmitter = TypedEmitter<PublisherEvents>;
