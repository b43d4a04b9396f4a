/**
 * `@beetle/subscriber`: what applications compose with. The subscriber, its handlers and events; the state
 * machine for custom pipelines (`processDelivery` with its params, result and seams); the broker seam for
 * custom connections and queue setup.
 */
export { Subscriber, type StopOptions, type StopResult, type SubscriberOptions } from './subscriber.js';
export type { BrokerState, BrokerStatus } from './broker-consumer.js';
export type {
  AbandonedEvent,
  BrokerDisconnectedEvent,
  BrokerEvent,
  ProcessedEvent,
  SubscriberErrorEvent,
  SubscriberEvents,
} from './events.js';

// Handlers.
export type {
  AnyMessage,
  ErrorClass,
  Handler,
  HandlerContext,
  HandlerFunction,
  HandlerMessage,
  HandlerObject,
  HandlerOptions,
  ResolvedHandler,
  RetryOn,
  UndecodedMessage,
} from './handler.js';
export { ConsumerCancelledError, HandlerTimeoutError, SubscriberStoppedError } from './errors.js';

// Custom pipelines: the state machine for one delivery (`resolveHandler` makes its `handler` parameter).
export { resolveHandler } from './handler.js';
export {
  processDelivery,
  type AbandonedRun,
  type CopyKnowledge,
  type ProcessParams,
  type ProcessResult,
} from './processing.js';
export type { DeliverySettler, RejectReason, SettleState } from './settle.js';

// The broker seam: connections and queue setup (`BrokerPool` and `setupQueue` of `@beetle/broker-amqp` fit).
export type {
  ConsumerConnection,
  QueueSetup,
  QueueSetupResult,
  SubscriberChannel,
  SubscriberPool,
} from './broker-seam.js';
