import type { Outcome } from '@beetle/core';
import type { HandlerMessage } from './handler.js';

/** One delivery finished processing (for metrics). */
export interface ProcessedEvent {
  readonly outcome: Outcome;
  /** The decoded message; undefined for `DecodingError`. */
  readonly message: HandlerMessage | undefined;
  /** Registered (logical) queue name. */
  readonly queue: string;
  readonly server: string;
  readonly durationMs: number;
  /** How the delivery was settled: `acked` or `rejected` (dead-lettered or requeued after the delay). */
  readonly settled: 'acked' | 'rejected' | 'pending';
  /** The decode, pre-process, handler or internal error, if any. */
  readonly error: unknown;
}

/** A running handler was abandoned by a forced stop; the broker redelivers its message. */
export interface AbandonedEvent {
  readonly message: HandlerMessage | undefined;
  readonly queue: string;
  readonly server: string;
}

export interface SubscriberErrorEvent {
  readonly error: unknown;
  /**
   * Where it happened: `processing` (an `InternalError` outcome), `connect` (a failed connection attempt),
   * `policy` (queue policies not applied; the queue works), `consume`, `cancel`, `close`.
   */
  readonly phase: 'processing' | 'connect' | 'policy' | 'consume' | 'cancel' | 'close';
  readonly server: string | undefined;
  readonly queue: string | undefined;
}

export interface BrokerEvent {
  readonly server: string;
}

export interface BrokerDisconnectedEvent {
  readonly server: string;
  readonly error: Error | undefined;
}

export interface SubscriberEvents {
  processed: ProcessedEvent;
  abandoned: AbandonedEvent;
  error: SubscriberErrorEvent;
  connected: BrokerEvent;
  disconnected: BrokerDisconnectedEvent;
}
