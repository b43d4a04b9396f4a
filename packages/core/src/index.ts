/**
 * `@beetle/core`: what applications compose with. The building blocks of Beetle's own packages (envelope
 * encoding, key schema, timing helpers) are in `@beetle/core/kit`; the dedup store contract suite is in
 * `@beetle/core/testing`.
 */
export {
  BeetleError,
  BrokerError,
  ClosedError,
  ConfigurationError,
  InvalidArgumentError,
  InvalidPublishError,
  InvariantError,
  MessageDecodingError,
  NoMessageSentError,
  NoRedisMasterError,
  PolicyRefusedError,
  PolicyRequestError,
  PublishTimeoutError,
  UnknownMessageError,
  UnknownQueueError,
  isBeetleError,
  type BeetleErrorOptions,
  type BeetleErrorReason,
} from './errors.js';
export { Outcome, allOutcomes, isFailureOutcome, isRejectOutcome } from './outcomes.js';
export {
  DEFAULT_AMQP_PORT,
  configFromEnv,
  configOptions,
  createConfig,
  defaultConfig,
  loadConfigFile,
  parseConfigFile,
  type BeetleConfig,
  type BeetleConfigInput,
  type BrokerAddress,
  type BrokerTlsOptions,
  type ConfigOptionInfo,
  type ConfigReadOptions,
  type OptionName,
  type OptionType,
  type OptionUnit,
  type ServerConnectionOptions,
  type ServerHeartbeat,
} from './config/index.js';
export {
  Topology,
  defaultTopologyConfig,
  type BindingDefinition,
  type ExchangeDefinition,
  type ExchangeOptions,
  type KnownMessages,
  type MessageDefinition,
  type MessageMap,
  type MessageOptions,
  type QueueDefinition,
  type QueueOptions,
  type TopologyConfig,
} from './topology.js';
export type {
  BeetleMessage,
  DecodeResult,
  DeliverySource,
  HeaderValue,
  Headers,
  Payload,
  RawDelivery,
} from './envelope.js';
export type { RetryOptions, RetryPolicy } from './retry-policy.js';
export { silentLogger, type LogFn, type Logger } from './logger.js';
export type { MessageRef } from './dedup/keys.js';
export type {
  AcknowledgedParams,
  AcquireParams,
  AcquireResult,
  ClaimParams,
  ClaimResult,
  CompleteParams,
  DedupStore,
  FailOutcome,
  FailParams,
  FailResult,
  MessageState,
  ReleaseParams,
} from './dedup/store.js';
export { MemoryDedupStore, type MemoryDedupStoreOptions } from './dedup/memory-store.js';
export type {
  CopyObservation,
  DeliveryInfo,
  DeliveryObservation,
  DeliveryResult,
  PublishInfo,
  PublishObservation,
  PublishResult,
  Telemetry,
} from './telemetry.js';
