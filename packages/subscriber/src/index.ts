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
export { OnceSettler, processDelivery, replyBody } from './processing.js';
export type {
  AbandonedRun,
  CopyKnowledge,
  DeliverySettler,
  ProcessParams,
  ProcessResult,
  RejectReason,
  SettleState,
} from './processing.js';
export { HandlerTimeoutError, SubscriberStoppedError } from './errors.js';
export { defaultQueueSetup } from './broker.js';
export type {
  ConsumerConnection,
  Delivery,
  QueueSetup,
  QueueSetupResult,
  SubscriberChannel,
  SubscriberPool,
} from './broker.js';
export type {
  AbandonedEvent,
  BrokerDisconnectedEvent,
  BrokerEvent,
  ProcessedEvent,
  SubscriberErrorEvent,
  SubscriberEvents,
} from './events.js';
