export { Subscriber } from './subscriber.js';
export type { BrokerState, BrokerStatus, StopOptions, StopResult, SubscriberOptions } from './subscriber.js';
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
export { isRetriable, resolveHandler } from './handler.js';
export { processDelivery } from './processing.js';
export { OnceSettler, replyBody } from './settle.js';
export type { AbandonedRun, CopyKnowledge, ProcessParams, ProcessResult } from './processing.js';
export type { DeliverySettler, RejectReason, SettleState } from './settle.js';
export { ConsumerCancelledError, HandlerTimeoutError, SubscriberStoppedError } from './errors.js';
export { defaultQueueSetup } from './broker-seam.js';
export type {
  ConsumerConnection,
  Delivery,
  QueueSetup,
  QueueSetupResult,
  SubscriberChannel,
  SubscriberPool,
} from './broker-seam.js';
export type {
  AbandonedEvent,
  BrokerDisconnectedEvent,
  BrokerEvent,
  ProcessedEvent,
  SubscriberErrorEvent,
  SubscriberEvents,
} from './events.js';
