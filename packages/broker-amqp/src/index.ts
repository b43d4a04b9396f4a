export type {
  BackgroundError,
  BrokerOptions,
  ConnectionLostEvent,
  ConnectionRole,
  ConsumerChannel,
  Delivery,
  PublishChannel,
  PublisherConnection,
  PublisherPool,
  PublishOptions,
  TopologyDeclarer,
} from './types.js';
export { BrokerConnection } from './connection.js';
export { BrokerPool, brokerOptions } from './pool.js';
export {
  checkPolicyUpdate,
  managementPathSegment,
  PolicyClient,
  policyDefinition,
  policyUpdateAllowance,
  policyUpdatePayload,
  type PolicyUpdateAllowance,
  type PolicyAction,
  type PolicyBinding,
  type PolicyUpdatePayload,
  type QueuePolicyOptions,
} from './policies.js';
export {
  setupQueue,
  type PolicyMessagePublisher,
  type SetupQueueContext,
  type SetupQueueResult,
} from './setup.js';
